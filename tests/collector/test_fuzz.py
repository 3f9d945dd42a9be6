"""Property-based fuzzing of request bodies against a running collector (hypothesis).

Bodies mix valid messages with hostile ones — deep nesting, huge numbers, invalid UTF-8,
duplicate keys, far-past and far-future timestamps, random JSON — in every body shape the
collector reads (Segment batch / single; PostHog array / batch / single, as JSON, base64,
form ``data=``, gzip in the body or as ``Content-Encoding``), plus gzip bombs, oversized
headers, wrong content types and random bytes. Properties of every answer: never a 5xx; at
most 64 KB; a 200 accounts for every message (accepted + rejected); the valid messages of a
request answered 200 are in the event log, and exactly the accepted ones are.
"""

from __future__ import annotations

import base64
import gzip
import json
import urllib.parse
import uuid
from typing import NamedTuple

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.collector.wire import Limits
from tests.helpers import LogTail, start_collector

from .conftest import HMAC_KEY, basic

WRITE_KEY = "wk-fuzz-bodies-0123456789abcdef"
MAX_RESPONSE_BYTES = 64 * 1024
MAX_DEPTH = Limits().max_depth
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                derandomize=True)


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    env = {"HEADWATER_HMAC_KEY": HMAC_KEY.hex(), "HEADWATER_COLLECTOR_AUTH_FAILURES_PER_MINUTE": "0",
           "HEADWATER_COLLECTOR_RATE_LIMIT_PER_KEY": "0"}
    with start_collector(tmp_path_factory.mktemp("home"), write_key=WRITE_KEY, source="fuzz", env=env) as c:
        yield c


@pytest.fixture(scope="module")
def http(collector):
    with httpx.Client(base_url=collector.url, timeout=30) as client:
        yield client


def check(r: httpx.Response) -> dict | None:
    """The properties of every answer; the JSON body when there is one."""
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert len(r.content) <= MAX_RESPONSE_BYTES, len(r.content)
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else None


class Part(NamedTuple):
    """One message of a fuzzed request: its JSON text, its id, and whether it must be
    accepted (True), must be rejected (False), or may be either (None)."""

    raw: bytes
    id: str | None = None
    expect: bool | None = None


def check_stored(r: httpx.Response, tail: LogTail, parts: list[Part]) -> None:
    """A 200 accounts for every message, stores every message that must be accepted and none
    that must be rejected, and exactly as many as it says; any other answer stores nothing."""
    body = check(r)
    stored = [e["event_id"] for e in tail.rows()]
    if r.status_code == 200:
        assert body["accepted"] + body["rejected"] == len(parts), body
        assert len(stored) == body["accepted"], (stored, body)
        assert {p.id for p in parts if p.expect} <= set(stored), (parts, stored, body)
        assert not {p.id for p in parts if p.expect is False} & set(stored), (parts, stored, body)
    else:
        assert stored == [], (stored, body)


# -- strategies ---------------------------------------------------------------------------
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
json_scalar = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | text
json_value = st.recursive(json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(text, c, max_size=4), max_leaves=12)
sane_time = st.datetimes(min_value=__import__("datetime").datetime(1971, 1, 1), max_value=__import__("datetime").datetime(2100, 1, 1))
# Event times and whether an otherwise valid event stamped so is accepted (None: either):
# before 1970 or unreadable → rejected; far future → replaced by the receive time, accepted.
ODD_TIMES = {"0001-01-01T00:00:00Z": False, "1969-12-31T23:59:59Z": False, "9999-12-31T23:59:59Z": True, "2100-01-01T00:00:00Z": True,
             "+10000-01-01T00:00:00Z": False, "2024-02-30T00:00:00Z": False, "not a time": False, "": False, "1e999": False,
             "99999999999999999999": False, "1970-01-01T00:00:00Z": True}
odd_time = st.sampled_from(sorted(ODD_TIMES))
huge_number = st.sampled_from(["1e999", "-1e999", "123456789012345678901234567890", "-99999999999999999999999", "1e-999",
                               "18446744073709551616", "9223372036854775808", "0.0000000000000000000000000001"])


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Array levels inside `properties` (message = level 1, properties = 2): around the limit,
# and deep enough to overflow a recursive decoder.
deep_levels = st.integers(MAX_DEPTH - 3, MAX_DEPTH) | st.integers(900, 5000)


def fresh_id() -> str:
    return uuid.uuid4().hex


@st.composite
def valid_segment(draw) -> Part:
    mid = fresh_id()
    m = {"type": "track", "event": draw(text), "userId": draw(text), "messageId": mid,
         "properties": draw(st.dictionaries(text, json_value, max_size=5)), "timestamp": draw(sane_time).isoformat() + "Z"}
    return Part(json.dumps(m).encode(), mid, True)


