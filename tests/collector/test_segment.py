"""segment.py: Segment wire format → canonical events + bad rows (pure, no server)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from headwater.collector.segment import ID_FIELDS, normalize, parse_request
from headwater.collector.wire import MAX_EVENT_BYTES, WireError
from headwater.events import (
    BAD_ROW_SCHEMA,
    DECODE_FAILURE,
    ENVELOPE_VIOLATION,
    EVENT_SCHEMA,
    SIZE_VIOLATION,
)
from headwater.ingest.badrows import bad_rows_table, redact
from headwater.ingest.canonical import EVENT_ID_NAMESPACE
from headwater.ingest.tokens import Tokenizer

from .conftest import HMAC_KEY, RECEIVED, RECEIVED_US

UTC = dt.timezone.utc
SECRET_USER, SECRET_ANON = "alice@example.com", "anon-7f3a-secret"


def run(batch: list, tokenizer: Tokenizer, *, source="web-app", received_us=RECEIVED_US, **body):
    env = parse_request(json.dumps({"batch": batch, **body}).encode())
    return normalize(env, source=source, received_at_us=received_us, tokenizer=tokenizer)


def run_single(msg: dict, path_type: str, tokenizer: Tokenizer):
    env = parse_request(json.dumps(msg).encode(), path_type)
    return normalize(env, source="web-app", received_at_us=RECEIVED_US, tokenizer=tokenizer)


def one(batch_or_msg, tokenizer, **kw) -> dict:
    n = run(batch_or_msg if isinstance(batch_or_msg, list) else [batch_or_msg], tokenizer, **kw)
    assert n.errors == [], n.errors
    assert n.events.schema == EVENT_SCHEMA
    [row] = n.events.to_pylist()
    return row


def msg(**kw) -> dict:
    base = {"userId": SECRET_USER, "anonymousId": SECRET_ANON, "messageId": "m-1", "timestamp": "2024-03-01T11:59:00Z"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


# -- canonical mapping per type --------------------------------------------------------


def test_track_maps_every_column(tokenizer):
    ctx = {"library": {"name": "analytics-python", "version": "2.3.0"}, "ip": "10.0.0.1"}
    row = one(msg(type="track", event="Order Completed", properties={"revenue": 42.5, "currency": "EUR"}, context=ctx), tokenizer)
    assert row["event_id"] == "m-1"
    assert row["event_type"] == "track"
    assert row["event_name"] == "Order Completed"
    assert row["user_id"] == tokenizer(SECRET_USER) and len(row["user_id"]) == 32
    assert row["anonymous_id"] == tokenizer(SECRET_ANON)
    assert row["event_ts"] == dt.datetime(2024, 3, 1, 11, 59, tzinfo=UTC)  # no sentAt: uncorrected
    assert row["received_at"] == RECEIVED
    assert row["source"] == "web-app"
    assert (row["surface"], row["platform"]) == ("server", "server")
    assert json.loads(row["properties"]) == {"revenue": 42.5, "currency": "EUR"}
    assert json.loads(row["context"]) == ctx
    assert row["schema_version"] is None
    assert row["ds"] == dt.date(2024, 3, 1)


def test_identify_stores_traits_and_no_name(tokenizer):
    row = one(msg(type="identify", traits={"plan": "pro", "seats": 3}), tokenizer)
    assert (row["event_type"], row["event_name"]) == ("identify", None)
    assert json.loads(row["properties"]) == {"plan": "pro", "seats": 3}


@pytest.mark.parametrize("typ", ["page", "screen"])
def test_page_and_screen_name(typ, tokenizer):
    row = one(msg(type=typ, name="Checkout", properties={"path": "/checkout"}), tokenizer)
    assert (row["event_type"], row["event_name"]) == (typ, "Checkout")
    assert json.loads(row["properties"]) == {"path": "/checkout"}
    unnamed = one(msg(type=typ), tokenizer)
    assert unnamed["event_name"] is None and unnamed["properties"] == "{}"


def test_alias_previous_id_is_tokenised(tokenizer):
    row = one(msg(type="alias", previousId=SECRET_ANON, anonymousId=None), tokenizer)
    assert row["event_type"] == "alias"
    assert json.loads(row["properties"]) == {"previousId": tokenizer(SECRET_ANON)}
    assert row["user_id"] == tokenizer(SECRET_USER) and row["anonymous_id"] is None


def test_group_keeps_group_id_and_traits(tokenizer):
    row = one(msg(type="group", groupId="acme-inc", traits={"employees": 40}), tokenizer)
    assert json.loads(row["properties"]) == {"employees": 40, "groupId": "acme-inc"}
    row = one(msg(type="group", groupId=12345), tokenizer)
    assert json.loads(row["properties"]) == {"groupId": "12345"}


def test_absent_and_null_properties_are_empty_objects(tokenizer):
    assert one(msg(type="track", event="x"), tokenizer)["properties"] == "{}"
    assert one(msg(type="track", event="x", properties=None), tokenizer)["properties"] == "{}"
    row = one([{**msg(type="track", event="x"), "properties": None, "context": None}], tokenizer)
    assert (row["properties"], row["context"]) == ("{}", "{}")


def test_properties_and_context_bytes_are_kept_as_sent(tokenizer):
    raw = b'{"batch":[{"type":"track","event":"e","userId":"u","messageId":"m","properties": {"b":1,  "a":[1, 2]},"context":{"z":true}}]}'
    n = normalize(parse_request(raw), source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    row = n.events.to_pylist()[0]
    assert row["properties"] == '{"b":1,  "a":[1, 2]}'
    assert row["context"] == '{"z":true}'


def test_batch_context_is_merged_under_message_context(tokenizer):
    row = one(
        msg(type="track", event="x", context={"library": {"name": "analytics-ios"}, "ip": "1.1.1.1"}),
        tokenizer,
        context={"ip": "9.9.9.9", "locale": "de-DE"},
    )
    assert json.loads(row["context"]) == {"library": {"name": "analytics-ios"}, "ip": "1.1.1.1", "locale": "de-DE"}
    assert row["surface"] == "mobile"


def test_single_message_endpoint_takes_type_from_path(tokenizer):
    n = run_single(msg(event="Signed Up"), "track", tokenizer)
    assert n.errors == [] and n.events.column("event_type").to_pylist() == ["track"]
    n = run_single(msg(type="identify"), "track", tokenizer)
    assert n.accepted == 0
    assert n.errors[0]["message"] == "Field `type` is 'identify' but the endpoint is /v1/track - at `$.type`"


# -- event time: Segment's clock-skew correction -----------------------------------------


def ts(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s)


@pytest.mark.parametrize(
    "body, message, expected",
    [
        # client clock 1 h ahead: sentAt 13:00 on its clock, received 12:00 → shift −1 h
        ({"sentAt": "2024-03-01T13:00:00Z"}, {"timestamp": "2024-03-01T12:59:00Z"}, "2024-03-01T11:59:00+00:00"),
        # client clock 10 min behind
        ({"sentAt": "2024-03-01T11:50:00Z"}, {"timestamp": "2024-03-01T11:49:30Z"}, "2024-03-01T11:59:30+00:00"),
        # message-level sentAt wins over the batch's
        ({"sentAt": "2024-03-01T20:00:00Z"}, {"timestamp": "2024-03-01T11:00:00Z", "sentAt": "2024-03-01T11:30:00Z"}, "2024-03-01T11:30:00+00:00"),
        # offsets are converted to UTC: 13:00+01:00 = 12:00Z
        ({"sentAt": "2024-03-01T13:00:00+01:00"}, {"timestamp": "2024-03-01T12:59:59.5+01:00"}, "2024-03-01T11:59:59.500000+00:00"),
        # naive timestamps are UTC
        ({"sentAt": "2024-03-01T12:00:00"}, {"timestamp": "2024-03-01T11:00:00"}, "2024-03-01T11:00:00+00:00"),
        # no sentAt anywhere: timestamp uncorrected
        ({}, {"timestamp": "2024-02-29T23:00:00Z"}, "2024-02-29T23:00:00+00:00"),
        # originalTimestamp when timestamp is absent, corrected likewise
        ({"sentAt": "2024-03-01T12:05:00Z"}, {"timestamp": None, "originalTimestamp": "2024-03-01T12:04:00Z"}, "2024-03-01T11:59:00+00:00"),
        # no client time at all: received_at
        ({"sentAt": "2024-03-01T12:05:00Z"}, {"timestamp": None}, "2024-03-01T12:00:00+00:00"),
    ],
)
def test_event_time_skew_correction(body, message, expected, tokenizer):
    row = one(msg(type="track", event="x", **message), tokenizer, **body)
    assert row["event_ts"] == ts(expected)
    assert row["received_at"] == RECEIVED
    assert row["ds"] == ts(expected).date()


def test_ds_is_utc_date_of_corrected_event_time(tokenizer):
    # 23:59:30 on a client whose clock is 1 min slow → 00:00:30 next day (UTC).
    received = int(dt.datetime(2024, 3, 2, 0, 1, tzinfo=UTC).timestamp()) * 1_000_000
    row = one(msg(type="track", event="x", timestamp="2024-03-01T23:59:30Z"), tokenizer, received_us=received, sentAt="2024-03-02T00:00:00Z")
    assert row["event_ts"] == dt.datetime(2024, 3, 2, 0, 0, 30, tzinfo=UTC)
    assert row["ds"] == dt.date(2024, 3, 2)


# -- event ids ------------------------------------------------------------------------------


def test_derived_event_id_is_deterministic(tokenizer):
    m = msg(type="track", event="x", messageId=None)
    a = one(m, tokenizer)["event_id"]
    b = one(m, tokenizer, sentAt="2024-03-01T12:00:00Z")["event_id"]  # SDK retry: new sentAt, same message
    assert a == b
    raw = json.dumps(m)
    assert a == str(uuid.uuid5(EVENT_ID_NAMESPACE, "web-app\n" + raw))
    assert one(m, tokenizer, source="other")["event_id"] != a
    assert one({**m, "event": "y"}, tokenizer)["event_id"] != a
    m2 = {**m, "messageId": ""}  # empty counts as absent
    assert one(m2, tokenizer)["event_id"] == str(uuid.uuid5(EVENT_ID_NAMESPACE, "web-app\n" + json.dumps(m2)))


def test_numeric_message_id_is_stringified(tokenizer):
    assert one(msg(type="track", event="x", messageId=12345), tokenizer)["event_id"] == "12345"


# -- tokenisation -----------------------------------------------------------------------


def test_no_raw_identifier_anywhere_in_the_row(tokenizer):
    batch = [
        msg(type="track", event="x", properties={"plan": "pro"}),
        msg(type="identify", traits={"plan": "pro"}),
        msg(type="alias", previousId=SECRET_ANON),
        msg(type="page", name="Home"),
        msg(type="group", groupId="g1"),
        msg(type="screen", name="Main", userId=None),
    ]
    n = run(batch, tokenizer)
    assert n.accepted == 6 and not n.errors
    for row in n.events.to_pylist():
        for v in row.values():
            assert SECRET_USER not in str(v) and SECRET_ANON not in str(v)


def test_tokens_are_keyed_stable_and_numeric_ids_stringified(tokenizer):
    assert tokenizer("u1") == Tokenizer(HMAC_KEY)("u1") != tokenizer("u2")
    assert Tokenizer(b"another key")("u1") != tokenizer("u1")
    row = one(msg(type="track", event="x", userId=42), tokenizer)
    assert row["user_id"] == tokenizer("42")
    with pytest.raises(ValueError):
        Tokenizer(b"")


# -- envelope rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message, reason",
    [
        (msg(event="x"), "Object missing required field `type` (one of track, identify, alias, page, screen, group) - at `$.batch[1]`"),
        (msg(type="purchase"), "Invalid enum value 'purchase' - at `$.batch[1].type` (type must be one of track, identify, alias, page, screen, group)"),
        (msg(type="track", event="x", userId=None, anonymousId=None), "Object missing required field `userId` or `anonymousId` (at least one must be a non-empty string) - at `$.batch[1]`"),
        (msg(type="track", event="x", userId="", anonymousId=None), "Object missing required field `userId` or `anonymousId` (at least one must be a non-empty string) - at `$.batch[1]`"),
        (msg(type="track"), "Object missing required field `event` (track events need a non-empty event name) - at `$.batch[1]`"),
        (msg(type="track", event=""), "Object missing required field `event` (track events need a non-empty event name) - at `$.batch[1]`"),
        (msg(type="alias", userId=None), "Object missing required field `previousId` (alias events need previousId and userId) - at `$.batch[1]`"),
        (msg(type="alias", previousId="p", userId=None), "Object missing required field `userId` (alias events need previousId and userId) - at `$.batch[1]`"),
        (msg(type="group"), "Object missing required field `groupId` (group events need a groupId) - at `$.batch[1]`"),
        (msg(type="track", event="x", properties=[1, 2]), "Expected `object`, got `array` - at `$.batch[1].properties` (properties must be a JSON object)"),
        (msg(type="identify", traits="pro"), "Expected `object`, got `str` - at `$.batch[1].traits` (traits must be a JSON object)"),
        (msg(type="page", context=7), "Expected `object`, got `number` - at `$.batch[1].context` (context must be a JSON object)"),
        (msg(type="track", event="x", timestamp="yesterday"), "Invalid RFC3339 encoded datetime - at `$.batch[1].timestamp`"),
        (msg(type="track", event="x", originalTimestamp="2024-13-01T00:00:00Z"), "Invalid RFC3339 encoded datetime - at `$.batch[1].originalTimestamp`"),
        (msg(type="track", event="x", sentAt=5), "Expected `datetime | null`, got `int` - at `$.batch[1].sentAt`"),
        (msg(type="track", event=["x"]), "Expected `str | null`, got `array` - at `$.batch[1].event`"),
        (msg(type="track", event="x", userId={"id": 1}), "Expected `int | str | null`, got `object` - at `$.batch[1].userId`"),
        ([1, 2], "Expected `object`, got `array` - at `$.batch[1]`"),
    ],
)
def test_envelope_rules(message, reason, tokenizer):
    good = msg(type="track", event="ok", messageId="good-1")
    n = run([good, message, {**good, "messageId": "good-2"}], tokenizer)
    assert n.events.column("event_id").to_pylist() == ["good-1", "good-2"]  # neighbours kept
    assert n.errors == [{"index": 1, "code": ENVELOPE_VIOLATION, "message": reason}]
    [bad] = n.bad_rows
    assert (bad.error_type, bad.reason, bad.source, bad.protocol) == (ENVELOPE_VIOLATION, reason, "web-app", "segment")
    assert bad.received_at_us == RECEIVED_US and bad.field.startswith("$.batch[1]")
    assert SECRET_USER not in bad.payload and SECRET_ANON not in bad.payload
    if isinstance(message, dict):
        payload = json.loads(bad.payload)
        assert {k: v for k, v in payload.items() if k not in ("userId", "anonymousId", "previousId")} == {
            k: v for k, v in message.items() if k not in ("userId", "anonymousId", "previousId")
        }
        if message.get("userId") and isinstance(message["userId"], str):
            assert payload["userId"] == tokenizer(message["userId"])
    assert bad_rows_table(n.bad_rows).schema == BAD_ROW_SCHEMA


def test_event_over_32kb_is_a_size_violation_and_the_rest_is_kept(tokenizer):
    small = msg(type="track", event="ok", messageId="small")
    big = msg(type="track", event="big", messageId="big", properties={"blob": "x" * MAX_EVENT_BYTES})
    just_fits = msg(type="track", event="ok", messageId="fits")
    just_fits["properties"] = {"blob": ""}
    pad = MAX_EVENT_BYTES - len(json.dumps(just_fits))
    just_fits["properties"]["blob"] = "y" * pad
    assert len(json.dumps(just_fits)) == MAX_EVENT_BYTES
    n = run([small, big, just_fits], tokenizer)
    assert n.events.column("event_id").to_pylist() == ["small", "fits"]
    [err] = n.errors
    size = len(json.dumps(big))
    assert err == {"index": 1, "code": SIZE_VIOLATION, "message": f"Event of {size} bytes exceeds the limit of 32768 bytes (32 KB) per event - at `$.batch[1]`"}
    [bad] = n.bad_rows
    # truncated; the word at the cut loses up to its last 256 characters (half a value is never kept)
    assert bad.error_type == SIZE_VIOLATION and MAX_EVENT_BYTES - 256 <= len(bad.payload) < MAX_EVENT_BYTES
    assert (bad.field, bad.rule) == ("$.batch[1]", "max_bytes")
    assert SECRET_USER not in bad.payload


def test_bad_row_payloads_have_segment_identifiers_tokenised(tokenizer):
    text = redact(b'{"userId": "' + SECRET_USER.encode() + b'", "x": \xff', tokenizer, ID_FIELDS)
    assert SECRET_USER not in text and tokenizer(SECRET_USER) in text
    assert redact(b'{"batch":[{"anonymousId":"' + SECRET_ANON.encode() + b'"}]}', tokenizer, ID_FIELDS) == (
        '{"batch":[{"anonymousId":"' + tokenizer(SECRET_ANON) + '"}]}'
    )


# -- request-level errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, path_type, code, message",
    [
        (b'{"batch": [', None, DECODE_FAILURE, "Malformed JSON: input data was truncated"),
        (b"", None, DECODE_FAILURE, "Malformed JSON: input data was truncated"),
        (b'{"batch": [}', None, DECODE_FAILURE, "Malformed JSON: invalid character (byte 11)"),
        (b'{"events": []}', None, ENVELOPE_VIOLATION, "Object missing required field `batch` - at `$`"),
        (b'{"batch": {}}', None, ENVELOPE_VIOLATION, "Expected `array`, got `object` - at `$.batch`"),
        (b"[]", None, ENVELOPE_VIOLATION, "Expected `object`, got `array` - at `$`"),
        (b'{"batch": [], "sentAt": "soon"}', None, ENVELOPE_VIOLATION, "Invalid RFC3339 encoded datetime - at `$.sentAt`"),
        (b'{"batch": [], "context": [1]}', None, ENVELOPE_VIOLATION, "Expected `object`, got `array` - at `$.context`"),
        (b'"track"', "track", ENVELOPE_VIOLATION, "Expected `object`, got `str` - at `$`"),
        (b"{oops", "track", DECODE_FAILURE, "Malformed JSON: object keys must be strings (byte 1)"),
    ],
)
def test_request_level_errors(body, path_type, code, message):
    with pytest.raises(WireError) as e:
        parse_request(body, path_type)
    assert (e.value.code, e.value.message, e.value.status) == (code, message, 400)


def test_invalid_utf8_rejects_only_its_message(tokenizer):
    good = json.dumps(msg(type="track", event="ok", messageId="good")).encode()
    bad_props = b'{"type":"track","event":"x","userId":"' + SECRET_USER.encode() + b'","properties":{"a":"\xff"}}'
    bad_name = b'{"type":"track","event":"\xfe","userId":"u"}'
    env = parse_request(b'{"batch":[' + good + b"," + bad_props + b"," + bad_name + b"]}")
    n = normalize(env, source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    assert n.events.column("event_id").to_pylist() == ["good"]
    assert [(e["index"], e["code"], e["message"]) for e in n.errors] == [
        (1, DECODE_FAILURE, "Invalid UTF-8 in JSON (JSON text must be UTF-8) - at `$.batch[1]`"),
        (2, DECODE_FAILURE, "Invalid UTF-8 in JSON (JSON text must be UTF-8) - at `$.batch[2]`"),
    ]
    assert SECRET_USER not in n.bad_rows[0].payload and "\ufffd" in n.bad_rows[0].payload
    with pytest.raises(WireError) as e:
        parse_request(b'{"batch":[], "writeKey":"\xff"}')
    assert (e.value.code, e.value.message) == (DECODE_FAILURE, "Invalid UTF-8 in JSON: invalid start byte (JSON text must be UTF-8)")


def test_empty_batch_is_fine(tokenizer):
    n = run([], tokenizer)
    assert n.accepted == 0 and n.rejected == 0 and n.events.schema == EVENT_SCHEMA


# -- surface / platform ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "context, surface, platform",
    [
        ({"library": {"name": "analytics.js"}}, "web", "web"),
        ({"library": {"name": "analytics-next"}, "os": {"name": "Mac OS"}}, "web", "mac os"),
        ({"library": {"name": "analytics-ios"}, "device": {"type": "ios"}, "os": {"name": "iOS"}}, "mobile", "ios"),
        ({"library": {"name": "analytics-android"}, "os": {"name": "Android"}}, "mobile", "android"),
        ({"library": {"name": "analytics-react-native"}}, "mobile", "mobile"),
        ({"library": {"name": "analytics-flutter"}, "device": {"type": "Android"}}, "mobile", "android"),
        ({"library": {"name": "analytics-python"}}, "server", "server"),
        ({"library": {"name": "analytics-node"}, "os": {"name": "Linux"}}, "server", "linux"),
        ({}, "server", "server"),
        ({"library": "analytics.js", "device": {"type": 5}}, "server", "server"),  # odd shapes read leniently
    ],
)
def test_surface_and_platform(context, surface, platform, tokenizer):
    row = one(msg(type="track", event="x", context=context), tokenizer)
    assert (row["surface"], row["platform"]) == (surface, platform)


# -- robustness -----------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_field_values = {
    "type": st.sampled_from(["track", "identify", "alias", "page", "screen", "group", "nope"]) | _json_values,
    "userId": st.text(max_size=10) | _json_values,
    "anonymousId": st.text(max_size=10) | st.none(),
    "event": st.text(max_size=10) | _json_values,
    "previousId": st.text(max_size=5) | st.integers(),
    "groupId": st.text(max_size=5) | _json_values,
    "properties": _json_values,
    "traits": _json_values,
    "context": _json_values | st.just({"library": {"name": "analytics.js"}, "device": {"type": "ios"}}),
    "timestamp": st.sampled_from(["2024-03-01T10:00:00Z", "2024-03-01T10:00:00", "bad", None]) | _json_values,
    "sentAt": st.sampled_from(["2024-03-01T10:00:00+05:00", None, 3]),
    "messageId": st.text(max_size=8) | st.integers() | st.none(),
}
_messages = st.fixed_dictionaries({}, optional=_field_values) | _json_values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(_messages, max_size=6), raw_tail=st.binary(max_size=8))
def test_any_input_gives_rows_or_errors_never_an_exception(batch, raw_tail):
    tokenizer = Tokenizer(HMAC_KEY)
    body = json.dumps({"batch": batch}).encode()
    n = normalize(parse_request(body), source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    assert n.accepted + n.rejected == len(batch)
    assert n.events.schema == EVENT_SCHEMA
    assert sorted(e["index"] for e in n.errors) == [e["index"] for e in n.errors]
    bad_rows_table(n.bad_rows)  # always a valid BAD_ROW_SCHEMA table
    try:
        parse_request(body[: len(body) // 2] + raw_tail)
    except WireError:
        pass
