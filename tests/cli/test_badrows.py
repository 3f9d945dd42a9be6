"""`headwater badrows`: failed events from real SDK-shaped requests are listed with filters, and
replayed after a fix (a source's policy, a schema) through the same normalisation, contracts,
PII policy and log; replays are marked and deduplicated."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import sys

import httpx
import pytest
from click.testing import CliRunner

from headwater.cli import main

from headwater.ingest.tokens import Tokenizer
from headwater.config import Home
from tests.helpers import query, run_stream, start_collector

WRITE_KEY, SOURCE = "wk-badrows-test-key", "web"
HMAC = bytes(range(32))
UID, EMAIL = "dora@example.com", "dora.private@example.org"
SCHEMA = {"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]}


def hw(home: Home, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real `headwater` command in a subprocess."""
    env = {**os.environ, "HEADWATER_HOME": str(home.root), "HEADWATER_HMAC_KEY": HMAC.hex()}
    return subprocess.run([sys.executable, "-m", "headwater", *args], env=env, capture_output=True, text=True, check=check, timeout=120)


def cli(home: Home, *args: str, code: int = 0):
    """The same command in-process (click's runner): no interpreter start per call."""
    r = CliRunner().invoke(main.cli, list(args), env={"HEADWATER_HOME": str(home.root), "HEADWATER_HMAC_KEY": HMAC.hex()})
    assert r.exit_code == code, (r.output, r.exception)
    return r


def rows(home: Home, *args: str) -> list[dict]:
    return json.loads(cli(home, "badrows", "--format", "json", *args).stdout)


