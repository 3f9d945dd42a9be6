"""PII policy: the scrubber's rules, and an end-to-end scan — events and bad rows full of
emails, phones and IPs go through the real collector and stream, then every file under
HEADWATER_HOME (log, WAL, Delta parquet and logs, checkpoints) is searched for the raw values."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.collector.pii import PiiScrubber, is_token, normalize_key
from headwater.collector.tokens import Tokenizer
from headwater.config import Home, PiiPolicy
from tests.helpers import run_stream, start_collector

from .conftest import HMAC_KEY

T = Tokenizer(HMAC_KEY)


def scrub(value, **policy):
    return PiiScrubber(PiiPolicy(**policy), T).scrub(value)


# -- rules ---------------------------------------------------------------------------------
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


# -- end to end ------------------------------------------------------------------------------
EMAILS = ["ann.pii@example.com", "bob.pii@example.org", "carl.pii@example.net"]
PHONES = ["+1 415 555 0199", "+44 20 7946 0958", "(415) 555-0142"]
IPS = ["203.0.113.77", "2001:db8::77", "198.51.100.23"]
RAW = EMAILS + PHONES + IPS


def scan(root: Path, values: list[str] = RAW) -> dict[str, list[str]]:
    """``values`` found per file under ``root``: in the bytes as stored, and in the decoded
    values of Parquet files (compressed) and of SQLite / Arrow IPC log records."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        texts = [path.read_bytes().decode("latin-1")]
        if path.suffix == ".parquet":
            texts.append(json.dumps(pq.read_table(path).to_pylist(), default=str))
        if path.name.endswith(".db"):
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall():
                for row in con.execute(f"SELECT * FROM {table}"):
                    for v in row:
                        if isinstance(v, bytes):
                            try:
                                v = json.dumps(pa.ipc.open_stream(v).read_all().to_pylist(), default=str)
                            except pa.ArrowInvalid:
                                v = v.decode("latin-1")
                        texts.append(str(v))
            con.close()
        hits = [v for v in values if any(v in t for t in texts)]
        if hits:
            found[str(path.relative_to(root))] = hits
    return found


@pytest.fixture(scope="module")
def home_after_ingest(tmp_path_factory):
    home_dir = tmp_path_factory.mktemp("pii")
    wk = "wk-pii"
    auth = {"Authorization": "Basic " + base64.b64encode(f"{wk}:".encode()).decode()}
    ann, bob, carl = EMAILS
    with start_collector(home_dir, write_key=wk, source="web", env={"HEADWATER_HMAC_KEY": HMAC_KEY.hex()}) as c, \
            httpx.Client(base_url=c.url, timeout=10) as http:
        batch = [
            {"type": "identify", "messageId": "pii-1", "userId": ann, "traits": {"email": ann, "phone": PHONES[2], "name": "Ann"},
             "context": {"ip": IPS[0], "library": {"name": "analytics-python"}}},
            {"type": "track", "messageId": "pii-2", "anonymousId": "anon-1", "event": "Contact Requested",
             "properties": {"note": f"call me at {PHONES[0]} or {bob}", "nested": {"contact": {"mobile": PHONES[1]}},
                            "url": f"https://x.example/?from={IPS[1]}"},
             "context": {"ip": IPS[1], "page": {"referrer": f"https://mail.example/?to={carl}"}}},
            {"type": "track", "messageId": "pii-bad", "userId": ann, "properties": {"email": ann, "ip": IPS[2]}},  # no event: bad row
            {"type": "track", "messageId": "pii-big", "userId": ann, "event": "Big",
             "properties": {"email": bob, "phone": PHONES[0], "blob": "x" * 40_000}},  # > 32 KB: bad row
        ]
        r = http.post("/v1/batch", headers=auth, json={"batch": batch})
        assert (r.status_code, r.json()["accepted"], r.json()["rejected"]) == (200, 2, 2), r.text
        malformed = json.dumps({"batch": [{"type": "track", "userId": carl, "event": "x", "properties": {"email": carl, "ip": IPS[2]}}]})[:-3]
        assert http.post("/v1/batch", headers=auth, content=malformed).status_code == 400
        r = http.post("/batch/", json={"api_key": wk, "batch": [
            {"event": "$identify", "distinct_id": bob, "uuid": "pii-ph", "properties": {"$ip": IPS[2], "$anon_distinct_id": "anon-2"},
             "$set": {"email": bob, "phone": PHONES[1]}}]})
        assert r.status_code == 200, r.text
        assert http.post("/v1/batch", json={"writeKey": "wrong", "batch": [{"type": "track", "userId": ann, "event": "x",
                                                                             "properties": {"email": ann, "ip": IPS[0]}}]}).status_code == 401
    run_stream(Home(home_dir))
    return home_dir


def test_no_raw_email_phone_or_ip_in_any_stored_file(home_after_ingest):
    from headwater.serve.catalog import query

    home = Home(home_after_ingest)
    events = query(home, "SELECT count(*) AS n FROM bronze.events").column("n")[0].as_py()
    bad = query(home, "SELECT error_type FROM bronze.bad_rows ORDER BY 1").column("error_type").to_pylist()
    assert events == 3 and bad == ["auth_failure", "decode_failure", "envelope_violation", "size_violation"]
    assert scan(home_after_ingest) == {}
    # the scanner does see decoded values: the tokens of the raw values are there
    files = list(scan(home_after_ingest, [T(EMAILS[0]), T(PHONES[2])]))
    assert any(f.endswith(".parquet") for f in files) and any(f.endswith(".db") or f.endswith("-wal") for f in files)
