"""The collector as a real uvicorn process on 127.0.0.1: status codes, error texts, what lands in the log."""

from __future__ import annotations

import gzip
import json
import time
import zlib

import pytest

from headwater.events import EVENT_TYPES

from .conftest import SOURCE, WRITE_KEY, basic

UID = "bob@example.org"


def ev(i: int | str, **kw) -> dict:
    m = {"type": "track", "event": "Item Viewed", "userId": UID, "messageId": f"{i}", "timestamp": "2024-03-01T10:00:00Z"}
    m.update(kw)
    return m


def post_batch(http, batch, headers=None, **body):
    return http.post("/v1/batch", content=json.dumps({"batch": batch, **body}), headers=headers if headers is not None else basic(WRITE_KEY))


def ids(rows) -> list[str]:
    """Sorted event ids of log rows, or messageIds of sent messages."""
    return sorted(r["event_id"] if "event_id" in r else r["messageId"] for r in rows)


def test_health(http):
    r = http.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"  # components: tests/collector/test_health.py


def test_batch_lands_in_the_log_partitioned_by_identity(http, collector, events, bad_rows, tokenizer):
    batch = [ev(f"ok-{i}", userId=f"user-{i % 9}", anonymousId=f"anon-{i}") for i in range(40)]
    batch += [ev(f"anon-only-{i}", userId=None, anonymousId=f"anon-x{i}") for i in range(10)]
    r = post_batch(http, batch, sentAt="2024-03-01T10:00:05Z")
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": 50, "rejected": 0, "errors": []}
    rows = events.rows()
    assert ids(rows) == ids(batch)
    assert bad_rows.rows() == []
    for row in rows:
        key = row["user_id"] or row["anonymous_id"]
        assert row["_partition"] == int(key[:8], 16) % collector.log.partitions("events")
        assert row["source"] == SOURCE
        assert row["received_at"] - row["event_ts"] < __import__("datetime").timedelta(seconds=10)  # skew corrected
    assert {r["user_id"] for r in rows} - {None} == {tokenizer(f"user-{i}") for i in range(9)}
    assert len({r["_partition"] for r in rows}) > 1


def test_write_key_in_body_is_the_fallback(http, events):
    r = post_batch(http, [ev("body-key")], headers={}, writeKey=WRITE_KEY)
    assert r.status_code == 200, r.text
    assert ids(events.rows()) == ["body-key"]


@pytest.mark.parametrize(
    "headers, body_key, message",
    [
        ({}, None, "Missing write key: send HTTP Basic auth with the write key as username, or `writeKey` in the body"),
        (basic("no-such-key"), WRITE_KEY, "Authorization header: unknown write key"),
        ({}, "no-such-key", "Field `writeKey`: unknown write key"),
        ({"Authorization": "Bearer abc"}, None, "Authorization header: expected HTTP Basic auth with the write key as username and an empty password"),
    ],
)
def test_missing_or_unknown_write_key_is_401_and_an_auth_failure_row(http, events, bad_rows, headers, body_key, message, tokenizer):
    body = {"writeKey": body_key} if body_key else {}
    r = post_batch(http, [ev("unauth")], headers=headers, **body)
    assert r.status_code == 401
    assert r.json() == {"success": False, "code": "unauthorized", "message": message}
    # the server keeps serving; no event of the rejected request was stored
    assert post_batch(http, [ev("after-401")]).status_code == 200
    assert ids(events.rows()) == ["after-401"]
    # one auth_failure bad row, source unknown (null); a presented key only as its token
    [bad] = bad_rows.rows()
    assert (bad["error_type"], bad["source"], bad["protocol"]) == ("auth_failure", None, "segment")
    assert bad["reason"].startswith(message) and "no-such-key" not in json.dumps(bad, default=str)
    if "unknown" in message:
        assert tokenizer("no-such-key") in bad["reason"]
    assert bad["payload"] is None or UID not in bad["payload"]


def test_source_added_while_running_is_seen(http, home, events):
    key = home.add_source("late-source")
    r = post_batch(http, [ev("late-1")], headers=basic(key))
    assert r.status_code == 200, r.text
    assert [r["source"] for r in events.rows()] == ["late-source"]


def test_malformed_json_is_400_and_a_bad_row(http, events, bad_rows):
    body = b'{"batch": [{"type": "track", "userId": "' + UID.encode() + b'", "event": "x"'
    r = http.post("/v1/batch", content=body, headers=basic(WRITE_KEY))
    assert r.status_code == 400
    assert r.json() == {"success": False, "code": "decode_failure", "message": "Malformed JSON: input data was truncated"}
    [bad] = bad_rows.rows()
    assert (bad["error_type"], bad["reason"], bad["source"]) == ("decode_failure", "Malformed JSON: input data was truncated", SOURCE)
    assert UID not in bad["payload"] and bad["payload"].startswith('{"batch": [{"type": "track", "userId": "')
    assert post_batch(http, [ev("after-400")]).status_code == 200
    assert ids(events.rows()) == ["after-400"]


