"""No raw personal data at rest, anywhere (issue 10, "No raw personal data at rest").

One run plants distinctive emails, international phone numbers and IPv4 / IPv6 addresses in
every field of every request kind a real collector (uvicorn subprocess on 127.0.0.1) takes —
Segment batch and single messages, PostHog batch / ``/e/`` (JSON and form) / ``/capture/``,
an oversize body (413), malformed JSON, a wrong envelope, unknown write keys (401), a schema
violation (a contract makes ``email`` an integer), an unregistered event rejected by its
source — plus values cut in two by the 1 KB and 32 KB payload prefixes and the 64-character
quotes of import reasons, the file import (``headwater import`` CSV and JSON lines) and the
server-log reader (``headwater logs``) with bad input; then the stream (available-now) and
``headwater batch`` run. Every file under ``HEADWATER_HOME`` is then read: as raw bytes
(the log database, its ``-wal`` / ``-shm``, Delta logs, everything), Parquet files also
decoded, the event log also read back through its API. No planted value, and no recognisable
piece of one (an email's local part, a phone's leading digits, an address's network part),
may appear; the collector's own output is checked too.
"""

from __future__ import annotations

import base64
import gc
import gzip
import json
import urllib.parse
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from headwater.config import Home
from headwater.registry.registry import Registry
from tests.helpers import read_topic, run_stream, start_collector

HMAC_KEY = bytes(range(32))
PHONE_PREFIX = "+1 415 55"  # every planted phone starts so (or "+1415"); a token is hex: no "+", no " "
NEEDLES = frozenset({"ann.leak", PHONE_PREFIX, "+1415", "203.0.113.", "2001:db8:cafe"})


class Plants:
    """Distinctive personal values, each fresh. Every one contains one of :data:`NEEDLES`, the
    strings that must never be stored: an email's local part, a phone's leading digits, an
    address's network part — so a value cut in two is caught as well as a whole one."""

    def __init__(self):
        self.n = 0
        self.needles = NEEDLES

    def _next(self) -> int:
        self.n += 1
        return self.n

    def email(self) -> str:
        n = self._next()
        return f"ann.leak{n:03d}@leak-test.example"

    def phone(self) -> str:
        n = self._next()
        return f"{PHONE_PREFIX}5 {n % 10000:04d}" if n % 2 else f"+1415555{n % 10000:04d}"

    def ip(self) -> str:
        n = self._next()
        return f"203.0.113.{n % 250 + 1}" if n % 2 else f"2001:db8:cafe::{n % 65536:x}"

    def text(self) -> str:
        """A sentence holding one of each."""
        return f"mail {self.email()} or call {self.phone()} from {self.ip()}"

    def dense(self, chars: int) -> str:
        """About ``chars`` characters of whole planted values separated by spaces: a cut
        anywhere in it splits one."""
        parts, size = [], 0
        while size < chars:
            part = [self.email, self.phone, self.ip][self.n % 3]()
            parts.append(part)
            size += len(part) + 1
        return " ".join(parts)


def straddle(prefix: bytes, at: int, value: str) -> bytes:
    """``prefix`` padded with spaces inside a JSON string so that ``value`` starts 10 bytes
    before byte ``at`` (the cut of a 1 KB / 32 KB prefix falls inside it)."""
    pad = at - 10 - len(prefix)
    assert pad >= 0
    return prefix + b" " * pad + value.encode()


