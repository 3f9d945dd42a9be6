"""Contract validation in the real collector (uvicorn subprocess on 127.0.0.1): mixed
batches, the failing path and rule in bad rows, registry changes picked up while running,
and the per-source policy for unregistered event names."""

from __future__ import annotations

import copy
import json
import time

import httpx
import pytest

from headwater.registry.registry import Registry
from tests.helpers import LogTail, start_collector
from tests.registry.conftest import CLOSED_ORDER, basic

WRITE_KEY = "wk-registry-test-key"
SOURCE = "shop"


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    home_dir = tmp_path_factory.mktemp("registry-home")
    from headwater.config import Home

    Registry.from_home(Home(home_dir)).register("Order Completed", CLOSED_ORDER)
    with start_collector(home_dir, write_key=WRITE_KEY, source=SOURCE) as c:
        yield c


@pytest.fixture
def http(collector):
    with httpx.Client(base_url=collector.url, timeout=10, headers=basic(WRITE_KEY)) as client:
        yield client


@pytest.fixture
def events(collector):
    return LogTail(collector.log, "events")


@pytest.fixture
def bad_rows(collector):
    return LogTail(collector.log, "bad_rows")


def track(i: int, event: str, properties: dict, user: str = "alice@example.com") -> dict:
    return {"type": "track", "messageId": f"m-{event}-{i}-{time.time_ns()}", "userId": user, "event": event,
            "properties": properties, "timestamp": "2024-03-01T12:00:00Z"}


def test_mixed_batch_keeps_valid_events_and_explains_violations(http, events, bad_rows):
    batch = [
        track(0, "Order Completed", {"order_id": "o1", "revenue": 42.5}),
        track(1, "Order Completed", {"order_id": "o2", "revenue": "42"}),  # type
        track(2, "Order Completed", {"order_id": "o3"}),  # required
        track(3, "Order Completed", {"order_id": "o4", "revenue": 1, "items": [{"sku": "a"}, {"qty": 2}]}),  # nested required
        track(4, "Order Completed", {"order_id": "o5", "revenue": 1, "coupon": "X"}),  # closed model
        track(5, "Page Scrolled", {"depth": 3}),  # unregistered: accepted (default policy)
        {"type": "identify", "userId": "alice@example.com", "traits": {"plan": "pro"}},
    ]
    r = http.post("/v1/batch", json={"batch": batch})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (3, 4)
    errors = {e["index"]: e for e in body["errors"]}
    assert set(errors) == {1, 2, 3, 4} and {e["code"] for e in errors.values()} == {"schema_violation"}
    # reasons name the field, the rule and the JSON type found: never the value sent
    assert "Field `properties.revenue`: expected number, got string (rule `type` of schema 'Order Completed' version 1) - at `$.batch[1].properties.revenue`" == errors[1]["message"]
    assert "`properties.revenue`" in errors[2]["message"] and "rule `required`" in errors[2]["message"]
    assert "`properties.items[1].sku`" in errors[3]["message"] and "rule `required`" in errors[3]["message"]
    assert "rule `additionalProperties`" in errors[4]["message"] and "`properties.coupon`: property not allowed" in errors[4]["message"]

    rows = {(r["event_name"], r["event_type"]): r for r in events.rows()}
    assert len(rows) == 3
    assert json.loads(rows[("Order Completed", "track")]["properties"]) == {"order_id": "o1", "revenue": 42.5}
    assert rows[("Order Completed", "track")]["schema_version"] == "1"
    assert rows[("Page Scrolled", "track")]["schema_version"] is None
    assert rows[(None, "identify")]["schema_version"] is None

    bad = bad_rows.rows()
    assert sorted(b["reason"] for b in bad) == sorted(e["message"] for e in errors.values())
    assert {b["error_type"] for b in bad} == {"schema_violation"} and {b["source"] for b in bad} == {SOURCE}
    for b in bad:  # the message as sent, its identifiers tokenised
        payload = json.loads(b["payload"])
        assert payload["event"] == "Order Completed" and payload["userId"] != "alice@example.com"
        assert "alice@example.com" not in b["payload"]


def test_single_message_endpoint_answers_400_with_path_and_rule(http, events, bad_rows):
    r = http.post("/v1/track", json=track(0, "Order Completed", {"order_id": "o1", "revenue": -5}))
    assert r.status_code == 400
    assert r.json()["code"] == "schema_violation"
    assert "Field `properties.revenue`: expected a number >= 0, got an integer outside it (rule `minimum`" in r.json()["message"]
    assert r.json()["message"].endswith("- at `$.properties.revenue`")
    assert events.rows() == [] and len(bad_rows.rows()) == 1


