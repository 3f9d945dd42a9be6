"""The PII scrubber's rules: keys tokenised / dropped / kept at any depth, values detected
inside strings, text that is not JSON, whole columns."""

from __future__ import annotations

import json

import pyarrow as pa

from headwater.config import PiiPolicy
from headwater.ingest.pii import MAX_DEPTH, TOO_DEEP, PiiScrubber, contains_any, drop_cut_tail, normalize_key
from headwater.ingest.tokens import Tokenizer, is_token

from .conftest import HMAC_KEY

T = Tokenizer(HMAC_KEY)


def scrub(value, **policy):
    return PiiScrubber(PiiPolicy(**policy), T).scrub(value)


def test_keys_are_tokenised_dropped_or_kept_at_any_depth():
    got = scrub({"Email": "a@x.io", "traits": {"$phone_number": 4155550100, "ip_address": "10.0.0.1", "plan": "pro"},
                 "emails": ["b@x.io"], "ip": {"v4": "10.0.0.2"}, "mobile": None, "tel": True})
    assert got == {"Email": T("a@x.io"), "traits": {"$phone_number": T("4155550100"), "plan": "pro"},
                   "emails": [T("b@x.io")], "mobile": None, "tel": True}
    assert normalize_key("$E-mail_Address") == "emailaddress"


def test_values_are_detected_inside_any_string():
    got = scrub({"note": "mail a@x.io or call +1 (415) 555-0100, from 203.0.113.9 / 2001:db8::1",
                 "version": "1.2.3", "when": "2024-04-24T06:34:00+00:00", "ratio": "1:2:3", "bad_ip": "999.1.2.3", "n": 12.5})
    assert got["note"] == f"mail {T('a@x.io')} or call {T('+1 (415) 555-0100')}, from {T('203.0.113.9')} / {T('2001:db8::1')}"
    assert {k: got[k] for k in ("version", "when", "ratio", "bad_ip", "n")} == {
        "version": "1.2.3", "when": "2024-04-24T06:34:00+00:00", "ratio": "1:2:3", "bad_ip": "999.1.2.3", "n": 12.5}


def test_policy_keep_custom_lists_and_no_detection():
    assert scrub({"ip": "10.0.0.1", "email": "a@x.io"}, keep=("ip",)) == {"ip": "10.0.0.1", "email": T("a@x.io")}
    assert scrub({"ssn": "123-45-6789", "name": "Ann"}, tokenize=("ssn",), drop=("name",)) == {"ssn": T("123-45-6789")}
    assert scrub({"note": "a@x.io"}, detect_values=False) == {"note": "a@x.io"}
    assert scrub({"note": "a@x.io", "email": "a@x.io"}, tokenize=(), drop=(), detect_values=False) == {"note": "a@x.io", "email": "a@x.io"}


def test_scrubbing_is_idempotent_and_tokens_are_recognised():
    once = scrub({"email": "a@x.io", "note": "call +44 20 7946 0958"})
    assert scrub(once) == once and is_token(once["email"]) and not is_token("a@x.io")


def test_text_that_is_not_json_is_scrubbed_textually():
    s = PiiScrubber(PiiPolicy(), T)
    text = '{"batch": [{"email": "a@x.io", "ip": "10.1.2.3", "phone": 4155550100, "note": "b@y.org", "x": "trunc'
    assert s.scrub_json(text) == f'{{"batch": [{{"email": "{T("a@x.io")}", "ip": null, "phone": "{T("4155550100")}", "note": "{T("b@y.org")}", "x": "trunc'


def test_columns_are_scrubbed_only_where_needed():
    s = PiiScrubber(PiiPolicy(), T)
    t = pa.table({"properties": ['{"a":1}', '{"email":"a@x.io"}', None],
                  "context": ['{"library":{"name":"x"},"ip":"10.1.2.3","locale":"en"}', '{"ip":"10.1.2.3"}', '{"ip":{"v":1},"b":2}']})
    out = s.apply(t).to_pylist()
    assert [r["properties"] for r in out] == ['{"a":1}', f'{{"email":"{T("a@x.io")}"}}', None]
    assert [json.loads(r["context"]) for r in out] == [{"library": {"name": "x"}, "locale": "en"}, {}, {"b": 2}]


def test_one_column_is_scrubbed_as_it_is_beside_another():
    """apply() of one column (no join, no split) gives that column's result of a two-column call:
    scalar drop keys removed textually, triggered rows scrubbed, nulls kept, the rest as sent."""
    s = PiiScrubber(PiiPolicy(), T)
    props = ['{"a": 1, "ip": "10.1.2.3"}', '{"email":"a@x.io"}', None, '{"b":2}', '{"c":3 , "IP" :"1.2.3.4"}']
    both = s.apply(pa.table({"properties": props, "context": ['{"x":1}'] * len(props)}))
    alone = s.apply(pa.table({"properties": props}), ("properties",))
    assert alone.column("properties").to_pylist() == both.column("properties").to_pylist()
    assert alone.column("properties").to_pylist()[:4] == ['{"a": 1}', f'{{"email":"{T("a@x.io")}"}}', None, '{"b":2}']
    clean = pa.table({"properties": ['{"b":2}', None]})
    assert s.apply(clean, ("properties",)) is clean  # nothing to drop or scrub: the table itself


def test_key_value_pairs_and_cut_values_in_text():
    s = PiiScrubber(PiiPolicy(), T)
    assert s.scrub_text("ts=x | email=a@x.io | ip=10.1.2.3 | n=1") == f"ts=x | email={T('a@x.io')} | ip= | n=1"
    # a policy key's value cut off by truncation is removed, not stored half raw
    assert s.scrub_text('{"a": 1, "email": "ann@exam') == '{"a": 1, '
    # any local@domain fragment in text is tokenised, complete or not, plain or escaped
    assert s.scrub_text('{"a": 1, "x": "ann@exam') == f'{{"a": 1, "x": "{T("ann@exam")}'
    escaped = "bob\\u0040y"
    assert s.scrub_text(f"GET /?e=ann%40x.io&n={escaped}") == f"GET /?e={T('ann%40x.io')}&n={T(escaped)}"


