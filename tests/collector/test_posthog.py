"""PostHog capture compatibility: PostHog's own recorded SDK requests, the real posthog SDK,
and each decoding / mapping / failure rule of :mod:`headwater.collector.posthog`."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import urllib.parse
from pathlib import Path

import pytest

from headwater.collector import posthog as ph
from headwater.collector.wire import WireError
from tests.helpers import query, run_stream

from .conftest import RECEIVED_US, SOURCE, WRITE_KEY

FIXTURE = Path(__file__).parent / "fixtures" / "posthog_requests_dump.jsonl"


def fixture_cases() -> list[dict]:
    """PostHog's recorded capture requests (``body`` base64 of the raw HTTP body) with the
    events each must yield (``output``)."""
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip() and not line.startswith("#")]


def norm(payload, tokenizer, query=None, **kw):
    req = ph.parse_request(payload if isinstance(payload, bytes) else json.dumps(payload).encode(), query)
    return ph.normalize(req, source=SOURCE, received_at_us=kw.get("received_us", RECEIVED_US), tokenizer=tokenizer)


# -- PostHog's recorded requests, through the real collector and stream --------------------
def add_legacy_source(home, name: str, key: str) -> None:
    """Register ``key`` the way ``sources.json`` held keys before they were hashed (plain
    ``write_key``): the collector migrates the entry on its next read. One recorded token,
    ``abcdef123456``, is shorter than a key may be today; an installed key keeps working."""
    entries = json.loads(home.sources_path.read_text()) + [{"name": name, "write_key": key}]
    home.sources_path.write_text(json.dumps(entries))


def test_posthog_recorded_requests_land_in_bronze_once_per_uuid(collector, http, events, bad_rows, tokenizer):
    cases = fixture_cases()
    for token in {c["output"][0]["token"] for c in cases}:
        add_legacy_source(collector.home, f"posthog-{token[:8]}", token)
    for c in cases:
        r = http.post(c["path"], content=base64.b64decode(c["body"]), headers={"content-type": c["content_type"]})
        assert r.status_code == 200, (c["path"], r.text)
        assert r.json()["status"] == 1 and r.json()["accepted"] == len(c["output"])
    expected = [o for c in cases for o in c["output"]]
    assert (len(expected), len({o["uuid"] for o in expected})) == (88, 82)

    rows = events.rows()
    assert sorted(r["event_id"] for r in rows) == sorted(o["uuid"] for o in expected)  # the log holds every send
    assert bad_rows.rows() == []
    by_id = {r["event_id"]: r for r in rows}
    kinds = {"$identify": "identify", "$set": "identify", "$pageview": "page", "$groupidentify": "group"}
    for o in expected:
        data, row = json.loads(o["data"]), by_id[o["uuid"]]
        assert row["source"] == f"posthog-{o['token'][:8]}"
        assert row["event_type"] == kinds.get(data["event"], "track")
        if row["event_type"] == "track":
            assert row["event_name"] == data["event"]
        assert tokenizer(o["distinct_id"]) in (row["user_id"], row["anonymous_id"])
        props = json.loads(row["properties"])
        assert "token" not in props and o["distinct_id"] not in row["properties"]
        for key in set(data.get("properties", {})) - {"token", "distinct_id", "$device_id", "$user_id", "$anon_distinct_id", "$ip"}:
            assert key in props, (o["uuid"], key)
        if "timestamp" in data and o["sent_at"]:  # clock-skew corrected like PostHog: now + (timestamp - sent_at)
            skew = dt.datetime.fromisoformat(data["timestamp"].replace("Z", "+00:00")) - dt.datetime.fromisoformat(o["sent_at"])
            assert row["event_ts"] == row["received_at"] + skew
    identify = next(r for r in rows if r["event_type"] == "identify" and r["event_id"] == "018a981f-4b35-7c66-825e-8b0eeae65714")
    # $identify links the anonymous (device) id to the identified distinct_id, as a Segment identify does
    assert identify["anonymous_id"] == tokenizer("018a981f-4b2d-78ae-947b-bedbaa02a0f4")
    assert identify["user_id"] == tokenizer("pWAkITyQ3CN7332UqQxnH6p3FV8VJd7pY647EdNkxWc")
    for o in expected:  # top-level $set / $set_once are kept, inside properties (as PostHog stores them)
        data, props = json.loads(o["data"]), json.loads(by_id[o["uuid"]]["properties"])
        for key in ("$set", "$set_once"):
            if data.get(key):
                assert {k: props[key][k] for k in data[key]} == data[key]

    run_stream(collector.home)
    ids = [o["uuid"] for o in expected]
    counts = query(collector.home, "SELECT event_id, count(*) AS n FROM bronze.events WHERE event_id IN (SELECT unnest($ids)) GROUP BY 1", {"ids": ids})
    assert counts.num_rows == 82 and set(counts.column("n").to_pylist()) == {1}


# -- the real posthog Python SDK ------------------------------------------------------------
def test_posthog_python_sdk_roundtrip(collector, events, bad_rows, tokenizer):
    from posthog import Posthog

    errors = []
    client = Posthog(WRITE_KEY, host=collector.url, gzip=True, on_error=lambda e, batch: errors.append(e),
                     max_retries=1, flush_interval=0.1, enable_exception_autocapture=False)
    when = dt.datetime(2024, 3, 1, 9, 30, tzinfo=dt.timezone.utc)
    client.capture("order completed", distinct_id="ph-user@example.com", properties={"revenue": 19.9}, timestamp=when,
                   uuid="00000000-0000-4000-8000-000000000001")
    client.capture("$pageview", distinct_id="ph-anon", properties={"$current_url": "https://shop.example/cart", "$pathname": "/cart"},
                   uuid="00000000-0000-4000-8000-000000000002")
    client.capture("$identify", distinct_id="ph-user@example.com", properties={"$anon_distinct_id": "ph-anon", "$set": {"plan": "pro"}},
                   uuid="00000000-0000-4000-8000-000000000003")
    client.set(distinct_id="ph-user@example.com", properties={"email": "ph-user@example.com"}, uuid="00000000-0000-4000-8000-000000000004")
    client.alias(previous_id="ph-anon-2", distinct_id="ph-user@example.com", uuid="00000000-0000-4000-8000-000000000005")
    client.flush()
    client.shutdown()
    assert errors == []

    rows = {r["event_id"][-1]: r for r in events.rows()}
    assert sorted(rows) == ["1", "2", "3", "4", "5"]
    assert [rows[k]["event_type"] for k in "12345"] == ["track", "page", "identify", "identify", "alias"]
    user, anon = tokenizer("ph-user@example.com"), tokenizer("ph-anon")
    assert (rows["1"]["event_name"], rows["1"]["user_id"]) == ("order completed", user)
    assert abs(rows["1"]["event_ts"] - when) < dt.timedelta(seconds=5)
    assert json.loads(rows["1"]["properties"])["revenue"] == 19.9
    assert (rows["2"]["event_name"], rows["2"]["user_id"]) == ("/cart", anon)  # server SDK: distinct_id is the user
    assert (rows["3"]["user_id"], rows["3"]["anonymous_id"]) == (user, anon)
    assert json.loads(rows["4"]["properties"])["$set"] == {"email": user}  # PII policy: email tokenised
    assert rows["5"]["user_id"] == user and json.loads(rows["5"]["properties"])["previousId"] == tokenizer("ph-anon-2")
    for r in rows.values():
        assert (r["source"], r["surface"]) == (SOURCE, "server")
        assert json.loads(r["context"])["library"]["name"] == "posthog-python"
        assert "ph-user@example.com" not in json.dumps(r, default=str) and '"ph-anon"' not in r["properties"]
    assert bad_rows.rows() == []


# -- HTTP: encodings, auth, failures -------------------------------------------------------
EVENT = {"event": "clicked", "distinct_id": "d-1", "uuid": "0190f0a0-0000-7000-8000-000000000001", "properties": {"x": 1}}


@pytest.mark.parametrize("path", ["/e/", "/capture/", "/i/v0/e/", "/track/", "/engage/", "/batch", "/e"])
def test_every_capture_path_accepts_a_single_event_with_api_key(http, events, path):
    r = http.post(path, json={**EVENT, "api_key": WRITE_KEY})
    assert r.status_code == 200 and r.json()["status"] == 1, r.text
    assert [r["event_id"] for r in events.rows()] == [EVENT["uuid"]]


def test_gzip_header_and_gzip_js_query_and_form_base64(http, events):
    batch = json.dumps({"api_key": WRITE_KEY, "batch": [{**EVENT, "uuid": f"u-{i}"} for i in range(3)]}).encode()
    assert http.post("/batch/", content=gzip.compress(batch), headers={"content-encoding": "gzip"}).status_code == 200
    array = json.dumps([{**EVENT, "uuid": "u-js", "properties": {"token": WRITE_KEY}}]).encode()
    assert http.post("/e/?compression=gzip-js&ver=1.0", content=gzip.compress(array), headers={"content-type": "text/plain"}).status_code == 200
    form = "data=" + urllib.parse.quote(base64.b64encode(json.dumps({**EVENT, "uuid": "u-form", "token": WRITE_KEY}).encode()).decode())
    assert http.post("/e/", content=form, headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 200
    assert http.post(f"/i/v0/e/?token={WRITE_KEY}", json={**EVENT, "uuid": "u-query"}).status_code == 200
    assert sorted(r["event_id"] for r in events.rows()) == ["u-0", "u-1", "u-2", "u-form", "u-js", "u-query"]


def test_missing_and_unknown_token_are_401_auth_failures(http, events, bad_rows, tokenizer):
    r = http.post("/batch/", json={"batch": [EVENT]})
    assert r.status_code == 401 and "api_key" in r.json()["message"]
    r = http.post("/batch/", json={"api_key": "phc_wrong", "batch": [EVENT]})
    assert r.status_code == 401 and r.json()["message"] == "Field `api_key` / `token`: unknown write key"
    assert events.rows() == []
    rows = bad_rows.rows()
    assert [(b["error_type"], b["source"], b["protocol"]) for b in rows] == [("auth_failure", None, "posthog")] * 2
    assert tokenizer("phc_wrong") in rows[1]["reason"] and "phc_wrong" not in rows[1]["payload"]
    assert "d-1" not in rows[0]["payload"] and tokenizer("d-1") in rows[0]["payload"]


def test_bad_events_become_bad_rows_and_their_neighbours_land(http, events, bad_rows, tokenizer):
    batch = [
        {**EVENT, "uuid": "ok-1"},
        {"distinct_id": "d-2", "uuid": "no-name"},
        {"event": "e", "uuid": "no-id", "properties": {"email": "ann@example.com"}},
        {"event": "$create_alias", "distinct_id": "d-3", "uuid": "no-alias"},
        {"event": "e", "distinct_id": "d-4", "timestamp": "yesterday"},
        {**EVENT, "uuid": "ok-2"},
    ]
    r = http.post("/batch/", json={"api_key": WRITE_KEY, "batch": batch})
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (2, 4)
    assert [r["event_id"] for r in events.rows()] == ["ok-1", "ok-2"]
    bad = bad_rows.rows()
    assert [(b["error_type"], b["source"], b["protocol"]) for b in bad] == [("envelope_violation", SOURCE, "posthog")] * 4
    assert [b["reason"] for b in bad] == [
        "Object missing required field `event` (a non-empty event name) - at `$.batch[1]`",
        "Object missing required field `distinct_id` (top level, `$distinct_id` or `properties.distinct_id`) - at `$.batch[2]`",
        "Object missing required field `properties.alias` ($create_alias links distinct_id to alias) - at `$.batch[3]`",
        "Invalid RFC3339 encoded datetime - at `$.batch[4].timestamp`",
    ]
    assert "ann@example.com" not in bad[1]["payload"] and tokenizer("ann@example.com") in bad[1]["payload"]
    assert "d-2" not in bad[0]["payload"] and tokenizer("d-2") in bad[0]["payload"]


@pytest.mark.parametrize(
    "body, headers, status, code, message",
    [
        (b"{not json", {}, 400, "decode_failure", "Malformed JSON"),
        (b"%%%not base64%%%", {}, 400, "decode_failure", "neither JSON, gzip nor base64"),
        (b"\x1f\x8b\x08\x00garbage", {}, 400, "decode_failure", "Invalid gzip payload"),
        (b"ver=1", {"content-type": "application/x-www-form-urlencoded"}, 400, "decode_failure", "without a `data` field"),
        (b'"a string"', {}, 400, "envelope_violation", "Expected a JSON array of events"),
        (json.dumps([{**EVENT, "token": "a"}, {**EVENT, "token": "b"}]).encode(), {}, 400, "envelope_violation", "2 different tokens"),
    ],
)
def test_unreadable_requests_are_4xx_with_the_rule(http, body, headers, status, code, message):
    r = http.post("/e/", content=body, headers=headers)
    assert r.status_code == status and r.json()["code"] == code and message in r.json()["message"], r.text


def test_lz64_is_refused_clearly(http):
    r = http.post(f"/e/?compression=lz64&token={WRITE_KEY}", content=b"N4Ig")
    assert r.status_code == 400 and "lz64" in r.json()["message"]


def test_gzip_bomb_is_a_size_violation(http, bad_rows):
    bomb = gzip.compress(b"[" + b" " * (2 * 1024 * 1024) + b"]")
    r = http.post(f"/e/?compression=gzip-js&token={WRITE_KEY}", content=bomb)
    assert r.status_code == 413 and r.json()["code"] == "size_violation"
    [bad] = bad_rows.rows()
    assert (bad["error_type"], bad["source"]) == ("size_violation", SOURCE) and len(bad["payload"]) <= 1024


# -- mapping rules (pure) ------------------------------------------------------------------
def test_identity_mapping_follows_segment_semantics(tokenizer):
    n = norm([
        {"event": "$pageview", "distinct_id": "dev-1", "properties": {"$device_id": "dev-1", "$pathname": "/p", "token": "t"}},
        {"event": "$identify", "distinct_id": "u-1", "properties": {"$anon_distinct_id": "dev-1", "$device_id": "dev-1", "token": "t"}},
        {"event": "clicked", "distinct_id": "u-1", "properties": {"$device_id": "dev-1", "$user_id": "u-1", "token": "t"}},
        {"event": "$create_alias", "distinct_id": "u-1", "properties": {"alias": "u-1-new", "token": "t"}},
        {"event": "$screen", "$distinct_id": 42, "properties": {"$screen_name": "Home", "$lib": "posthog-ios", "$os": "iOS", "token": "t"}},
        {"event": "$groupidentify", "properties": {"distinct_id": "u-1", "$group_key": "acme", "$group_type": "company", "token": "t"}},
    ], tokenizer)
    assert n.rejected == 0, n.errors
    rows = n.events.to_pylist()
    t = tokenizer
    assert [(r["event_type"], r["event_name"], r["user_id"], r["anonymous_id"]) for r in rows] == [
        ("page", "/p", None, t("dev-1")),  # anonymous visitor: its distinct_id is the device id
        ("identify", None, t("u-1"), t("dev-1")),  # the anonymous → user link
        ("track", "clicked", t("u-1"), t("dev-1")),  # identified event carries both, like Segment
        ("alias", None, t("u-1-new"), None),
        ("screen", "Home", t("42"), None),
        ("group", None, t("u-1"), None),
    ]
    props = [json.loads(r["properties"]) for r in rows]
    assert props[3]["previousId"] == t("u-1") and props[3]["alias"] == t("u-1-new")
    assert props[5]["groupId"] == "acme"
    assert all("token" not in p for p in props)
    assert (rows[4]["surface"], rows[4]["platform"]) == ("mobile", "ios")


def test_event_time_from_timestamp_sent_at_and_offset(tokenizer):
    received = dt.datetime.fromtimestamp(RECEIVED_US / 1e6, dt.timezone.utc)
    sent_ms = int((received - dt.timedelta(minutes=5)).timestamp() * 1000)  # client clock 5 min slow
    n = norm([
        {"event": "a", "distinct_id": "d", "token": "t", "timestamp": (received - dt.timedelta(minutes=6)).isoformat()},
        {"event": "b", "distinct_id": "d", "token": "t", "offset": 1500},
        {"event": "c", "distinct_id": "d", "token": "t"},
        {"event": "d", "distinct_id": "d", "token": "t", "timestamp": (received - dt.timedelta(minutes=6)).isoformat(), "properties": {"$ignore_sent_at": True}},
    ], tokenizer, {"_": str(sent_ms)})
    ts = n.events.column("event_ts").to_pylist()
    assert ts == [received - dt.timedelta(minutes=1), received - dt.timedelta(milliseconds=1500), received, received - dt.timedelta(minutes=6)]


def test_set_and_set_once_are_merged_into_properties(tokenizer):
    n = norm({"api_key": "t", "batch": [{"event": "$identify", "distinct_id": "u", "$set": {"plan": "pro"}, "$set_once": {"first": "x"},
                                         "properties": {"$set": {"old": 1}}}]}, tokenizer)
    props = json.loads(n.events.column("properties")[0].as_py())
    assert props["$set"] == {"old": 1, "plan": "pro"} and props["$set_once"] == {"first": "x"}


def test_missing_uuid_gets_a_deterministic_id(tokenizer):
    a = norm([{"event": "e", "distinct_id": "d", "token": "t"}], tokenizer).events.column("event_id")[0].as_py()
    b = norm([{"event": "e", "distinct_id": "d", "token": "t"}], tokenizer).events.column("event_id")[0].as_py()
    assert a == b and len(a) == 36


def test_payload_decoding_errors_name_the_rule():
    with pytest.raises(WireError, match="lz64"):
        ph.payload_bytes(b"data=x&compression=lz64", "application/x-www-form-urlencoded")
    # form + base64 whose "+" turned into spaces is restored (as PostHog does)
    raw = json.dumps({"event": "e>>>?", "distinct_id": "d"}).encode()
    encoded = base64.b64encode(raw).decode()
    assert "+" in encoded
    assert ph.payload_bytes(("data=" + encoded.replace("+", " ")).encode(), "application/x-www-form-urlencoded") == raw


def test_oversize_event_is_a_size_violation_and_its_neighbours_land(http, events, bad_rows):
    big = {**EVENT, "uuid": "big", "properties": {"blob": "x" * 40_000, "email": "eve@example.com"}}
    r = http.post("/batch/", json={"api_key": WRITE_KEY, "batch": [{**EVENT, "uuid": "small"}, big]})
    assert r.status_code == 200 and (r.json()["accepted"], r.json()["rejected"]) == (1, 1)
    assert [e["event_id"] for e in events.rows()] == ["small"]
    [bad] = bad_rows.rows()
    assert bad["error_type"] == "size_violation" and "at `$.batch[1]`" in bad["reason"]
    assert "eve@example.com" not in bad["payload"] and len(bad["payload"]) <= 32 * 1024