def _send_until(http, events, message: dict, predicate, timeout: float = 15.0) -> dict:
    """Re-send (new messageId each time) until a stored row satisfies ``predicate``: the
    collector re-reads the registry / sources within about a second."""
    deadline = time.monotonic() + timeout
    while True:
        m = copy.deepcopy(message)
        m["messageId"] = f"{m['messageId']}-{time.monotonic_ns()}"
        r = http.post("/v1/batch", json={"batch": [m]})
        rows = events.rows()
        if rows and predicate(r, rows[-1]):
            return rows[-1]
        if time.monotonic() > deadline:
            raise AssertionError(f"no matching outcome within {timeout}s: {r.status_code} {r.text} {rows[-1:] if rows else None}")
        events.mark()
        time.sleep(0.2)


def test_new_version_applies_without_restart(collector, http, events, bad_rows):
    v2 = copy.deepcopy(CLOSED_ORDER)
    v2["properties"]["coupon"] = {"type": "string"}
    Registry.from_home(collector.home).register("Order Completed", v2)
    msg = track(0, "Order Completed", {"order_id": "o9", "revenue": 3, "coupon": "SPRING"})
    row = _send_until(http, events, msg, lambda r, row: r.status_code == 200 and row["schema_version"] == "2")
    assert json.loads(row["properties"])["coupon"] == "SPRING"
    # A subject registered while running is enforced too.
    Registry.from_home(collector.home).register("Refund Issued", {"type": "object", "properties": {"amount": {"type": "integer"}}})
    deadline = time.monotonic() + 15
    while True:
        r = http.post("/v1/batch", json={"batch": [track(1, "Refund Issued", {"amount": 1.5})]})
        if r.status_code == 400:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.2)
    assert "rule `type` of schema 'Refund Issued' version 1" in r.json()["message"]


def test_unregistered_policy_reject_per_source(collector, http, events, bad_rows):
    collector.home.update_source(SOURCE, unregistered_events="reject")
    try:
        deadline = time.monotonic() + 15
        while True:
            r = http.post("/v1/batch", json={"batch": [track(0, "Wishlist Added", {"sku": "a"}),
                                                       track(1, "Order Completed", {"order_id": "o1", "revenue": 1})]})
            assert r.status_code == 200, r.text
            if r.json()["rejected"] == 1:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        error = r.json()["errors"][0]
        assert error["index"] == 0 and error["code"] == "schema_violation"
        assert "the event name has no registered schema and source 'shop' rejects unregistered events (rule `registered`)" in error["message"]
        assert error["message"].endswith("- at `$.batch[0].event`")
        assert any(b["reason"] == error["message"] for b in bad_rows.rows())
        # identify / alias carry no event name: never rejected as unregistered
        r = http.post("/v1/batch", json={"batch": [{"type": "identify", "userId": "u1", "traits": {}}]})
        assert r.status_code == 200 and r.json()["accepted"] == 1
    finally:
        collector.home.update_source(SOURCE, unregistered_events="accept")


def test_contracts_from_postgres_registry(postgres, tmp_path):
    """HEADWATER_REGISTRY_URL: the collector validates against contracts kept in PostgreSQL."""
    postgres.create_database("registry_e2e")
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/registry_e2e"
    from headwater.registry.store import PostgresStore

    registry = Registry(PostgresStore(url))
    registry.register("Order Completed", CLOSED_ORDER)
    with start_collector(tmp_path, write_key=WRITE_KEY, source=SOURCE, env={"HEADWATER_REGISTRY_URL": url}) as c:
        events = LogTail(c.log, "events")
        with httpx.Client(base_url=c.url, timeout=10, headers=basic(WRITE_KEY)) as http:
            r = http.post("/v1/batch", json={"batch": [track(0, "Order Completed", {"order_id": "o1", "revenue": 1}),
                                                       track(1, "Order Completed", {"order_id": 7, "revenue": 1})]})
            assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (1, 1)
            assert "Field `properties.order_id`: expected string, got integer (rule `type`" in r.json()["errors"][0]["message"]
            assert [row["schema_version"] for row in events.rows()] == ["1"]
            # a version registered in PostgreSQL reaches the running collector
            registry.register("Order Completed", {**CLOSED_ORDER, "properties": {**CLOSED_ORDER["properties"], "coupon": {"type": "string"}}})
            events.mark()
            row = _send_until(http, events, track(2, "Order Completed", {"order_id": "o2", "revenue": 1, "coupon": "A"}),
                              lambda r, row: row["schema_version"] == "2")
            assert json.loads(row["properties"])["coupon"] == "A"
    registry.close()
