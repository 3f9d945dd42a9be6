"""Malformed requests against a real collector: each is a 4xx naming the field and the rule,
never a 500; valid neighbours in a batch are kept; the response stays small."""

from __future__ import annotations

import base64
import json
import socket
import urllib.parse

import pytest

from headwater.collector import posthog, segment
from headwater.collector.wire import DEPTH_CUT, MAX_RESPONSE_ERRORS, Limits, Wire, WireError, cut_deep
from headwater.events import DECODE_FAILURE, ENVELOPE_VIOLATION, SIZE_VIOLATION

from .conftest import RECEIVED_US, WRITE_KEY, basic

MAX_DEPTH = Limits().max_depth
MAX_EVENTS = Limits().max_events


def deep_message(depth: int, mid: str, *, posthog_format: bool = False) -> str:
    """A message nested exactly ``depth`` levels (the message object is level 1)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)
    if posthog_format:
        return f'{{"event":"deep","distinct_id":"d","uuid":"{mid}","properties":{{"a":{inner}}}}}'
    return f'{{"type":"track","event":"deep","userId":"u","messageId":"{mid}","properties":{{"a":{inner}}}}}'


def ok_message(mid: str) -> str:
    return json.dumps({"type": "track", "event": "ok", "userId": "u", "messageId": mid, "timestamp": "2024-03-01T10:00:00Z"})


def ph_event(uuid: str, **kw) -> dict:
    return {"event": "ok", "distinct_id": "d", "uuid": uuid, "timestamp": "2024-03-01T10:00:00Z", **kw}


def ph_post(http, body, path="/batch/", **kw):
    return http.post(path, content=json.dumps(body) if not isinstance(body, (bytes, str)) else body, **kw)


# -- nesting depth -----------------------------------------------------------------------
def test_messages_nested_too_deep_are_bad_rows_and_their_neighbours_are_kept(http, events, bad_rows):
    batch = [ok_message("ok-1"), deep_message(5000, "deep-5000"), deep_message(MAX_DEPTH + 1, "deep-65"),
             deep_message(MAX_DEPTH, "at-limit"), ok_message("ok-2")]
    r = http.post("/v1/batch", content="{\"batch\":[" + ",".join(batch) + "]}", headers=basic(WRITE_KEY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (3, 2)
    assert [(e["index"], e["code"]) for e in body["errors"]] == [(1, ENVELOPE_VIOLATION), (2, ENVELOPE_VIOLATION)]
    assert body["errors"][0]["message"] == f"Nesting deeper than {MAX_DEPTH} levels (collector.max_depth) - at `$.batch[1]`"
    assert sorted(e["event_id"] for e in events.rows()) == ["at-limit", "ok-1", "ok-2"]
    stored = bad_rows.rows()
    assert [b["error_type"] for b in stored] == [ENVELOPE_VIOLATION] * 2
    assert all("collector.max_depth" in b["reason"] and len(b["payload"]) < 1000 for b in stored)


def test_deep_single_messages_and_batch_context_are_400_naming_the_limit(http, events):
    r = http.post("/v1/track", content=deep_message(3000, "s"), headers=basic(WRITE_KEY))
    assert r.status_code == 400 and "collector.max_depth" in r.json()["message"], r.text
    ctx = "[" * 3000 + "]" * 3000
    r = http.post("/v1/batch", content=f'{{"batch":[{ok_message("c")}],"context":{{"x":{ctx}}}}}', headers=basic(WRITE_KEY))
    assert r.status_code == 400 and r.json()["code"] == ENVELOPE_VIOLATION and "`$.context`" in r.json()["message"], r.text
    r = ph_post(http, deep_message(3000, "p", posthog_format=True), "/e/?token=" + WRITE_KEY)
    assert r.status_code == 400 and "collector.max_depth" in r.json()["message"], r.text
    assert events.rows() == []


@pytest.mark.parametrize("shape", ["array", "batch"])
def test_posthog_deep_events_are_bad_rows_and_neighbours_kept(http, events, shape):
    evs = [json.dumps(ph_event("ph-ok")), deep_message(4000, "ph-deep", posthog_format=True), deep_message(MAX_DEPTH, "ph-64", posthog_format=True)]
    array = "[" + ",".join(evs) + "]"
    body = array if shape == "array" else f'{{"api_key":"{WRITE_KEY}","batch":{array}}}'
    r = ph_post(http, body, "/batch/?token=" + WRITE_KEY if shape == "array" else "/batch/")
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["rejected"]) == (2, 1)
    assert sorted(e["event_id"] for e in events.rows()) == ["ph-64", "ph-ok"]


def test_cut_deep_ignores_brackets_inside_strings():
    body = b'{"a":"[[[[[[\\"[[[[","b":"\\\\","c":[[1]]}'
    assert cut_deep(body, 2) == b'{"a":"[[[[[[\\"[[[[","b":"\\\\","c":[' + DEPTH_CUT + b"]}"
    assert cut_deep(body, 3) is body
    assert cut_deep(b"[" * 10, 3) == b"[[[" + DEPTH_CUT  # malformed stays malformed


# -- element count and response size ------------------------------------------------------
def test_more_messages_than_the_limit_is_413_with_one_bad_row(http, events, bad_rows):
    body = b'{"batch":[' + b",".join([b"1"] * 240_000) + b"]}"  # ~480 KB
    r = http.post("/v1/batch", content=body, headers=basic(WRITE_KEY))
    assert r.status_code == 413, r.text
    assert r.json()["code"] == SIZE_VIOLATION and f"limit of {MAX_EVENTS} per request (collector.max_events_per_request)" in r.json()["message"]
    assert len(r.content) < 1000
    [bad] = bad_rows.rows()
    assert bad["error_type"] == SIZE_VIOLATION and len(bad["payload"]) <= 1024
    r = ph_post(http, [{}] * (MAX_EVENTS + 1), "/batch/?token=" + WRITE_KEY)
    assert r.status_code == 413 and "collector.max_events_per_request" in r.json()["message"], r.text
    assert events.rows() == []


def test_response_lists_at_most_100_errors_and_counts_the_rest(http, events, bad_rows):
    n = MAX_EVENTS - 1
    r = http.post("/v1/batch", content=b'{"batch":[' + ok_message("kept").encode() + b"," + b",".join([b"1"] * n) + b"]}",
                  headers=basic(WRITE_KEY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"], len(body["errors"]), body["errors_truncated"]) == (1, n, MAX_RESPONSE_ERRORS, n - MAX_RESPONSE_ERRORS)
    assert len(r.content) < 20_000
    assert [e["event_id"] for e in events.rows()] == ["kept"]
    assert len(bad_rows.rows()) == n  # every rejection is still a bad row


# -- numbers and query values -------------------------------------------------------------
@pytest.mark.parametrize("offset", [10**17, -(10**17), 2**63 + 1, 2**64 + 1])
def test_posthog_huge_offset_is_a_bad_row_naming_the_field(http, events, offset):
    body = {"api_key": WRITE_KEY, "batch": [ph_event("off-ok"), {"event": "x", "distinct_id": "d", "uuid": "off-bad", "offset": offset}]}
    r = ph_post(http, body)
    assert r.status_code == 200, r.text
    [err] = r.json()["errors"]
    assert err["index"] == 1 and "offset" in err["message"], err
    assert [e["event_id"] for e in events.rows()] == ["off-ok"]


@pytest.mark.parametrize("value", ["99999999999999999999", "²", "-5", "1e5", "١٢٣", "9" * 5000, "253402300800000"])
def test_posthog_bad_send_time_query_is_400_naming_it(http, events, value):
    r = ph_post(http, ph_event("q"), "/e/?" + urllib.parse.urlencode({"_": value, "token": WRITE_KEY}))
    assert r.status_code == 400, r.text
    assert r.json()["code"] == ENVELOPE_VIOLATION and "Query parameter `_`" in r.json()["message"]
    assert events.rows() == []


@pytest.mark.parametrize("value", ["1709294400000", "1709294400"])  # ms; seconds (old SDKs) are ignored
def test_posthog_valid_send_time_query_is_taken(http, events, value):
    r = ph_post(http, ph_event("q-" + value), f"/e/?_={value}&token={WRITE_KEY}")
    assert r.status_code == 200, r.text
    assert [e["event_id"] for e in events.rows()] == ["q-" + value]


@pytest.mark.parametrize("sent_at", ["yesterday", "2024-13-01T00:00:00Z", "+275760-09-13T00:00:00Z"])
def test_posthog_unreadable_sent_at_is_400_naming_it(http, sent_at):
    r = ph_post(http, {"api_key": WRITE_KEY, "sent_at": sent_at, "batch": [ph_event("s")]})
    assert r.status_code == 400 and "`sent_at`" in r.json()["message"], r.text


def test_posthog_form_bodies(http, events):
    payload = base64.b64encode(json.dumps([ph_event("form-ok")]).encode()).decode()
    form = {"content-type": "application/x-www-form-urlencoded"}
    assert ph_post(http, "data=" + urllib.parse.quote(payload), f"/e/?token={WRITE_KEY}", headers=form).status_code == 200
    for bad in ["data=%E2%82%AC", "data=%FF%FE", "nodata=1", "data=", "data=" + "%" * 1000, "data=eyJ=&data=1"]:
        r = ph_post(http, bad, f"/e/?token={WRITE_KEY}", headers=form)
        assert r.status_code == 400 and r.json()["code"] in (DECODE_FAILURE, ENVELOPE_VIOLATION), (bad, r.text)
    assert [e["event_id"] for e in events.rows()] == ["form-ok"]


# -- headers ------------------------------------------------------------------------------
def test_non_ascii_authorization_header_is_401(http):
    r = http.post("/v1/batch", content=b'{"batch":[]}', headers={"Authorization": "Basic \xe9\xb2".encode("latin-1")})
    assert r.status_code == 401, r.text


def test_non_ascii_content_length_is_not_a_500(collector):
    body = b'{"batch":[]}'
    head = (f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\xb2\r\nConnection: close\r\n"
            f"Authorization: {basic(WRITE_KEY)['Authorization']}\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", collector.port), timeout=10) as s:
        s.sendall(head + body)
        status = s.recv(64).split(b" ")[1]
    assert status.startswith(b"4"), status


# -- the catch-all --------------------------------------------------------------------------
def test_an_unexpected_error_in_one_message_rejects_only_it(http, events):
    # A context the lenient path cannot decode (a number out of range) used to raise out of
    # normalize (a 500 for the whole request); the catch-all rejects that message alone.
    bad = '{"type":"track","event":"e","userId":"u","messageId":"odd","context":{"library":"x","n":1e999}}'
    r = http.post("/v1/batch", content=f'{{"batch":[{ok_message("fine")},{bad}]}}', headers=basic(WRITE_KEY))
    assert r.status_code == 200, r.text
    [err] = r.json()["errors"]
    assert err["index"] == 1 and err["code"] == DECODE_FAILURE and "Number out of range" in err["message"], err
    assert [e["event_id"] for e in events.rows()] == ["fine"]


def test_an_unexpected_error_while_parsing_is_a_400(tokenizer):
    def parse(body, query, content_type, limits):
        raise KeyError("boom")

    wire = Wire("test", parse=parse, normalize=segment.normalize, write_key_of=lambda b, q: None, id_fields=(), key_help="", key_field="")
    with pytest.raises(WireError) as e:
        wire.read(b"{}", {}, "", Limits())
    assert e.value.status == 400 and e.value.code == DECODE_FAILURE and "KeyError" in e.value.message


def test_normalize_contains_an_unexpected_error(monkeypatch, tokenizer):
    real = segment._surface_platform

    def flaky(ctx):
        if b"boom" in ctx:
            raise RuntimeError("boom")
        return real(ctx)

    monkeypatch.setattr(segment, "_surface_platform", flaky)
    env = segment.parse_request(f'{{"batch":[{ok_message("a")},{ok_message("b")[:-1]},"context":{{"boom":1}}}}]}}'.encode())
    n = segment.normalize(env, source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    assert n.events.column("event_id").to_pylist() == ["a"]
    [bad] = n.bad_rows
    assert (bad.error_type, bad.rule, bad.field) == (DECODE_FAILURE, "internal", "$.batch[1]")
    assert bad.reason == "Event could not be read (RuntimeError: boom) - at `$.batch[1]`"


def test_posthog_normalize_contains_an_unexpected_error(monkeypatch, tokenizer):
    monkeypatch.setattr(posthog, "surface_of", lambda lib: (_ for _ in ()).throw(RuntimeError("boom")) if lib == "boom" else "server")
    req = posthog.parse_request(json.dumps([ph_event("a"), ph_event("b", properties={"$lib": "boom"})]).encode())
    n = posthog.normalize(req, source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    assert n.events.column("event_id").to_pylist() == ["a"]
    assert [(b.error_type, b.rule) for b in n.bad_rows] == [(DECODE_FAILURE, "internal")]


def test_reasons_quoting_a_value_are_cut(http, bad_rows):
    odd = {"type": "t" * 8000, "event": "e", "userId": "u"}
    r = http.post("/v1/batch", content=json.dumps({"batch": [odd] * 50}), headers=basic(WRITE_KEY))
    assert r.status_code == 400 and len(r.content) < 64 * 1024, len(r.content)
    assert all(len(e["message"]) <= 500 for e in r.json()["errors"])
    assert all(len(b["reason"]) <= 500 for b in bad_rows.rows())
    r = http.post("/v1/batch", content=b'{"batch":[]}', headers={**basic(WRITE_KEY), "content-encoding": "x" * 50_000})
    assert r.status_code == 415 and len(r.content) < 1000