# -- the run ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Everything of the module doc; yields ``(home, plants, outputs)`` (outputs: collector
    process output and CLI outputs, as text)."""
    root = tmp_path_factory.mktemp("pii-home")
    inputs = tmp_path_factory.mktemp("pii-inputs")  # outside HEADWATER_HOME: the inputs hold raw values
    p = Plants()
    home = Home(root)
    key = home.add_source("web-app")
    strict_key = home.add_source("strict-app")
    home.update_source("strict-app", unregistered_events="reject")
    Registry.from_home(home).register("Signed Up", {"type": "object", "properties": {"email": {"type": "integer"}, "plan": {"type": "string"}}})
    outputs: list[str] = []

    def auth(k: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{k}:".encode()).decode()}

    def segment_message(kind: str = "track", **over) -> dict:
        m = {
            "type": kind, "messageId": f"msg-{p.email()}", "userId": p.email(), "anonymousId": p.phone(),
            "event": f"Clicked {p.email()}", "timestamp": "2024-03-01T12:00:00Z",
            "properties": {"email": p.email(), "phone": p.phone(), "ip": p.ip(), "note": p.text(), "url": f"https://x.example/?e={p.email()}",
                           "nested": {"deep": [{"contact": p.text()}], p.email(): "email as a key"}, "n": 1},
            "traits": {"email": p.email(), "name": p.text(), "mobile": p.phone()},
            "context": {"ip": p.ip(), "page": {"url": f"https://x.example/u/{p.email()}", "referrer": p.text()},
                        "device": {"type": p.email()}, "os": {"name": p.phone()}, "library": {"name": p.text()},
                        "userAgent": p.text(), "traits": {"email": p.email()}},
        }
        m.update(over)
        return m

    with start_collector(root, write_key=None, env={"HEADWATER_HMAC_KEY": HMAC_KEY.hex()}) as c, \
            httpx.Client(base_url=c.url, timeout=30) as http:
        sent = []

        def post(path: str, *, content: bytes | None = None, json_body=None, headers: dict | None = None, params=None) -> httpx.Response:
            r = http.post(path, content=content, json=json_body, headers=headers, params=params)
            sent.append((path, r.status_code))
            assert r.status_code < 500, (path, r.status_code, r.text)
            return r

        # Segment batch: valid events (every field planted) and every envelope violation.
        big = segment_message(properties={"blob": p.dense(40 * 1024)})  # over 32 KB: size_violation, cut at 32 KB
        batch = [
            segment_message(), segment_message("identify"), segment_message("page", name=p.email()),
            segment_message("screen", name=p.text()), segment_message("group", groupId=p.email()),
            segment_message("alias", previousId=p.email()),
            segment_message(type=p.email()),  # invalid type
            segment_message(userId=None, anonymousId=None),  # no identity
            segment_message(event=None),  # track without a name
            segment_message(properties=p.text()),  # not an object
            segment_message(context=[p.email(), p.ip()]),  # not an object
            segment_message(timestamp=p.email()),  # not a timestamp
            segment_message(timestamp=f"2024-03-01T12:00:00Z {p.phone()}"),
            segment_message(sentAt=p.ip()),
            big,
        ]
        r = post("/v1/batch", json_body={"batch": batch, "context": {"ip": p.ip(), "note": p.text()}, "sentAt": "2024-03-01T12:00:01Z"}, headers=auth(key))
        assert r.status_code == 200 and r.json()["rejected"] >= 8, r.text
        # Single messages, each endpoint.
        for kind in ("track", "identify", "page", "screen", "alias", "group"):
            post(f"/v1/{kind}", json_body=segment_message(kind, previousId=p.email(), groupId=p.email(), name=p.text()), headers=auth(key))
        post("/v1/track", json_body={**segment_message(), "writeKey": key})  # key in the body
        post("/v1/track", json_body=segment_message(type="identify"), headers=auth(key))  # endpoint mismatch
        # Schema violation: the contract makes `email` an integer; an extra property is fine.
        r = post("/v1/track", json_body=segment_message(event="Signed Up", properties={"email": p.email(), "plan": p.text()}), headers=auth(key))
        assert r.status_code == 400 and r.json()["code"] == "schema_violation", r.text
        # Unregistered event name rejected by its source (the name itself is an email).
        r = post("/v1/batch", json_body={"batch": [segment_message(event=p.email())]}, headers=auth(strict_key))
        assert r.json()["rejected"] == 1, r.text
        # Oversize body (413): the email at byte ~1 KB is cut by the stored 1 KB prefix.
        head = b'{"batch": [{"type": "track", "userId": "' + p.email().encode() + b'", "event": "' + p.text().encode() + b'", "properties": {"note": "'
        body = straddle(head, 1024, p.email()) + b" " + p.dense(510 * 1024).encode() + b'"}}]}'
        r = post("/v1/batch", content=body, headers={**auth(key), "content-type": "application/json"})
        assert r.status_code == 413, r.text
        r = post("/v1/batch", content=gzip.compress(straddle(head, 1024, p.phone()) + p.dense(600 * 1024).encode()),
                 headers={**auth(key), "content-encoding": "gzip"})
        assert r.status_code == 413, r.text
        # Malformed JSON: short, and long (its stored text is cut at 32 KB: a value straddles it).
        post("/v1/batch", content=b'{"batch": [{"userId": "' + p.email().encode() + b'", "note": "' + p.text().encode()
             + b'", "esc": "' + p.email().replace("@", "\\u0040").encode() + b'", "url": "?e=' + urllib.parse.quote(p.email()).encode() + b'", oops',
             headers={**auth(key), "content-type": "application/json"})
        long_bad = straddle(b'{"batch": [{"note": "' + p.text().encode(), 32 * 1024, p.email()) + p.dense(60 * 1024).encode() + b"\x00 oops"
        post("/v1/batch", content=long_bad, headers=auth(key))
        long_bad2 = straddle(b'{"batch": [{"x": "', 32 * 1024, p.phone()) + b' "' + p.dense(100).encode() + b", }]"
        post("/v1/batch", content=long_bad2, headers=auth(key))
        # Deep nesting (100,000 levels) with a value at the bottom.
        deep = b'"' + p.email().encode() + b'"'
        post("/v1/batch", content=b'{"batch": [{"type": "track", "userId": "u", "event": "e", "properties": {"a": ' + b"[" * 100_000 + deep
             + b"]" * 100_000 + b"}}]}", headers={**auth(key), "content-type": "application/json"})
        post("/batch/", content=b'{"api_key": "' + key.encode() + b'", "batch": [{"event": "e", "distinct_id": "d", "properties": {"a": '
             + b"[" * 100_000 + deep + b"]" * 100_000 + b"}}]}")
        # Wrong envelopes.
        post("/v1/batch", json_body={"batch": {"userId": p.email(), "note": p.text()}}, headers=auth(key))
        post("/v1/batch", json_body=[p.email(), p.text()], headers=auth(key))
        post("/v1/batch", json_body={"batch": [segment_message()], "context": p.text()}, headers=auth(key))
        post("/v1/track", json_body=[segment_message()], headers=auth(key))
        # Unknown write keys (401): an email as the key, in the header and in the body; bodies
        # whose 1 KB prefix cuts a value in two.
        post("/v1/batch", content=straddle(b'{"batch": [{"userId": "' + p.email().encode() + b'", "n": "', 1024, p.email()) + p.dense(2000).encode(),
             headers={**auth(p.email()), "content-type": "application/json"})
        post("/v1/batch", json_body={"writeKey": p.email(), "batch": [segment_message()]})
        post("/v1/track", json_body=segment_message())  # no key at all
        post("/v1/batch", content=straddle(b'{"writeKey": "' + p.phone().encode() + b'", "x": "', 1024, p.ip()) + b'"}')

        # PostHog: batch, /e/ (JSON array, form, base64 form), /capture/, bad events.
        def ph_event(**over) -> dict:
            e = {"event": f"clicked {p.email()}", "distinct_id": p.email(), "uuid": f"u-{p.email()}", "timestamp": "2024-03-01T12:00:00Z",
                 "properties": {"$ip": p.ip(), "$current_url": f"https://x.example/?email={p.email()}", "$device_id": p.phone(),
                                "$os": p.email(), "$device_type": p.phone(), "$lib": p.text(), "note": p.text(), "email": p.email()},
                 "$set": {"email": p.email(), "phone": p.phone(), "note": p.text()}, "$set_once": {"first_ip": p.ip()}}
            e.update(over)
            return e

        ph_batch = [ph_event(), ph_event(event="$identify"), ph_event(event="$pageview"), ph_event(event="$create_alias", properties={"alias": p.email()}),
                    ph_event(distinct_id=None), ph_event(event=None), ph_event(timestamp=p.email()), ph_event(offset=10**17),
                    ph_event(properties=p.text()), ph_event(**{"$set": p.email()})]
        r = post("/batch/", json_body={"api_key": key, "batch": ph_batch, "sent_at": "2024-03-01T12:00:01Z"})
        assert r.status_code == 200 and r.json()["rejected"] >= 5, r.text
        post("/e/", json_body=[{**ph_event(), "token": key}])
        data = json.dumps([{**ph_event(), "token": key}])
        post("/e/", content=urllib.parse.urlencode({"data": data}).encode(), headers={"content-type": "application/x-www-form-urlencoded"})
        post("/e/", content=urllib.parse.urlencode({"data": base64.b64encode(data.encode()).decode()}).encode(),
             headers={"content-type": "application/x-www-form-urlencoded"})
        post("/capture/", json_body={**ph_event(), "api_key": key})
        post("/i/v0/e/", json_body={**ph_event(), "api_key": key}, params={"_": "99999999999999999999"})
        post("/e/", content=b'[{"event": "x", "token": "' + key.encode() + b'", "distinct_id": "' + p.email().encode() + b'", oops',
             params={"token": key})  # malformed, key from the query
        post("/e/", content=urllib.parse.urlencode({"data": "%%%" + p.email()}).encode(), params={"token": key},
             headers={"content-type": "application/x-www-form-urlencoded"})  # data not JSON nor base64
        post("/batch/", json_body={"api_key": key, "batch": p.text()})  # wrong envelope
        post("/batch/", json_body={"api_key": p.email(), "batch": [ph_event()]})  # unknown token
        post("/capture/", json_body=ph_event(), params={"token": p.phone()})
        r = post("/batch/", content=straddle(b'{"api_key": "' + key.encode() + b'", "batch": [{"event": "x", "distinct_id": "', 1024, p.email())
                 + p.dense(520 * 1024).encode() + b'"}]}')
        assert r.status_code == 413, r.text
        assert {s for _, s in sent} >= {200, 400, 401, 413}, sent
    outputs.append(c.proc.stdout.read().decode("utf-8", "replace") if c.proc.stdout else "")

    # File import (CSV, JSON lines) and the server-log reader, with bad rows of every rule.
    def cut64(value: str) -> str:
        """Text whose first 64 characters end inside ``value`` (import reasons quote 64)."""
        return "y" * (63 - len(value) // 2) + " " + value

    csv_path = inputs / "export.csv"
    rows = [("user_id", "anonymous_id", "event", "ts", "kind", "note", "platform")]
    rows.append((p.email(), p.phone(), p.email(), "2024-03-01T10:00:00Z", "track", p.text(), p.email()))  # good
    rows.append((p.email(), "", "Signed In", p.email(), "track", p.text(), ""))  # timestamp not a timestamp
    rows.append((p.email(), "", "Signed In", cut64(p.email()), "track", p.text(), ""))
    rows.append((p.email(), "", "Signed In", cut64(p.phone()), "track", p.text(), ""))
    rows.append((p.email(), "", "Signed In", cut64(p.ip()), "track", p.text(), ""))
    rows.append(("", "", p.email(), "2024-03-01T10:00:00Z", "track", p.text(), ""))  # no identity
    rows.append((p.email(), "", "x", "2024-03-01T10:00:00Z", p.email(), p.text(), ""))  # bad event type
    rows.append((p.email(), "", "x", "2024-03-01T10:00:00Z", cut64(p.email()), p.text(), ""))
    rows.append((p.email(), "", "", "2024-03-01T10:00:00Z", "track", p.text(), ""))  # no event name
    csv_path.write_text("\n".join(",".join(f'"{v}"' for v in r) for r in rows) + "\n")
    jsonl_path = inputs / "export.jsonl"
    lines = [json.dumps({"uid": p.email(), "name": f"Bought {p.email()}", "at": "2024-03-01T11:00:00Z", "props": {"email": p.email(), "note": p.text()}}),
             json.dumps({"uid": p.email(), "name": "Bought", "at": p.email(), "props": {"note": p.text()}}),
             json.dumps({"uid": p.email(), "name": "Bought", "at": "2024-03-01T11:00:00Z", "props": p.text()}),
             '{"uid": "' + p.email() + '", "name": "' + p.text() + '", oops',
             p.text(), "[" * 5000 + p.email()]
    jsonl_path.write_text("\n".join(lines) + "\n")
    kv_path = inputs / "server.log"
    kv = [f"ts=2024-03-01T09:00:00Z | user_id={p.email()} | event=Login | ip={p.ip()} | note={p.email()}",
          f"ts={p.email()} | user_id={p.email()} | event=Login | from={p.ip()}",
          f"ts=2024-03-01T09:00:00Z | user_id= | anonymous_id= | event={p.email()} | phone={p.phone()}",
          f"garbage {p.text()} no pairs at all",
          f"ts=2024-03-01T09:00:00Z | user_id={p.email()} | event=Login | x=" + p.dense(40 * 1024)]
    kv_path.write_text("\n".join(kv) + "\n")
    jl_log = inputs / "server.jsonl"
    jl_log.write_text("\n".join([
        json.dumps({"ts": "2024-03-01T09:30:00Z", "user_id": p.email(), "event": "Login", "ip": p.ip(), "msg": p.text()}),
        json.dumps({"ts": p.phone(), "user_id": p.email(), "event": "Login"}),
        '{"ts": "2024-03-01T09:30:00Z", "user_id": "' + p.email() + '", oops ' + p.text(),
    ]) + "\n")

    from headwater.cli.main import cli

    runner = CliRunner()
    env = {"HEADWATER_HOME": str(root), "HEADWATER_HMAC_KEY": HMAC_KEY.hex()}
    for args in (
        ["import", str(csv_path), "--user-id", "user_id", "--anonymous-id", "anonymous_id", "--event", "event", "--timestamp", "ts",
         "--event-type", "kind", "--platform", "platform", "--format", "json"],
        ["import", str(jsonl_path), "--user-id", "uid", "--event", "name", "--timestamp", "at", "--properties", "props", "--format", "json"],
        ["logs", str(kv_path), "--format", "json"],
        ["logs", str(jl_log), "--input-format", "jsonl", "--format", "json"],
    ):
        result = runner.invoke(cli, args, env=env, catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
        outputs.append(result.output)

    run_stream(home)
    result = runner.invoke(cli, ["batch", "--format", "json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    outputs.append(result.output)
    yield home, p, outputs


# -- the checks -------------------------------------------------------------------------
def _found(text: str, needles: set[str]) -> list[str]:
    return sorted(n for n in needles if n in text)


def test_the_run_stored_every_kind_of_row(run):
    """The scan below means something only if the run stored events and bad rows of every type."""
    from tests.helpers import query

    home, _, _ = run
    types = {r["error_type"] for r in query(home, "SELECT DISTINCT error_type FROM bronze.bad_rows").to_pylist()}
    assert types >= {"size_violation", "decode_failure", "envelope_violation", "schema_violation", "auth_failure"}, types
    protocols = {r["protocol"] for r in query(home, "SELECT DISTINCT protocol FROM bronze.bad_rows").to_pylist()}
    assert protocols >= {"segment", "posthog", "import", "serverlog"}, protocols
    sources = {r["source"] for r in query(home, "SELECT DISTINCT source FROM bronze.events").to_pylist()}
    assert sources >= {"web-app", "import", "serverlog"}, sources
    reasons = [r["reason"] for r in query(home, "SELECT reason FROM bronze.bad_rows WHERE error_type = 'schema_violation'").to_pylist()]
    assert any("Field `properties.email`: expected integer, got string (rule `type`" in r for r in reasons), reasons
    # the 1 KB prefixes were stored (scrubbed, the value at the cut dropped), not thrown away
    prefixes = query(home, "SELECT payload FROM bronze.bad_rows WHERE error_type = 'size_violation' AND payload LIKE '{\"batch\": [{%'").to_pylist()
    assert len(prefixes) == 2 and all(800 < len(r["payload"]) <= 1024 for r in prefixes), prefixes  # 413 plain and gzip


def _raw_leaks(root: Path, needles: set[str]) -> tuple[set[str], dict[str, set[str]]]:
    """File names under ``root`` and the planted values found in each file's raw bytes;
    FileNotFoundError if a file vanished while read."""
    files = [f for f in root.rglob("*") if f.is_file()]
    leaks: dict[str, set[str]] = {}
    for f in files:
        data = f.read_bytes()
        for needle in needles:
            for form in {needle, urllib.parse.quote(needle), urllib.parse.quote_plus(needle)}:
                if form.encode() in data:
                    leaks.setdefault(str(f.relative_to(root)), set()).add(form)
    return {f.name for f in files}, leaks


def test_no_planted_value_in_any_file_as_raw_bytes(run):
    home, p, _ = run
    # A log handle left to the garbage collector by an earlier test closes at any moment, and
    # SQLite then folds its -wal file into log.db and deletes it: collect first, and scan again
    # if a file still vanished mid-scan (its bytes are then in log.db).
    gc.collect()
    try:
        names, leaks = _raw_leaks(Path(home.root), p.needles)
    except FileNotFoundError:
        names, leaks = _raw_leaks(Path(home.root), p.needles)
    assert any(n.endswith(".parquet") for n in names) and any(n.endswith(".json") for n in names)
    assert any(n.endswith("-wal") or n.endswith(".db") for n in names), names
    assert not leaks, leaks


def test_no_planted_value_in_decoded_parquet_and_delta_logs(run):
    home, p, _ = run
    leaks = {}
    for f in Path(home.root).rglob("*.parquet"):
        text = json.dumps(pq.read_table(f).to_pylist(), default=str, ensure_ascii=False)
        if found := _found(text, p.needles):
            leaks[str(f.relative_to(home.root))] = found
    for f in Path(home.root).rglob("_delta_log/*.json"):
        if found := _found(f.read_text(), p.needles):  # includes the min/max column statistics
            leaks[str(f.relative_to(home.root))] = found
    assert not leaks, leaks


def test_no_planted_value_in_the_event_log_read_back(run):
    from headwater.log import open_log

    home, p, _ = run
    log = open_log(home.settings.log_url)
    try:
        for topic in ("events", "bad_rows"):
            t = read_topic(log, topic)
            assert t is not None and t.num_rows
            text = json.dumps(t.to_pylist(), default=str, ensure_ascii=False)
            assert not _found(text, p.needles), (topic, _found(text, p.needles))
    finally:
        log.close()


def test_no_planted_value_in_process_output(run):
    _, p, outputs = run
    assert not _found("\n".join(outputs), p.needles)