def msg(mid: str, event: str, **props) -> dict:
    return {"type": "track", "messageId": mid, "userId": UID, "event": event, "properties": props,
            "timestamp": "2024-03-01T10:00:00Z"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A home whose source rejects unregistered event names, with one contract, and the bad
    rows of a few bad requests already in bronze."""
    home = Home(tmp_path_factory.mktemp("badrows"))
    home.add_source(SOURCE, WRITE_KEY)
    home.update_source(SOURCE, unregistered_events="reject")
    schema = home.root / "order.json"
    schema.write_text(json.dumps(SCHEMA))
    hw(home, "schema", "register", "Order Completed", str(schema))
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    with start_collector(home.root, write_key=WRITE_KEY, source=SOURCE, env={"HEADWATER_HMAC_KEY": HMAC.hex()}) as c:
        with httpx.Client(base_url=c.url, timeout=10) as http:
            r = http.post("/v1/batch", headers=auth, json={"batch": [
                msg("ok-1", "Order Completed", price=10),
                msg("bad-price", "Order Completed", price="ten"),
                msg("signed-up", "Signed Up", email=EMAIL, plan="pro"),
                {"type": "track", "messageId": "no-event", "userId": UID},
            ]})
            assert (r.status_code, r.json()["accepted"], r.json()["rejected"]) == (200, 1, 3), r.text
            r = http.post("/batch/", json={"api_key": WRITE_KEY, "batch": [
                {"event": "ph signed up", "distinct_id": UID, "uuid": "ph-1", "properties": {"$email": EMAIL}}]})
            assert (r.status_code, r.json()["rejected"]) == (400, 1), r.text
            assert http.post("/v1/batch", json={"batch": [msg("x", "X")], "writeKey": "wrong"}).status_code == 401
    run_stream(home)
    return home


def test_list_with_filters_and_formats(world):
    all_rows = rows(world)
    assert sorted(r["error_type"] for r in all_rows) == ["auth_failure", "envelope_violation", "schema_violation", "schema_violation", "schema_violation"]
    assert all(len(r["bad_row_id"]) == 32 and r["replayed_at"] is None for r in all_rows)
    schema = rows(world, "--type", "schema_violation")
    assert {(r["source"], r["protocol"]) for r in schema} == {(SOURCE, "segment"), (SOURCE, "posthog")}
    price = next(r for r in schema if "bad-price" in r["payload"])
    assert "properties.price" in price["reason"] and "type" in price["reason"]
    [auth] = rows(world, "--source", "unknown")
    assert auth["error_type"] == "auth_failure" and "wrong" not in json.dumps(auth)
    assert rows(world, "--source", SOURCE, "--type", "auth_failure") == []
    assert len(rows(world, "--since", "1h")) == 5 and rows(world, "--since", "2999-01-01") == []
    assert len(rows(world, "--limit", "2")) == 2
    text = json.dumps(all_rows)
    assert UID not in text and EMAIL not in text  # ids and PII tokenised in every payload
    csv = cli(world, "badrows", "--format", "csv", "--type", "envelope_violation").stdout.splitlines()
    assert csv[0].startswith('"bad_row_id","received_at","source","error_type","reason"') and len(csv) == 2
    assert "expected YYYY-MM-DD" in cli(world, "badrows", "--since", "yesterday-ish", code=2).output


def test_replay_after_a_fix_lands_once_and_marks_rows(world):
    tok = Tokenizer(HMAC)
    # Nothing fixed yet: every row fails again, nothing is marked.
    first = json.loads(cli(world, "badrows", "replay", "--type", "schema_violation", "--format", "json").stdout)
    assert (first["replayed"], len(first["failed"])) == (0, 3)
    assert any("registered" in f["reason"] for f in first["failed"])

    # The fix: the source now accepts unregistered names. Meanwhile the SDK re-sent
    # "Signed Up" (same messageId) successfully: the replay duplicates it, the stream dedups.
    world.update_source(SOURCE, unregistered_events="accept")
    with start_collector(world.root, write_key=WRITE_KEY, source=SOURCE, env={"HEADWATER_HMAC_KEY": HMAC.hex()}) as c:
        r = httpx.post(c.url + "/v1/batch", json={"batch": [msg("signed-up", "Signed Up", email=EMAIL, plan="pro")], "writeKey": WRITE_KEY})
        assert r.status_code == 200
    result = json.loads(hw(world, "badrows", "replay", "--type", "schema_violation", "--format", "json").stdout)
    assert (result["replayed"], result["events"]) == (2, 2)
    [still] = result["failed"]
    assert still["error_type"] == "schema_violation" and "properties.price" in still["reason"]
    again = json.loads(cli(world, "badrows", "replay", "--format", "json").stdout)
    assert again["replayed"] == 0  # replayed rows are marked; the rest still fail
    assert {f["error_type"] for f in again["failed"]} == {"schema_violation", "envelope_violation", "auth_failure"}

    run_stream(world)
    got = query(world, "SELECT event_id, user_id, properties, count(*) OVER (PARTITION BY event_id) AS n FROM bronze.events "
                       "WHERE event_id IN ('signed-up', 'ph-1')").to_pylist()
    assert sorted(r["event_id"] for r in got) == ["ph-1", "signed-up"] and {r["n"] for r in got} == {1}
    for r in got:  # identifiers tokenised once: the replay did not hash the tokens again
        assert r["user_id"] == tok(UID)
        assert EMAIL not in r["properties"] and tok(EMAIL) in r["properties"]

    listed = rows(world)
    assert sorted(r["error_type"] for r in listed) == ["auth_failure", "envelope_violation", "schema_violation"]
    replayed = [r for r in rows(world, "--all") if r["replayed_at"] is not None]
    assert len(replayed) == 2 and all(dt.datetime.fromisoformat(r["replayed_at"]) for r in replayed)


def test_source_policy_command(tmp_path):
    home = Home(tmp_path)
    home.add_source("app", "wk-app-test-key-01")
    out = json.loads(cli(home, "source", "policy", "app", "--tokenize", "email, ssn", "--keep", "ip", "--unregistered", "reject", "--format", "json").stdout)
    assert out["pii"]["tokenize"] == ["email", "ssn"] and out["pii"]["keep"] == ["ip"] and out["unregistered_events"] == "reject"
    assert "write_key" not in out
    [source] = home.sources()
    assert source.pii.tokenize == ("email", "ssn") and source.unregistered_events == "reject"
    assert "no such source" in cli(home, "source", "policy", "nope", code=3).output
    assert "is not one of" in cli(home, "source", "policy", "app", "--unregistered", "maybe", code=2).output
