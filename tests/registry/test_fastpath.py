"""The msgspec fast path never accepts what jsonschema refuses (property-based, hypothesis),
and accepts the ordinary valid events (so the collector skips jsonschema for them)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from headwater.registry.fastpath import compile_check
from headwater.registry.validate import FORMAT_CHECKER
from tests.registry.conftest import CLOSED_ORDER

CONTRACTS = [
    CLOSED_ORDER,
    {"type": "object", "properties": {
        "tier": {"enum": ["gold", "silver", None]}, "n": {"type": "integer", "minimum": 1, "exclusiveMaximum": 5},
        "ratio": {"type": ["number", "null"], "maximum": 1}, "code": {"type": "string", "pattern": "^[A-Z]{2}$", "maxLength": 2},
        "at": {"type": "string", "format": "date-time"}, "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "flag": {"type": "boolean"}, "any": {}, "meta": {"type": "object"}, "level": {"const": 3}},
     "required": ["n"]},
    {"type": "object", "additionalProperties": False, "properties": {
        "x": {"type": ["string", "integer"], "minLength": 2, "minimum": 0}, "y": {"type": "integer", "enum": [1, 2]},
        "nested": {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "number"}}, "required": ["a"]}}},
]
KEYS = sorted({k for c in CONTRACTS for k in c["properties"]} | {"sku", "qty", "a", "extra"})
SCALARS = (st.none() | st.booleans() | st.integers(-3, 10) | st.floats(-2, 12, allow_nan=False) | st.sampled_from([1.0, 2.0, 3.0, 0.5])
           | st.sampled_from(["", "a", "AB", "ab", "gold", "silver", "o1", "2024-03-01T12:00:00Z", "2024-03-01T12:00:00",
                              "2024-03-01 12:00:00+01:00", "2024-03-01T25:00:00Z", "2024-03-01T12:00:00.5-05:30"]))


def _weighted(usual: st.SearchStrategy, rare: st.SearchStrategy, one_in: int) -> st.SearchStrategy:
    return st.integers(1, one_in).flatmap(lambda k: rare if k == 1 else usual)


def near(schema) -> st.SearchStrategy:
    """Instances close to ``schema``: mostly shaped like it, with random mutations, so both
    acceptance and refusal are exercised at every depth."""
    if not isinstance(schema, dict) or not schema:
        return VALUES
    options = []
    if "enum" in schema or "const" in schema:
        options.append(st.sampled_from(schema.get("enum", [schema.get("const")])))
    types = schema.get("type", [])
    for t in [types] if isinstance(types, str) else types:
        if t == "object":
            props, required = schema.get("properties", {}), set(schema.get("required", ()))
            shaped_dict = st.fixed_dictionaries(
                {k: near(v) for k, v in props.items() if k in required},
                optional={k: near(v) for k, v in props.items() if k not in required})
            options.append(_weighted(shaped_dict, st.builds(lambda d, x: {**d, "extra": x}, shaped_dict, SCALARS), 5))
        elif t == "array":
            options.append(st.lists(near(schema.get("items", {})), max_size=3))
        elif t in ("integer", "number"):
            options.append(st.integers(-2, 7) | st.sampled_from([0.5, 1.0, 4.999, 5.0, 1e3]))
        elif t == "string":
            options.append(SCALARS.filter(lambda v: isinstance(v, str)) | st.text(max_size=3))
        elif t == "boolean":
            options.append(st.booleans())
        elif t == "null":
            options.append(st.none())
    shaped = st.one_of(options) if options else VALUES
    return _weighted(shaped, VALUES, 10)  # ~1 in 10 values is anything


VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(KEYS), c, max_size=3), max_leaves=8)
INSTANCES = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6) | VALUES


@pytest.mark.parametrize("contract", CONTRACTS, ids=["order", "open-mixed", "closed-unions"])
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fast_accept_implies_jsonschema_accept(contract, data):
    instance = data.draw(_weighted(near(contract), INSTANCES, 4))
    fast = compile_check(contract)
    assert fast is not None
    if fast(json.dumps(instance)):
        errors = [e.message for e in Draft202012Validator(contract, format_checker=FORMAT_CHECKER).iter_errors(instance)]
        assert not errors, (instance, errors)


def test_fast_path_accepts_ordinary_valid_events():
    fast = compile_check(CONTRACTS[1])
    for instance in [{"n": 1}, {"n": 4, "tier": None, "ratio": None, "code": "FR", "at": "2024-03-01T12:00:00+02:00",
                                "tags": ["a"], "flag": False, "any": [1, {"b": None}], "meta": {"k": 1}, "level": 3, "unknown": 1}]:
        assert fast(json.dumps(instance))
    for instance in [{}, {"n": 5}, {"n": True}, {"n": 1, "at": "2024-03-01T12:00:00"}, {"n": 1, "tags": []}, {"n": 1, "code": "fr"}]:
        assert not fast(json.dumps(instance))


@pytest.mark.parametrize("schema", [
    {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}},
    {"type": "object", "properties": {"a": {"type": "string", "format": "email"}}},
    {"type": "object", "required": ["a"]},  # required but not declared
    {"type": "object", "additionalProperties": {"type": "string"}},
    {"type": "object", "properties": {"a": {"minimum": 0}}},  # constraint without type
    {"type": "object", "properties": {"a": {"enum": ["x", 1]}}},
    {"type": "object", "properties": {"a": {"enum": ["ab"], "maxLength": 1}}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0.5}}},
])
def test_schemas_outside_the_subset_have_no_fast_path(schema):
    assert compile_check(schema) is None