@st.composite
def hostile_segment(draw) -> Part:
    """A syntactically balanced message (the batch stays JSON) that may be invalid."""
    kind = draw(st.sampled_from(["deep", "huge", "utf8", "dup", "time", "random", "bare"]))
    mid = fresh_id()
    head = '{"type":"track","event":"e","userId":"u","messageId":"%s"' % mid
    if kind == "deep":
        levels = draw(deep_levels)
        return Part((head + ',"properties":{"a":%s}}' % nested(levels)).encode(), mid, levels + 2 <= MAX_DEPTH)
    if kind == "huge":
        field = draw(st.sampled_from(["properties", "context", "messageId", "userId", "timestamp", "type"]))
        value = draw(huge_number)
        return Part((head + f',"{field}":' + (f'{{"n":{value}}}' if field in ("properties", "context") else value) + "}").encode(), mid)
    if kind == "utf8":
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
        return Part(head.encode() + b',"properties":{"s":"' + bad + b'"}}', mid, False)
    if kind == "dup":
        return Part((head + ',"type":%s,"userId":null,"event":"" ,"event":"again"}' % json.dumps(draw(st.sampled_from(["identify", "bogus", "track"])))).encode(), mid)
    if kind == "time":
        field, value = draw(st.sampled_from(["timestamp", "originalTimestamp", "sentAt"])), draw(odd_time)
        return Part((head + f',"{field}":{json.dumps(value)}}}').encode(), mid, ODD_TIMES[value] if field == "timestamp" else None)
    if kind == "random":
        return Part(json.dumps(draw(json_value)).encode())
    return Part(str(draw(st.integers(-(2**80), 2**80))).encode())


segment_batches = st.lists(st.one_of(valid_segment(), hostile_segment()), min_size=1, max_size=12)


@given(segment_batches, st.sampled_from(["application/json", "text/plain", "", "application/xml", "application/x-www-form-urlencoded"]),
       st.booleans())
@FUZZ
def test_segment_batches(http, collector, parts, content_type, gzipped):
    body = b'{"batch":[' + b",".join(p.raw for p in parts) + b"]}"
    headers = {**basic(WRITE_KEY), "content-type": content_type}
    if gzipped:
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    tail = LogTail(collector.log, "events")
    check_stored(http.post("/v1/batch", content=body, headers=headers), tail, parts)


@given(st.one_of(valid_segment(), hostile_segment()), st.sampled_from(["track", "t", "identify", "page"]))
@FUZZ
def test_segment_single_messages(http, collector, part, path):
    if path not in ("track", "t"):
        part = part._replace(expect=False if part.expect else part.expect)  # a track message on another endpoint is rejected
    tail = LogTail(collector.log, "events")
    check_stored(http.post(f"/v1/{path}", content=part.raw, headers=basic(WRITE_KEY)), tail, [part])


# -- PostHog ------------------------------------------------------------------------------
@st.composite
def valid_posthog(draw) -> Part:
    uid = str(uuid.uuid4())
    ev = {"event": draw(text), "distinct_id": draw(text | st.integers(0, 2**40)), "uuid": uid,
          "properties": {**draw(st.dictionaries(text.filter(lambda k: k not in ("token", "$token", "api_key", "distinct_id")), json_value, max_size=4)),
                         "$lib": draw(st.sampled_from(["web", "posthog-python", "posthog-ios"]))}}
    if draw(st.booleans()):
        ev["timestamp"] = draw(sane_time).isoformat() + "Z"
    else:
        ev["offset"] = draw(st.integers(0, 10**9))
    return Part(json.dumps(ev).encode(), uid, True)


@st.composite
def hostile_posthog(draw) -> Part:
    kind = draw(st.sampled_from(["deep", "offset", "time", "huge", "random", "dup", "missing"]))
    uid = str(uuid.uuid4())
    head = '{"event":"e","distinct_id":"d","uuid":"%s"' % uid
    if kind == "deep":
        levels = draw(deep_levels)
        return Part((head + ',"properties":{"a":%s}}' % nested(levels)).encode(), uid, levels + 2 <= MAX_DEPTH)
    if kind == "offset":
        return Part((head + ',"offset":%d}' % draw(st.sampled_from([10**17, -(10**17), 2**63, 2**64, -(2**63) - 1, 10**30]))).encode(), uid, False)
    if kind == "time":
        value = draw(odd_time)
        return Part((head + ',"timestamp":%s}' % json.dumps(value)).encode(), uid, ODD_TIMES[value])
    if kind == "huge":
        return Part((head + ',"properties":{"n":%s}}' % draw(huge_number)).encode(), uid)
    if kind == "dup":
        return Part((head + ',"event":"","distinct_id":null}').encode(), uid)
    if kind == "missing":
        return Part(json.dumps({"properties": {"x": 1}, "uuid": uid}).encode(), uid, False)
    return Part(json.dumps(draw(json_value)).encode())