def test_body_over_500kb_is_413_and_a_1kb_bad_row(http, events, bad_rows):
    batch = [ev(f"big-{i}", properties={"pad": "p" * 20_000}) for i in range(30)]  # ~600 KB, each event < 32 KB
    r = post_batch(http, batch)
    assert r.status_code == 413
    assert r.json() == {"success": False, "code": "size_violation", "message": "Request body exceeds 512000 bytes (500 KB limit per request)"}
    [bad] = bad_rows.rows()
    assert bad["error_type"] == "size_violation" and len(bad["payload"]) <= 1024 and UID not in bad["payload"]
    assert events.rows() == []
    assert post_batch(http, [ev("after-413")]).status_code == 200
    assert ids(events.rows()) == ["after-413"]


def test_unauthenticated_oversize_body_is_413_and_not_recorded(http, bad_rows):
    r = http.post("/v1/batch", content=b'{"writeKey": "x", "batch": [' + b" " * 600_000 + b"]}")
    assert r.status_code == 413 and r.json()["code"] == "size_violation"
    assert bad_rows.rows() == []  # no source to attribute it to (like a 401)


def test_gzip_bomb_is_413_without_inflating_it(http, bad_rows):
    # 50 MB of spaces inside valid JSON, ~50 KB on the wire.
    raw = b'{"batch": [' + b" " * 50_000_000 + b"]}"
    body = gzip.compress(raw, compresslevel=9)
    r = http.post("/v1/batch", content=body, headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert r.json()["message"] == "Decompressed request body exceeds 512000 bytes (500 KB limit per request)"
    [bad] = bad_rows.rows()
    assert bad["error_type"] == "size_violation" and len(bad["payload"]) <= 1024


def test_corrupt_gzip_is_400(http, bad_rows):
    body = gzip.compress(json.dumps({"batch": [ev("gz-bad")]}).encode())
    r = http.post("/v1/batch", content=body[:-12], headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"})
    assert r.status_code == 400 and r.json()["code"] == "decode_failure"
    assert "gzip" in r.json()["message"]
    r = http.post("/v1/batch", content=b"not gzip at all", headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"})
    assert r.status_code == 400 and r.json()["message"].startswith("Invalid gzip body:")
    r = http.post("/v1/batch", content=b"{}", headers={**basic(WRITE_KEY), "Content-Encoding": "br"})
    assert r.status_code == 415 and r.json()["code"] == "decode_failure"
    assert len(bad_rows.rows()) == 3


@pytest.mark.parametrize("member_split", [False, True])
def test_gzip_body_is_accepted(http, events, member_split):
    batch = [ev(f"gz-{member_split}-{i}") for i in range(20)]
    raw = json.dumps({"batch": batch}).encode()
    body = gzip.compress(raw[:100]) + gzip.compress(raw[100:]) if member_split else gzip.compress(raw)
    r = http.post("/v1/batch", content=body, headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 20
    assert ids(events.rows()) == ids(batch)


def test_event_over_32kb_in_a_batch_is_one_bad_row(http, events, bad_rows):
    batch = [ev("s-0"), ev("s-big", properties={"pad": "z" * 40_000}), ev("s-2")]
    r = post_batch(http, batch)
    assert r.status_code == 200
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    [err] = body["errors"]
    assert err["index"] == 1 and err["code"] == "size_violation"
    assert err["message"].startswith("Event of ") and err["message"].endswith("exceeds the limit of 32768 bytes (32 KB) per event - at `$.batch[1]`")
    assert ids(events.rows()) == ["s-0", "s-2"]
    [bad] = bad_rows.rows()
    assert bad["error_type"] == "size_violation" and bad["reason"] == err["message"]
    # cut at 32 KB; the word at the cut loses up to its last 256 characters (half a value is never kept)
    assert 32 * 1024 - 256 <= len(bad["payload"]) < 32 * 1024 and UID not in bad["payload"]


def test_mixed_batch_counts_errors_and_bad_rows(http, events, bad_rows):
    batch = [
        ev("m-0"),
        ev("m-1", type="purchase"),
        ev("m-2"),
        ev("m-3", event=None),
        ev("m-4", userId=None),
        ev("m-5", timestamp="last tuesday"),
        ev("m-6", type="identify", traits={"plan": "pro"}),
    ]
    r = post_batch(http, batch)
    assert r.status_code == 200
    assert r.json() == {
        "success": True,
        "accepted": 3,
        "rejected": 4,
        "errors": [
            {"index": 1, "code": "envelope_violation", "message": "Invalid enum value 'purchase' - at `$.batch[1].type` (type must be one of track, identify, alias, page, screen, group)"},
            {"index": 3, "code": "envelope_violation", "message": "Object missing required field `event` (track events need a non-empty event name) - at `$.batch[3]`"},
            {"index": 4, "code": "envelope_violation", "message": "Object missing required field `userId` or `anonymousId` (at least one must be a non-empty string) - at `$.batch[4]`"},
            {"index": 5, "code": "envelope_violation", "message": "Invalid RFC3339 encoded datetime - at `$.batch[5].timestamp`"},
        ],
    }
    assert ids(events.rows()) == ["m-0", "m-2", "m-6"]
    bad = bad_rows.rows()
    assert [b["reason"] for b in bad] == [e["message"] for e in r.json()["errors"]]
    assert [json.loads(b["payload"])["messageId"] for b in bad] == ["m-1", "m-3", "m-4", "m-5"]
    assert all(UID not in b["payload"] and b["source"] == SOURCE for b in bad)


def test_batch_with_only_invalid_events_is_400(http, events, bad_rows):
    r = post_batch(http, [ev("x-0", event=""), ev("x-1", type=None)])
    assert r.status_code == 400
    body = r.json()
    assert (body["success"], body["accepted"], body["rejected"], body["code"]) == (False, 0, 2, "envelope_violation")
    assert body["message"] == "All 2 events rejected; first (index 0): Object missing required field `event` (track events need a non-empty event name) - at `$.batch[0]`"
    assert [e["index"] for e in body["errors"]] == [0, 1]
    assert events.rows() == [] and len(bad_rows.rows()) == 2


def test_batch_envelope_of_wrong_shape_is_400(http, bad_rows):
    r = http.post("/v1/batch", content=json.dumps({"batch": {"type": "track"}, "writeKey": WRITE_KEY}))
    assert r.status_code == 400
    assert r.json() == {"success": False, "code": "envelope_violation", "message": "Expected `array`, got `object` - at `$.batch`"}
    [bad] = bad_rows.rows()  # attributed through the body's writeKey
    assert bad["source"] == SOURCE


SINGLE = {
    "track": {"event": "Signed Up", "properties": {"plan": "pro"}},
    "identify": {"traits": {"email_domain": "example.org"}},
    "page": {"name": "Pricing"},
    "screen": {"name": "Settings"},
    "alias": {"previousId": "anon-123"},
    "group": {"groupId": "acme", "traits": {"size": 5}},
}


@pytest.mark.parametrize("typ", EVENT_TYPES)
def test_every_single_event_endpoint(http, events, bad_rows, typ, tokenizer):
    body = {"userId": UID, "messageId": f"single-{typ}", **SINGLE[typ]}
    r = http.post(f"/v1/{typ}", json=body, headers=basic(WRITE_KEY))
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "accepted": 1, "rejected": 0, "errors": []}
    [row] = events.rows()
    assert (row["event_id"], row["event_type"], row["user_id"]) == (f"single-{typ}", typ, tokenizer(UID))
    # an invalid single event: 400 naming the field; nothing stored but its bad row
    r = http.post(f"/v1/{typ}", json={"messageId": "nobody", **SINGLE[typ]}, headers=basic(WRITE_KEY))
    assert r.status_code == 400
    assert r.json()["message"] == "Event rejected: Object missing required field `userId` or `anonymousId` (at least one must be a non-empty string) - at `$`"
    assert r.json()["code"] == "envelope_violation"
    assert len(events.rows()) == 1 and len(bad_rows.rows()) == 1


def test_analytics_js_short_paths_and_body_write_key(http, events):
    """analytics.js posts text/plain bodies with the write key inside to /v1/<letter>."""
    web_ctx = {"library": {"name": "analytics.js", "version": "npm:next-1.70.0"}, "userAgent": "Mozilla/5.0"}
    body = {"type": "page", "name": "Home", "anonymousId": "a-web", "messageId": "ajs-p", "writeKey": WRITE_KEY, "context": web_ctx}
    r = http.post("/v1/p", content=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    batch = {"batch": [ev("ajs-t", context=web_ctx)], "writeKey": WRITE_KEY}
    assert http.post("/v1/b", content=json.dumps(batch), headers={"Content-Type": "text/plain"}).status_code == 200
    rows = sorted(events.rows(), key=lambda r: r["event_id"])
    assert [(r["event_id"], r["event_type"], r["surface"], r["platform"]) for r in rows] == [
        ("ajs-p", "page", "web", "web"), ("ajs-t", "track", "web", "web"),
    ]


def test_single_endpoint_rejects_other_type(http):
    r = http.post("/v1/track", json={"type": "page", "userId": "u", "name": "x"}, headers=basic(WRITE_KEY))
    assert r.status_code == 400
    assert r.json()["message"] == "Event rejected: Field `type` is 'page' but the endpoint is /v1/track - at `$.type`"


def test_deflate_raw_zlib_is_not_gzip(http):
    r = http.post("/v1/batch", content=zlib.compress(b'{"batch":[]}'), headers={**basic(WRITE_KEY), "Content-Encoding": "gzip"})
    assert r.status_code == 400


def test_cors_preflight(http):
    r = http.options("/v1/batch", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_answer_only_after_durable(http, collector):
    """A 200 means the events are committed: a fresh reader sees them immediately."""
    t0 = time.time()
    before = collector.log.end_offsets("events")
    r = post_batch(http, [ev(f"d-{i}", userId=f"d-{i}") for i in range(100)])
    assert r.status_code == 200
    after = collector.log.end_offsets("events")
    assert sum(after.values()) - sum(before.values()) == 100
    assert time.time() - t0 < 5
