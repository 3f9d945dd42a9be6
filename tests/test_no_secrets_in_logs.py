"""Secrets and raw identifiers never reach logs: ``headwater -v up`` runs the collector and the
stream processor with every line of their output captured; requests carry known raw ids, the
write key in each place a client may put it, wrong keys, unreadable bodies and PostHog tokens.
Afterwards neither the captured output nor any log file under HEADWATER_HOME holds the HMAC
key, a write key (right or wrong), or a raw identifier."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from headwater import credentials
from headwater.runtime import free_port, wait_http

HMAC_KEY = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7"
WRITE_KEY = "hw_wk_Secret0WriteKey0For0Log0Test"
WRONG_KEYS = ["hw_wk_Wrong0Key0Guessed0By0Scanner", "wrong-body-key-0123456789", "phc_WrongPostHogToken0123456789"]
RAW = {
    "user": "raw-user-7f3a9c",
    "anon": "raw-anon-b81d22",
    "email": "leaky.person@example.org",
    "phone": "+14155550123",
    "ip": "203.0.113.77",
}
LOG_SUFFIXES = (".log", ".out", ".err", ".txt")


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def send_everything(url: str) -> None:
    msg = {"type": "identify", "userId": RAW["user"], "anonymousId": RAW["anon"], "messageId": "ok-1",
           "traits": {"email": RAW["email"], "phone": RAW["phone"]}, "context": {"ip": RAW["ip"]}}
    track = {"type": "track", "event": f"Signed Up {RAW['email']}", "userId": RAW["user"], "messageId": "ok-2",
             "properties": {"note": f"call {RAW['phone']} from {RAW['ip']}"}}
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/v1/batch", headers=basic(WRITE_KEY), json={"batch": [msg, track]}).status_code == 200
        assert http.post("/v1/batch", json={"writeKey": WRITE_KEY, "batch": [{**track, "messageId": "ok-3"}]}).status_code == 200
        assert http.post("/v1/batch", headers=basic(WRONG_KEYS[0]), json={"batch": [msg]}).status_code == 401
        assert http.post("/v1/batch", json={"writeKey": WRONG_KEYS[1], "batch": [msg]}).status_code == 401
        assert http.post("/batch/", json={"api_key": WRONG_KEYS[2], "batch": [{"event": "x", "distinct_id": RAW["user"]}]}).status_code == 401
        # unreadable bodies that still carry the key, and a message that breaks a rule
        assert http.post("/v1/batch", content=f'{{"writeKey": "{WRITE_KEY}", "batch": [{RAW["email"]}'.encode()).status_code == 400
        bad = {"type": "track", "userId": RAW["user"], "messageId": "bad-1", "timestamp": "not a time " + RAW["email"]}
        assert http.post("/v1/batch", headers=basic(WRITE_KEY), json={"batch": [bad]}).status_code == 400
        assert http.post(f"/i/v0/e/?token={WRONG_KEYS[2]}", json={"event": "x", "distinct_id": RAW["anon"]}).status_code == 401


def log_files(home: Path) -> list[Path]:
    """Files under ``home`` that are logs by name (``*.log``, ``*.out``, ``*.err``, ``*.txt``,
    rotated ``x.log.1``). The event log's database (``log/log.db``) is data, not a log: what
    reaches it is the subject of the PII tests."""
    out = []
    for p in home.rglob("*"):
        if p.is_file() and (p.suffix in LOG_SUFFIXES or ".log." in p.name):
            out.append(p)
    return out


def start(args: list[str], env: dict, out: Path) -> subprocess.Popen:
    """``python -m headwater -v <args>`` with stdout and stderr appended to ``out``."""
    with open(out, "ab") as f:
        return subprocess.Popen([sys.executable, "-m", "headwater", "-v", *args], env=env, stdout=f, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def test_secrets_and_raw_ids_never_reach_logs(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    env = {**os.environ, "HEADWATER_HOME": str(home), "HEADWATER_PORT": str(port), "HEADWATER_WRITE_KEY": WRITE_KEY,
           "HEADWATER_HMAC_KEY": HMAC_KEY, "PYTHONUNBUFFERED": "1"}
    outputs = {name: tmp_path / f"{name}.out" for name in ("up", "collector", "stream", "status")}

    # `up` ensures the source of HEADWATER_WRITE_KEY and prints its banner, then stops.
    up = start(["up", "--no-dagster"], env, outputs["up"])
    fingerprint = credentials.fingerprint(credentials.digest(WRITE_KEY)).encode()
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=up, timeout_s=60)
        deadline = time.monotonic() + 30  # the banner follows the collector's first 200
        while fingerprint not in outputs["up"].read_bytes() and up.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(up)

    # The collector and the stream processor at INFO (-v), as separate processes.
    procs = [start(["collector", "--port", str(port)], env, outputs["collector"]), start(["stream"], env, outputs["stream"])]
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=procs[0], timeout_s=60)
        send_everything(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 90
        while True:  # the stream has written the accepted events and the bad rows
            st = subprocess.run([sys.executable, "-m", "headwater", "-v", "status", "--format", "json"], env=env,
                                capture_output=True, timeout=120)
            outputs["status"].write_bytes(st.stdout + st.stderr)
            info = json.loads(st.stdout)
            if info["tables"].get("bronze.events", 0) >= 3 and info["tables"].get("bronze.bad_rows", 0) >= 5 and info["lag"] == 0:
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.5)
    finally:
        for proc in procs:
            stop(proc)
    captured = {name: path.read_bytes() for name, path in outputs.items()}
    for path in log_files(home):
        captured[str(path.relative_to(home))] = path.read_bytes()
    secrets = {"HMAC key": HMAC_KEY, "write key": WRITE_KEY,
               **{f"wrong key {i}": k for i, k in enumerate(WRONG_KEYS)}, **{f"raw {k}": v for k, v in RAW.items()}}
    leaks = [(name, where) for name, secret in secrets.items() for where, text in captured.items()
             if secret.encode() in text or bytes.fromhex(HMAC_KEY) in text]
    assert leaks == []
    # what the operator is shown instead: the key's fingerprint
    assert fingerprint in captured["up"]
