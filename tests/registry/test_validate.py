"""ContractValidator and validate.apply in-process: reload on change, survival of an
unreadable registry, the request-index mapping of a batch with earlier envelope errors."""

from __future__ import annotations

import json
import logging

import pytest

from headwater.collector.segment import ID_FIELDS, normalize, parse_request
from headwater.config import Home
from headwater.ingest.badrows import redact
from headwater.ingest.tokens import Tokenizer
from headwater.registry import validate
from headwater.registry.registry import Registry
from tests.registry.conftest import CLOSED_ORDER

TOKENIZER = Tokenizer(b"k" * 32)


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry.from_home(Home(tmp_path))


def run(validator, batch, reject_unregistered=False):
    env = parse_request(json.dumps({"batch": batch}).encode())
    norm = normalize(env, source="web", received_at_us=1_709_294_400_000_000, tokenizer=TOKENIZER)
    return validate.apply(norm, validator, messages=env.messages, at=lambda i: f"$.batch[{i}]", reject_unregistered=reject_unregistered,
                          redact=lambda raw: redact(raw, TOKENIZER, ID_FIELDS), source="web", received_at_us=1_709_294_400_000_000)


def order(revenue, **extra):
    return {"type": "track", "userId": "u", "event": "Order Completed", "properties": {"order_id": "o", "revenue": revenue, **extra}}


def test_reloads_when_the_registry_changes(registry):
    v = validate.ContractValidator(registry, interval=0)
    assert v.contracts() == {}
    registry.register("Order Completed", CLOSED_ORDER)
    first = v.contracts()["Order Completed"]
    assert first.version == 1 and first.fast is not None
    assert v.contracts()["Order Completed"] is first  # unchanged registry: same compiled contract
    registry.register("Signed Up", {"type": "object", "properties": {"plan": {"anyOf": [{"type": "string"}]}}})
    contracts = v.contracts()
    assert contracts["Order Completed"] is first and contracts["Signed Up"].fast is None  # outside the fast subset


def test_polls_at_most_every_interval(registry):
    v = validate.ContractValidator(registry, interval=3600)
    v.contracts()
    registry.register("Order Completed", CLOSED_ORDER)
    assert v.contracts() == {}  # not re-read within the interval


def test_unreadable_registry_keeps_the_last_contracts(registry, caplog):
    registry.register("Order Completed", CLOSED_ORDER)
    v = validate.ContractValidator(registry, interval=0)
    assert set(v.contracts()) == {"Order Completed"}
    next(registry.store.dir.glob("*.json")).write_text("{truncated")
    with caplog.at_level(logging.WARNING):
        assert set(v.contracts()) == {"Order Completed"}
    assert "schema registry unreadable, keeping 1 contracts" in caplog.text


def test_indices_skip_envelope_errors(registry):
    registry.register("Order Completed", CLOSED_ORDER)
    v = validate.ContractValidator(registry, interval=0)
    batch = [{"type": "track", "userId": "u"},  # envelope violation: no event name
             order(1.0), order("x"), {"type": "bogus"}, order(2.0), order(-1)]
    out = run(v, batch)
    assert [(e["index"], e["code"]) for e in out.errors] == [(0, "envelope_violation"), (2, "schema_violation"), (3, "envelope_violation"), (5, "schema_violation")]
    assert out.errors[1]["message"].endswith("- at `$.batch[2].properties.revenue`")
    assert [json.loads(p)["revenue"] for p in out.events.column("properties").to_pylist()] == [1.0, 2.0]
    assert out.events.column("schema_version").to_pylist() == ["1", "1"]
    assert len(out.bad_rows) == 4 and json.loads(out.bad_rows[3].payload)["properties"]["revenue"] == -1


def test_integer_valued_float_goes_through_jsonschema(registry):
    registry.register("Refund", {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    v = validate.ContractValidator(registry, interval=0)
    out = run(v, [{"type": "track", "userId": "u", "event": "Refund", "properties": {"n": 1.0}}])
    assert out.rejected == 0 and out.events.column("schema_version").to_pylist() == ["1"]  # 1.0 is an integer in JSON Schema


def test_nothing_registered_costs_nothing(registry):
    v = validate.ContractValidator(registry, interval=0)
    env = parse_request(json.dumps({"batch": [order(1)]}).encode())
    norm = normalize(env, source="web", received_at_us=1, tokenizer=TOKENIZER)
    assert validate.apply(norm, v, messages=env.messages, at=str, reject_unregistered=False, redact=str, source="web", received_at_us=1) is norm


def test_reasons_name_field_rule_and_type_never_the_value(registry):
    email = "ann.lee@example.org"
    registry.register("Signed Up", {"type": "object", "additionalProperties": False, "properties": {
        "email": {"type": "integer"}, "plan": {"enum": ["free", "pro"]}, "code": {"type": "string", "pattern": "^[a-z]+$"},
        "seats": {"type": "integer", "minimum": 1}}})
    v = validate.ContractValidator(registry, interval=0)

    def reason(properties: dict) -> str:
        out = run(v, [{"type": "track", "userId": "u", "event": "Signed Up", "properties": properties}])
        assert out.rejected == 1
        return out.bad_rows[0].reason

    assert reason({"email": email}).startswith("Field `properties.email`: expected integer, got string (rule `type`")
    assert reason({"plan": email}).startswith("Field `properties.plan`: expected one of the 2 allowed values, got a string")
    assert reason({"code": email}).startswith("Field `properties.code`: expected a string matching ^[a-z]+$, got a string of 19 characters")
    assert reason({"seats": -3}).startswith("Field `properties.seats`: expected a number >= 1, got an integer outside it (rule `minimum`")
    assert reason({"coupon": email}).startswith("Field `properties.coupon`: property not allowed by the schema (rule `additionalProperties`")
    for properties in ({"email": email}, {"plan": email}, {"code": email}, {"coupon": email}):
        assert "ann.lee" not in reason(properties)
    rejected = run(v, [{"type": "track", "userId": "u", "event": email, "properties": {}}], reject_unregistered=True).bad_rows[0]
    assert "ann.lee" not in rejected.reason and "(rule `registered`)" in rejected.reason