def encode_posthog(payload: bytes, how: str) -> tuple[bytes, dict, dict]:
    """(body, headers, query) of a PostHog payload sent ``how``."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    if how == "json":
        return payload, {"content-type": "application/json"}, {}
    if how == "base64":
        return base64.b64encode(payload), {"content-type": "text/plain"}, {}
    if how == "form":
        return b"data=" + urllib.parse.quote(base64.b64encode(payload)).encode(), form, {}
    if how == "form-json":
        return b"data=" + urllib.parse.quote(payload).encode(), form, {}
    if how == "gzip-js":
        return gzip.compress(payload), {"content-type": "text/plain"}, {"compression": "gzip-js"}
    if how == "gzip-base64-form":
        return b"data=" + urllib.parse.quote(base64.b64encode(gzip.compress(payload))).encode(), form, {"compression": "gzip-js"}
    assert how == "content-encoding"
    return gzip.compress(payload), {"content-type": "application/json", "content-encoding": "gzip"}, {}


ENCODINGS = ["json", "base64", "form", "form-json", "gzip-js", "gzip-base64-form", "content-encoding"]


@given(st.lists(st.one_of(valid_posthog(), hostile_posthog()), min_size=1, max_size=10), st.sampled_from(["array", "batch", "single"]),
       st.sampled_from(ENCODINGS), st.sampled_from(["/batch/", "/e/", "/capture", "/i/v0/e/", "/track/", "/engage/"]))
@FUZZ
def test_posthog_every_body_shape(http, collector, parts, shape, how, path):
    if shape == "single":
        parts = parts[:1]
    array = b"[" + b",".join(p.raw for p in parts) + b"]"
    payload = {"array": array, "batch": b'{"api_key":"%s","batch":%s}' % (WRITE_KEY.encode(), array), "single": parts[0].raw}[shape]
    body, headers, query = encode_posthog(payload, how)
    query = {**query, "token": WRITE_KEY} if shape != "batch" else query
    tail = LogTail(collector.log, "events")
    check_stored(http.post(path, content=body, headers=headers, params=query), tail, parts)


@given(st.sampled_from(["lz64", "gzip-js", "base64", "", "\u00b2", "x" * 300]), st.sampled_from(["_", "ver", "compression", "ip", "api_key"]),
       st.sampled_from(["99999999999999999999", "\u00b2", "-5", "1e5", "\u0661\u0662", "9" * 5000, "1709294400000", "0"])
       | st.text(max_size=40) | st.integers(-(2**80), 2**80).map(str))
@FUZZ
def test_posthog_query_values(http, collector, compression, name, value):
    query = {"token": WRITE_KEY, "compression": compression, name: value}
    r = http.post("/e/", content=json.dumps({"event": "q", "distinct_id": "d"}), params=query)
    body = check(r)
    assert r.status_code in (200, 400, 401), r.text
    if r.status_code == 400:
        assert body["message"], body


# -- gzip bombs, headers, random bytes -------------------------------------------------------
_BOMBS = {n: gzip.compress(b"\0" * n, 9) for n in (600 * 1024, 8 * 1024 * 1024, 64 * 1024 * 1024)}


@given(st.sampled_from(sorted(_BOMBS)), st.sampled_from(["content-encoding", "posthog-magic", "posthog-base64-form"]))
@settings(FUZZ, max_examples=9)
def test_gzip_bombs_are_413(http, collector, size, how):
    bomb = _BOMBS[size]
    tail = LogTail(collector.log, "events")
    if how == "content-encoding":
        r = http.post("/v1/batch", content=bomb, headers={**basic(WRITE_KEY), "content-encoding": "gzip"})
    elif how == "posthog-magic":
        r = http.post("/batch/", content=bomb, params={"token": WRITE_KEY, "compression": "gzip-js"})
    else:
        r = http.post("/e/", content=b"data=" + urllib.parse.quote(base64.b64encode(bomb)).encode(),
                      headers={"content-type": "application/x-www-form-urlencoded"}, params={"token": WRITE_KEY})
    check(r)
    assert r.status_code == 413, r.text
    assert tail.rows() == []


@given(st.sampled_from([1024, 16 * 1024, 60 * 1024]), st.sampled_from(["authorization", "x-custom", "content-type", "content-encoding", "user-agent"]),
       st.sampled_from([b"a", b"\xe9", b"\xff", b"="]))
@settings(FUZZ, max_examples=15)
def test_oversized_and_odd_headers(http, collector, size, name, fill):
    value = (b"Basic " if name == "authorization" else b"") + fill * size
    try:
        r = http.post("/v1/batch", content=b'{"batch":[]}', headers={**basic(WRITE_KEY), name: value})
    except httpx.RemoteProtocolError:  # the HTTP parser may drop a request whose headers it will not read
        return
    check(r)
    assert r.status_code in (200, 400, 401, 413, 415, 431), r.text


@given(st.binary(max_size=2048), st.sampled_from(["/v1/batch", "/v1/track", "/batch/", "/e/"]))
@FUZZ
def test_random_bytes(http, collector, body, path):
    tail = LogTail(collector.log, "events")
    r = http.post(path, content=body, headers=basic(WRITE_KEY), params={"token": WRITE_KEY} if not path.startswith("/v1") else None)
    check(r)
    assert r.status_code in (200, 400, 401, 413, 415), r.text
    if r.status_code != 200:
        assert tail.rows() == []
