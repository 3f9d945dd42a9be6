"""Compatibility rules (Confluent Schema Registry's modes and JSON Schema rules), each with an
accepting and a refusing case, checked through Registry.register on a real file store."""

from __future__ import annotations

import copy

import pytest

from headwater.registry import compat
from headwater.registry.registry import IncompatibleSchemaError, Registry, RegistryError
from headwater.registry.store import FileStore

CLOSED = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"sku": {"type": "string", "maxLength": 20}, "revenue": {"type": "number"}},
    "required": ["sku"],
}
OPEN = {k: v for k, v in CLOSED.items() if k != "additionalProperties"}


def changed(base: dict, fn) -> dict:
    new = copy.deepcopy(base)
    fn(new)
    return new


def _add(prop, schema, required=False):
    def f(s):
        s["properties"][prop] = schema
        if required:
            s["required"] = [*s["required"], prop]
    return f


def _drop(prop):
    def f(s):
        del s["properties"][prop]
        s["required"] = [r for r in s["required"] if r != prop]
    return f


def _set(prop, **kw):
    return lambda s: s["properties"][prop].update(kw)


# (case id, v1, v2, {mode: None if accepted, else (field, rule) named in the refusal})
CASES = [
    ("add optional to closed", CLOSED, changed(CLOSED, _add("coupon", {"type": "string"})),
     {"BACKWARD": None, "FORWARD": ("coupon", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
      "FULL": ("coupon", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"), "NONE": None}),
    ("add optional to open", OPEN, changed(OPEN, _add("coupon", {"type": "string"})),
     {"BACKWARD": ("coupon", "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"), "FORWARD": None,
      "FULL": ("coupon", "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL"), "NONE": None}),
    ("add required to closed", CLOSED, changed(CLOSED, _add("coupon", {"type": "string"}, required=True)),
     {"BACKWARD": ("coupon", "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"), "FORWARD": ("coupon", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"),
      "NONE": None}),
    ("add required with default", CLOSED, changed(CLOSED, _add("currency", {"type": "string", "default": "EUR"}, required=True)),
     {"BACKWARD": None, "FORWARD": ("currency", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL")}),
    ("remove required from closed", CLOSED, changed(CLOSED, _drop("sku")),
     {"BACKWARD": ("sku", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"), "FORWARD": ("sku", "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL"),
      "FULL": ("sku", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"), "NONE": None}),
    ("remove optional from closed", CLOSED, changed(CLOSED, _drop("revenue")),
     {"BACKWARD": ("revenue", "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL"), "FORWARD": None}),
    ("remove optional from open", OPEN, changed(OPEN, _drop("revenue")),
     {"BACKWARD": None, "FORWARD": ("revenue", "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL")}),
    ("remove required from open", OPEN, changed(OPEN, _drop("sku")),
     {"BACKWARD": None, "FORWARD": ("sku", "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL")}),
    ("change type", CLOSED, changed(CLOSED, _set("revenue", type="string")),
     {"BACKWARD": ("revenue", "TYPE_CHANGED"), "FORWARD": ("revenue", "TYPE_CHANGED"), "FULL": ("revenue", "TYPE_CHANGED"), "NONE": None}),
    ("widen integer to number", changed(CLOSED, _set("revenue", type="integer")), CLOSED,
     {"BACKWARD": None, "FORWARD": ("revenue", "TYPE_NARROWED"), "FULL": ("revenue", "TYPE_NARROWED")}),
    ("make nullable", CLOSED, changed(CLOSED, _set("revenue", type=["number", "null"])),
     {"BACKWARD": None, "FORWARD": ("revenue", "TYPE_NARROWED")}),
    ("optional becomes required", CLOSED, changed(CLOSED, lambda s: s.update(required=["sku", "revenue"])),
     {"BACKWARD": ("revenue", "REQUIRED_ATTRIBUTE_ADDED"), "FORWARD": None}),
    ("required becomes optional", CLOSED, changed(CLOSED, lambda s: s.update(required=[])),
     {"BACKWARD": None, "FORWARD": ("sku", "REQUIRED_ATTRIBUTE_ADDED")}),
    ("enum extended", changed(CLOSED, _add("tier", {"enum": ["gold", "silver"]})), changed(CLOSED, _add("tier", {"enum": ["gold", "silver", "bronze"]})),
     {"BACKWARD": None, "FORWARD": ("tier", "ENUM_ARRAY_NARROWED")}),
    ("maxLength increased", CLOSED, changed(CLOSED, _set("sku", maxLength=40)),
     {"BACKWARD": None, "FORWARD": ("sku", "MAX_LENGTH_DECREASED")}),
    ("pattern added", CLOSED, changed(CLOSED, _set("sku", pattern="^[A-Z]+$")),
     {"BACKWARD": ("sku", "PATTERN_ADDED"), "FORWARD": None}),
    ("minimum raised", changed(CLOSED, _set("revenue", minimum=0)), changed(CLOSED, _set("revenue", minimum=10)),
     {"BACKWARD": ("revenue", "MINIMUM_INCREASED"), "FORWARD": None}),
    ("content model closed", OPEN, CLOSED,
     {"BACKWARD": ("", "ADDITIONAL_PROPERTIES_REMOVED"), "FORWARD": None}),
    ("nested type change", changed(CLOSED, _add("address", {"type": "object", "properties": {"zip": {"type": "string"}}})),
     changed(CLOSED, _add("address", {"type": "object", "properties": {"zip": {"type": "integer"}}})),
     {"BACKWARD": ("address.zip", "TYPE_CHANGED"), "NONE": None}),
    ("array item type change", changed(CLOSED, _add("skus", {"type": "array", "items": {"type": "string"}})),
     changed(CLOSED, _add("skus", {"type": "array", "items": {"type": "integer"}})),
     {"BACKWARD": ("skus[]", "TYPE_CHANGED"), "NONE": None}),
    ("annotations only", CLOSED, changed(CLOSED, lambda s: s.update(title="Order", description="an order")),
     {"BACKWARD": None, "FORWARD": None, "FULL": None}),
    ("combinator changed", changed(CLOSED, _add("id", {"anyOf": [{"type": "string"}, {"type": "integer"}]})),
     changed(CLOSED, _add("id", {"anyOf": [{"type": "string"}]})),
     {"BACKWARD": ("id", "ANY_OF_CHANGED"), "NONE": None}),
]


@pytest.fixture
def registry(tmp_path):
    return Registry(FileStore(tmp_path / "registry"))


@pytest.mark.parametrize(
    "v1,v2,mode,expect",
    [pytest.param(v1, v2, mode, expect, id=f"{name}-{mode}") for name, v1, v2, modes in CASES for mode, expect in modes.items()],
)
def test_rule(registry, v1, v2, mode, expect):
    registry.register("Order Completed", v1, mode=mode)
    if expect is None:
        version, created = registry.register("Order Completed", v2)
        assert (version.version, created) == (2, True)
        assert registry.latest("Order Completed").schema == v2
        return
    field, rule = expect
    with pytest.raises(IncompatibleSchemaError) as e:
        registry.register("Order Completed", v2)
    message = str(e.value)
    assert rule in message and mode in message
    assert (f"field `{field}`" if field else "the top-level object") in message
    assert any(p.difference.kind == rule and p.difference.field == field for p in e.value.check.problems)
    assert [v.version for v in registry.versions("Order Completed")] == [1]  # nothing stored


def test_every_mode_has_an_accepting_and_a_refusing_case():
    seen = {}
    for _, _, _, modes in CASES:
        for mode, expect in modes.items():
            seen.setdefault(mode, set()).add(expect is None)
    assert seen == {m: {True, False} for m in ("BACKWARD", "FORWARD", "FULL")} | {"NONE": {True}}


def test_none_still_refuses_an_invalid_schema(registry):
    registry.register("Signed Up", CLOSED, mode="NONE")
    with pytest.raises(RegistryError, match=r"#/properties/sku/type.*`anyOf`"):
        registry.register("Signed Up", changed(CLOSED, _set("sku", type="text")))


# Transitive modes: v2 was registered under NONE and broke v1; v3 is compatible with v2 only.
V1 = changed(CLOSED, _set("revenue", type="integer"))
V2 = changed(CLOSED, _set("revenue", type="string"))
V3 = changed(V2, lambda s: s.update(description="v3: annotation only"))


@pytest.mark.parametrize("mode", ["BACKWARD_TRANSITIVE", "FORWARD_TRANSITIVE", "FULL_TRANSITIVE"])
def test_transitive_checks_every_earlier_version(registry, mode):
    registry.register("Refund", V1, mode="NONE")
    registry.register("Refund", V2)
    assert registry.check("Refund", V3, mode=mode.removesuffix("_TRANSITIVE")).compatible  # accepted vs the latest
    registry.set_mode("Refund", mode)
    with pytest.raises(IncompatibleSchemaError) as e:
        registry.register("Refund", V3)
    assert {p.version for p in e.value.check.problems} == {1}
    assert "field `revenue`: TYPE_CHANGED" in str(e.value) and "version 1" in str(e.value)


@pytest.mark.parametrize("mode", ["BACKWARD_TRANSITIVE", "FORWARD_TRANSITIVE", "FULL_TRANSITIVE"])
def test_transitive_accepts_a_change_compatible_with_all(registry, mode):
    registry.register("Refund", V1, mode=mode)
    registry.register("Refund", changed(V1, lambda s: s.update(title="v2")))
    version, created = registry.register("Refund", changed(V1, lambda s: s.update(title="v3")))
    assert (version.version, created) == (3, True)


def test_differences_list_compatible_changes_too():
    kinds = {(d.kind, d.compatible) for d in compat.differences(CLOSED, changed(CLOSED, _add("coupon", {"type": "string"})))}
    assert kinds == {("OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL", True)}


def test_partially_open_model_covers_added_property():
    partial = changed(CLOSED, lambda s: s.update(additionalProperties={"type": "string"}))
    ok = changed(partial, _add("coupon", {"type": ["string", "null"], "description": "wider"}))
    bad = changed(partial, _add("coupon", {"type": "integer"}))
    assert not compat.incompatibilities(partial, ok)
    kinds = {d.kind for d in compat.incompatibilities(partial, bad)}
    assert kinds == {"TYPE_CHANGED", "PROPERTY_ADDED_NOT_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL"}


def test_unknown_mode_is_refused(registry):
    with pytest.raises(RegistryError, match="compatibility: .sideways. is not one of BACKWARD"):
        registry.set_mode("Order Completed", "sideways")


def test_refused_registration_keeps_the_mode(registry):
    registry.register("Order Completed", CLOSED)
    with pytest.raises(IncompatibleSchemaError, match="under FORWARD"):
        registry.register("Order Completed", changed(CLOSED, _add("coupon", {"type": "string"})), mode="FORWARD")
    assert registry.mode("Order Completed") == "BACKWARD" and len(registry.versions("Order Completed")) == 1
