"""PII policy end to end: events and bad rows full of emails, phones and IPs go through the
real collector and stream, then every file under HEADWATER_HOME (log, WAL, Delta parquet and
logs, checkpoints) is searched for the raw values. The scrubber's rules: tests/ingest/test_pii.py."""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from headwater.config import Home
from headwater.ingest.tokens import Tokenizer
from tests.helpers import run_stream, start_collector

from .conftest import HMAC_KEY

T = Tokenizer(HMAC_KEY)


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
    wk = "wk-pii-collector-test"
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
    from tests.helpers import query

    home = Home(home_after_ingest)
    events = query(home, "SELECT count(*) AS n FROM bronze.events").column("n")[0].as_py()
    bad = query(home, "SELECT error_type FROM bronze.bad_rows ORDER BY 1").column("error_type").to_pylist()
    assert events == 3 and bad == ["auth_failure", "decode_failure", "envelope_violation", "size_violation"]
    assert scan(home_after_ingest) == {}
    # the scanner does see decoded values: the tokens of the raw values are there
    files = list(scan(home_after_ingest, [T(EMAILS[0]), T(PHONES[2])]))
    assert any(f.endswith(".parquet") for f in files) and any(f.endswith(".db") or f.endswith("-wal") for f in files)
