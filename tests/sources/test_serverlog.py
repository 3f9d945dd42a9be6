"""Server logs: key=value and JSON lines from a real file, resumed from the stored byte
offset, malformed lines dead-lettered, rotation, and a crash before the position is stored."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time

from headwater.sources.mapping import Mapping
from headwater.sources.serverlog import ServerLog

UTC = dt.timezone.utc
KV = Mapping(timestamp="ts", user_id="user_id", event="event")


def kv(i: int, user: str = "u1") -> str:
    return f"ts=2024-03-01T12:00:{i:02d}Z | level=info | user_id={user} | event=API Call | path=/v1/items?id={i} | ms={i * 10}\n"


def test_kv_lines_resume_from_the_stored_offset(home, tmp_path, token, bronze):
    path = tmp_path / "app.log"
    path.write_text(kv(0) + "garbage without pairs\n" + kv(1, "u2") + "ts=x | ts=y | user_id=u3 | event=E\n")
    reader = ServerLog(home, path, KV)
    first = reader.poll()
    assert (first.rows, first.accepted, dict(first.rejected)) == (4, 2, {"decode_failure": 2})
    assert reader.position().offset == path.stat().st_size and reader.position().line == 5

    # The file grows; the last line is still being written (no newline yet).
    with open(path, "a") as f:
        f.write(kv(2) + kv(3)[:20])
    assert reader.poll().accepted == 1
    with open(path, "a") as f:
        f.write(kv(3)[20:])
    assert reader.poll().accepted == 1
    assert reader.poll().rows == 0
    reader.close()

    got = bronze("SELECT user_id, event_name, event_ts, properties, platform FROM bronze.events ORDER BY event_ts")
    assert [(r["user_id"], r["event_ts"].second) for r in got] == [(token("u1"), 0), (token("u2"), 1), (token("u1"), 2), (token("u1"), 3)]
    assert {r["event_name"] for r in got} == {"API Call"} and {r["platform"] for r in got} == {"server"}
    assert json.loads(got[1]["properties"]) == {"level": "info", "path": "/v1/items?id=1", "ms": 10}
    bad = bronze("SELECT error_type, reason, payload FROM bronze.bad_rows ORDER BY reason")
    assert [b["reason"] for b in bad] == [
        'line 2: field "garbage without pairs" is not key=value (fields are key=value separated by |)',
        "line 4: duplicate key (each key may appear once per line)",
    ]
    assert bad[1]["payload"] == f"ts=x | ts=y | user_id={token('u3')} | event=E"


def test_rotation_truncation_and_crash_before_storing_the_position(home, tmp_path, bronze):
    path = tmp_path / "app.log"
    path.write_text(kv(0) + kv(1))
    reader = ServerLog(home, path, KV, name="app")
    assert reader.poll().accepted == 2
    # Crash after the append, before the position was stored: the lines are read again,
    # with the same derived event ids, and the stream's dedup removes the copies.
    reader.state_path.unlink()
    assert reader.poll().accepted == 2
    assert bronze("SELECT count(*) AS n FROM bronze.events") == [{"n": 2}]
    # Rotation: a new file at the path is read from its start.
    os.rename(path, tmp_path / "app.log.1")
    path.write_text(kv(5) + kv(6) + kv(7))
    assert reader.poll().accepted == 3
    # Truncation (copytruncate) to below the stored offset: from the start again.
    path.write_text(kv(8))
    assert reader.poll().accepted == 1
    path.unlink()
    assert reader.poll().rows == 0  # between rotation and re-creation
    reader.close()
    assert bronze("SELECT count(*) AS n FROM bronze.events") == [{"n": 6}]


def test_json_lines_log_followed_while_it_grows(home, tmp_path, token, bronze):
    path = tmp_path / "api.jsonl"
    path.write_text("")
    m = Mapping(timestamp="time", timestamp_unit="s", anonymous_id="device", event="msg")
    reader = ServerLog(home, path, m, fmt="jsonl", source="api")
    stop = threading.Event()
    polls = []
    t = threading.Thread(target=lambda: polls.append(reader.follow(stop, 0.05)))
    t.start()
    try:
        with open(path, "a") as f:
            for i in range(5):
                f.write(json.dumps({"time": 1709294400 + i, "device": f"d{i % 2}", "msg": "Ping", "i": i}) + "\n")
                f.write("{oops\n" if i == 2 else "")
                f.flush()
                time.sleep(0.05)
        deadline = time.monotonic() + 30
        while reader.position().line < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        t.join()
        reader.close()
    assert polls[0].accepted == 5 and dict(polls[0].rejected) == {"decode_failure": 1}
    got = bronze("SELECT anonymous_id, source, properties FROM bronze.events ORDER BY event_ts")
    assert [r["anonymous_id"] for r in got] == [token(f"d{i % 2}") for i in range(5)]
    assert {r["source"] for r in got} == {"api"} and json.loads(got[4]["properties"]) == {"i": 4}


def test_cli_logs_follow_stops_on_sigterm(home, tmp_path, bronze):
    path = tmp_path / "svc.log"
    path.write_text(kv(0))
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    once = subprocess.run([sys.executable, "-m", "headwater", "logs", str(path), "--format", "json"], env=env, capture_output=True, text=True, timeout=120)
    assert once.returncode == 0, once.stderr
    assert json.loads(once.stdout)["accepted"] == 1
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "logs", str(path), "--follow", "--interval", "0.05", "--format", "json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with open(path, "a") as f:
            f.write(kv(1) + "bad line\n")
        deadline = time.monotonic() + 60
        state = home.root / "sources" / "serverlog" / "svc.log.json"
        while json.loads(state.read_text())["line"] < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    final = json.loads(out)
    assert (final["accepted"], final["rejected"], final["position"]["line"]) == (1, 1, 4)
    assert bronze("SELECT count(*) AS n FROM bronze.events") == [{"n": 2}]


def test_pii_in_log_lines_follows_the_source_policy(home, tmp_path, token, bronze):
    path = tmp_path / "pii.log"
    path.write_text(
        "ts=2024-03-01T12:00:00Z | user_id=u1 | event=Login | ip=203.0.113.9 | email=ann@example.com | note=call +44 20 7946 0958\n"
        "ts=2024-03-01T12:00:01Z | user_id=u2 | event=Login | note=contact bob@example.com | broken\n"
    )
    reader = ServerLog(home, path, KV)
    reader.poll()
    reader.close()
    props = json.loads(bronze("SELECT properties FROM bronze.events")[0]["properties"])
    assert props == {"email": token("ann@example.com"), "note": f"call {token('+44 20 7946 0958')}"}  # ip dropped
    payload = bronze("SELECT payload FROM bronze.bad_rows")[0]["payload"]
    assert "bob@example.com" not in payload and token("bob@example.com") in payload and "u2" not in payload
