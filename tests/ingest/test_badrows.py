"""The typed bad row: its stored table, payload redaction, and the bad-rows append."""

from __future__ import annotations

import datetime as dt
import json

from headwater.config import PiiPolicy
from headwater.events import BAD_ROW_SCHEMA, BAD_ROW_TYPES, BAD_ROWS_TOPIC
from headwater.ingest.badrows import MAX_BAD_PAYLOAD_CHARS, MAX_REASON_CHARS, BadRow, bad_rows_append, bad_rows_table, redact

from .conftest import RECEIVED_US

SECRET = "alice@example.com"
IDS = ("userId", "anonymousId", "previousId")


def test_taxonomy():
    assert BAD_ROW_TYPES == ("size_violation", "decode_failure", "envelope_violation", "schema_violation", "auth_failure")


def test_table_has_the_stored_schema_and_utc_dates():
    rows = [BadRow("auth_failure", "Authorization header: unknown write key", None, RECEIVED_US, field="Authorization", rule="known_write_key"),
            BadRow("decode_failure", "Malformed JSON", "web", RECEIVED_US + 43_200_000_000, "{oops", "segment")]
    t = bad_rows_table(rows)
    assert t.schema == BAD_ROW_SCHEMA
    got = t.to_pylist()
    assert got[0]["received_at"] == dt.datetime(2024, 3, 1, 12, tzinfo=dt.timezone.utc) and got[0]["source"] is None
    assert [r["ds"] for r in got] == [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
    assert got[1]["payload"] == "{oops" and got[1]["protocol"] == "segment"
    assert bad_rows_table([]).schema == BAD_ROW_SCHEMA


def test_redact_tokenises_identifiers_at_any_depth(tokenizer):
    raw = json.dumps({"userId": SECRET, "anonymousId": 42, "context": {"traits": {"userId": SECRET}}, "event": "x"}).encode()
    assert json.loads(redact(raw, tokenizer, IDS)) == {
        "userId": tokenizer(SECRET), "anonymousId": tokenizer("42"), "context": {"traits": {"userId": tokenizer(SECRET)}}, "event": "x"}
    assert redact(b'{"api_key": "k", "distinct_id": "d"}', tokenizer, ("distinct_id",), drop=("api_key",)) == f'{{"distinct_id":"{tokenizer("d")}"}}'


def test_redact_text_that_is_not_json(tokenizer):
    text = redact(b'{"userId": "' + SECRET.encode() + b'", "x": \xff', tokenizer, IDS)  # invalid UTF-8, truncated
    assert SECRET not in text and tokenizer(SECRET) in text
    assert redact(b"[" * 10_000, tokenizer, IDS).startswith("[[[")  # too deep to decode: text
    cut = redact(b'{"event": "x", "userId": "' + SECRET.encode(), tokenizer, IDS)  # id cut off by truncation
    assert cut == '{"event": "x", '
    assert redact("ts=1 | user_id=u3 | event=E", tokenizer, ("user_id",)) == f"ts=1 | user_id={tokenizer('u3')} | event=E"
    # a cut input keeps whole words only: the word at the cut may be half a value
    assert redact(b"ab " * 10, tokenizer, IDS, limit=10) == "ab ab ab "
    assert redact(b"x" * 100, tokenizer, IDS, limit=10) == ""
    assert redact(b"x" * 1000, tokenizer, IDS, limit=900) == "x" * (900 - 256)  # of a long word, its last 256 characters


def test_append_scrubs_payloads_with_the_policy_and_drops_write_keys(tokenizer):
    payload = json.dumps({"writeKey": "wk-secret", "properties": {"email": SECRET, "ip": "10.1.2.3"}})
    append = bad_rows_append([BadRow("schema_violation", "r", "web", RECEIVED_US, payload, "segment"),
                              BadRow("decode_failure", "r", "web", RECEIVED_US, None, "segment")], PiiPolicy(), tokenizer)
    assert (append.topic, append.partition) == (BAD_ROWS_TOPIC, 0)
    stored = append.events.column("payload").to_pylist()
    assert json.loads(stored[0]) == {"properties": {"email": tokenizer(SECRET)}} and stored[1] is None


def test_append_scrubs_reasons_and_every_prefix_after_the_cut(tokenizer):
    phone, ip = "+1 415 555 0100", "203.0.113.9"
    rows = [BadRow("schema_violation", f"Field `x`: {SECRET!r} from {ip} is not of type 'integer'", "web", RECEIVED_US),
            BadRow("decode_failure", "r", "web", RECEIVED_US, '{"note": "' + " " * (MAX_BAD_PAYLOAD_CHARS - 20) + SECRET + '"}', "segment"),
            BadRow("decode_failure", "x" * MAX_REASON_CHARS + " call " + phone, "web", RECEIVED_US)]
    t = bad_rows_append(rows, PiiPolicy(detect_values=False), tokenizer).events  # bad rows always detect values
    reasons, payloads = t.column("reason").to_pylist(), t.column("payload").to_pylist()
    assert reasons[0] == f"Field `x`: '{tokenizer(SECRET)}' from {tokenizer(ip)} is not of type 'integer'"
    assert len(payloads[1]) <= MAX_BAD_PAYLOAD_CHARS and "alice" not in payloads[1]
    assert len(reasons[2]) <= MAX_REASON_CHARS and "+1 415" not in reasons[2]
    deep = "[" * 100_000 + json.dumps(SECRET) + "]" * 100_000  # too deep to decode: scrubbed as text, no RecursionError
    stored = bad_rows_append([BadRow("decode_failure", "r", "web", RECEIVED_US, deep, "segment")], PiiPolicy(), tokenizer).events
    assert SECRET not in stored.column("payload")[0].as_py()
    # A 1 KB prefix cut before it reaches here (an oversize body): the value at the cut is dropped.
    for cut in range(1, len(SECRET)):
        raw = (b'{"batch": [{"note": "' + b" " * (1024 - 21 - cut) + SECRET.encode() + b'"}]}')[:1024]  # cut after `cut` chars
        stored = bad_rows_append([BadRow("size_violation", "r", "web", RECEIVED_US, redact(raw, tokenizer, IDS, limit=1024), "segment")],
                                 PiiPolicy(), tokenizer).events.column("payload")[0].as_py()
        assert SECRET[: max(cut, 5)] not in stored and stored.startswith('{"batch": [{"note": "'), (cut, stored)
