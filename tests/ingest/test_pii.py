"""The PII scrubber's rules: keys tokenised / dropped / kept at any depth, values detected
inside strings, text that is not JSON, whole columns."""

from __future__ import annotations

import json

import pyarrow as pa

from headwater.config import PiiPolicy
from headwater.ingest.pii import PiiScrubber, normalize_key
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


def test_key_value_pairs_and_cut_values_in_text():
    s = PiiScrubber(PiiPolicy(), T)
    assert s.scrub_text("ts=x | email=a@x.io | ip=10.1.2.3 | n=1") == f"ts=x | email={T('a@x.io')} | ip= | n=1"
    # a policy key's value cut off by truncation is removed, not stored half raw
    assert s.scrub_text('{"a": 1, "email": "ann@exam') == '{"a": 1, '
    assert s.scrub_text('{"a": 1, "x": "ann@exam') == '{"a": 1, "x": "ann@exam'