def test_deep_nesting_never_raises():
    s = PiiScrubber(PiiPolicy(), T)
    for depth in (300, 900, 100_000):
        deep = "a@x.io"
        for i in range(depth):
            deep = [deep] if i % 2 else {"k": deep}
        out = s.scrub(deep)  # containers past MAX_DEPTH become the marker
        text = json.dumps(out) if depth < 900 else None
        assert text is None or ("a@x.io" not in text and TOO_DEEP in text)
        tokenised = s.scrub({"email": deep})  # a tokenised key walks its value with the same bound
        assert "a@x.io" not in repr(tokenised)[:10_000] and tokenised["email"] is not None
        raw = "[" * depth + '"a@x.io"' + "]" * depth
        assert "a@x.io" not in s.scrub_json(raw)  # too deep to decode: scrubbed as text
        table = pa.table({"properties": [raw], "context": ["{}"]})
        assert "a@x.io" not in s.apply(table).column("properties")[0].as_py()
    assert MAX_DEPTH >= 64  # deeper than the collector's default message depth


def test_keys_and_plain_text_columns_are_scrubbed():
    s = PiiScrubber(PiiPolicy(), T)
    assert s.scrub({"a@x.io": {"+1 415 555 0100": 1}}) == {T("a@x.io"): {T("+1 415 555 0100"): 1}}
    t = pa.table({"event_id": ["m/a@x.io", "plain"], "event_name": ["Signed Up", "Mail a@x.io"], "platform": [None, "203.0.113.9"],
                  "properties": ["{}", "{}"], "context": ["{}", "{}"]})
    out = s.apply(t).to_pylist()
    assert [r["event_id"] for r in out] == [f"m/{T('a@x.io')}", "plain"]  # deterministic: dedup still works
    assert [r["event_name"] for r in out] == ["Signed Up", f"Mail {T('a@x.io')}"]
    assert [r["platform"] for r in out] == [None, T("203.0.113.9")]


def test_a_phone_does_not_swallow_the_address_after_it():
    s = PiiScrubber(PiiPolicy(), T)
    assert s.scrub_string("+1 415 555 0100 203.0.113.9") == f"{T('+1 415 555 0100')} {T('203.0.113.9')}"
    assert s.scrub_string("+14155550100 2001:db8::1.") == f"{T('+14155550100')} {T('2001:db8::1')}."


def test_a_value_cut_in_two_by_a_prefix_is_never_stored():
    s = PiiScrubber(PiiPolicy(), T)
    for value, piece in (("ann.lee@example.org", "ann"), ("+1 415 555 0100", "415"), ("203.0.113.97", "113"),
                         ("2001:db8:cafe::17", "cafe"), ("ann%40example.org", "ann"), ("ann\\u0040example.org", "ann")):
        text = '{"note": "see ' + value + ' now", "n": 1}'
        start = text.index(value)
        for cut in range(start + 1, start + len(value) + 1):
            out = s.scrub_prefix(text[:cut], 10_000, cut=True)
            assert piece not in out and value not in out, (value, cut, out)
            out = s.scrub_prefix(text, cut)  # cut here, after scrubbing
            assert piece not in out, (value, cut, out)
    assert s.scrub_prefix('{"a": 1}', 100) == '{"a":1}'  # not cut: nothing dropped
    assert drop_cut_tail("ok, call +1 (415) 55") == "ok, call " and drop_cut_tail("a b") == "a "


def test_text_scrubbing_stays_linear():
    import time

    s = PiiScrubber(PiiPolicy(), T)
    start = time.perf_counter()
    for text in ("a" * 32_000 + " @", "1" * 32_000 + " @", "+1" * 16_000, "a@" * 16_000, "%40a" * 8_000):
        s.scrub_text(text)
        s.scrub_prefix(text, 1024, cut=True)
    assert time.perf_counter() - start < 1.0  # quadratic patterns took ~1 s per 32 KB string


def test_contains_any_searches_the_values_of_a_column_never_missing_one():
    col = pa.array(["abc", None, "x@y", "zz"])
    assert contains_any(col, (b"@",)) and not contains_any(col, (b"+", b":"))
    assert not contains_any(col.slice(3), (b"@",)) and not contains_any(col.slice(0, 2), (b"@",))  # a slice's own bytes
    assert contains_any(pa.chunked_array([col.slice(0, 1), col.slice(2)]), (b"@",))
    assert not contains_any(pa.array([], pa.string()), (b"@",)) and contains_any(pa.array(["é@"], pa.large_string()), (b"@",))
    assert contains_any(col.cast(pa.string_view()), (b"q",))  # another layout: assumed to (the caller then searches row by row)


def test_text_columns_without_trigger_characters_are_left_as_they_are():
    scrub = PiiScrubber(PiiPolicy(), Tokenizer(HMAC_KEY))
    table = pa.table({"event_id": ["3f2a-11", "ann@example.com"], "event_name": ["Viewed", "Viewed"], "platform": ["ios", "web"],
                      "properties": ["{}", "{}"]})
    out = scrub.apply(table, ("properties",))
    assert out.column("event_id").to_pylist() == ["3f2a-11", Tokenizer(HMAC_KEY)("ann@example.com")]
    assert out.column("event_name").to_pylist() == ["Viewed", "Viewed"] and out.column("platform").to_pylist() == ["ios", "web"]
