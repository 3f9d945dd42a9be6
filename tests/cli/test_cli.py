"""The `headwater` command as scripts drive it: up with HEADWATER_PORT / HEADWATER_WRITE_KEY,
status --format json, query in every format, and its errors (exit codes of headwater.errors)."""

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from headwater import credentials
from headwater.runtime import free_port, wait_http


def hw(env, *args, check=True):
    return subprocess.run([sys.executable, "-m", "headwater", *args], env=env, capture_output=True, text=True, check=check, timeout=120)


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    home = tmp_path_factory.mktemp("cli")
    port = free_port()
    env = {**os.environ, "HEADWATER_HOME": str(home), "HEADWATER_PORT": str(port), "HEADWATER_WRITE_KEY": "test-write-key-cli-1"}
    proc = subprocess.Popen([sys.executable, "-m", "headwater", "up"], env=env, stdout=subprocess.PIPE, text=True)
    wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
    yield env, port, proc
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0 or proc.returncode == -signal.SIGTERM


def post_batch(port, write_key, batch):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/batch",
        data=json.dumps({"batch": batch}).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_up_honours_port_and_write_key_and_status_reports_progress(running):
    env, port, proc = running
    events = [
        {"type": "track", "event": "Signed Up", "userId": f"u{i}", "messageId": f"m{i}", "timestamp": "2024-05-01T10:00:00Z"}
        for i in range(20)
    ]
    assert post_batch(port, "test-write-key-cli-1", events)["accepted"] == 20
    deadline = time.monotonic() + 60
    while True:
        info = json.loads(hw(env, "status", "--format", "json").stdout)
        if info["tables"].get("bronze.events") == 20 and info["lag"] == 0:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.5)
    parts = info["log"]["events"]["partitions"]
    assert sum(p["end_offset"] for p in parts.values()) == 20
    assert all(p["committed_offset"] == p["end_offset"] for p in parts.values())
    assert info["stream"]["last_batch_time"]
    assert "lag" in hw(env, "status").stdout


def test_query_formats(running):
    env, _, _ = running
    sql = "SELECT event_name, count(*) AS n FROM bronze.events GROUP BY 1"
    assert json.loads(hw(env, "query", sql, "--format", "json").stdout) == [{"event_name": "Signed Up", "n": 20}]
    assert hw(env, "query", sql, "--format", "csv").stdout.splitlines() == ['"event_name","n"', '"Signed Up",20']
    assert "Signed Up" in hw(env, "query", sql).stdout


def test_query_errors_name_the_problem(running):
    env, _, _ = running
    bad = hw(env, "query", "SELECT * FROM gold.nope", check=False)
    assert bad.returncode == 3  # NotFoundError
    assert "nope" in bad.stderr and bad.stderr.startswith("Error: ") and "Traceback" not in bad.stderr
    syntax = hw(env, "query", "SELEC 1", check=False)
    assert syntax.returncode == 2 and "syntax error" in syntax.stderr.lower()  # InvalidInputError


def test_batch_rejects_a_malformed_date(running):
    env, _, _ = running
    bad = hw(env, "batch", "--start", "2024-13-01", check=False)
    assert bad.returncode == 2
    assert "'2024-13-01' is not a date in YYYY-MM-DD form" in bad.stderr


def test_source_add_refuses_a_write_key_of_another_source(running):
    env, _, _ = running
    bad = hw(env, "source", "add", "mobile", "--write-key", "test-write-key-cli-1", check=False)
    assert bad.returncode == 4  # ConflictError
    assert "write_key: already used by source" in bad.stderr
    key = hw(env, "source", "add", "mobile").stdout.strip()
    listed = json.loads(hw(env, "source", "list", "--format", "json").stdout)
    assert {"name": "mobile", "key_fingerprint": credentials.fingerprint(credentials.digest(key)), "unregistered_events": "accept"} in listed
    assert key not in json.dumps(listed) and key.startswith("hw_wk_") and len(key) == 38


def test_up_on_a_taken_port_fails_clearly(running, tmp_path):
    _, port, _ = running
    env = {**os.environ, "HEADWATER_HOME": str(tmp_path), "HEADWATER_PORT": str(port)}
    bad = hw(env, "up", check=False)
    assert bad.returncode == 75  # TransientError: it may work once the port is free
    assert f"collector cannot listen on http://127.0.0.1:{port}: Address already in use" in bad.stderr


def test_sigterm_to_up_at_any_moment_stops_its_children(tmp_path):
    """The SIGTERM handler is in place before the first child starts: a stop right after the
    collector answers (before the banner) leaves no orphaned collector or stream processor."""
    import psutil

    for attempt in range(3):
        port = free_port()
        env = {**os.environ, "HEADWATER_HOME": str(tmp_path / f"h{attempt}"), "HEADWATER_PORT": str(port)}
        proc = subprocess.Popen([sys.executable, "-m", "headwater", "up", "--no-dagster"], env=env, stdout=subprocess.DEVNULL)
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc, timeout_s=60)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        gone, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], [c.cmdline() for c in alive]
