"""Footprint: the resident memory of ``headwater up`` at idle and at a steady 5,000 events/s.

    uv run python bench/footprint.py [--quick] [--eps N] [--idle-s S] [--load-s S] [--collector-workers N] [--peer-rev REV]
                                     [--python PATH]

1. A fresh ``HEADWATER_HOME`` with one source, and ``headwater up`` as a user starts it (the
   collector's workers, the stream processor, Dagster's code server with its daemon in one
   process; the UI process
   starts when its port is first asked, setting ``dagster.ui``), its console kept;
   ``--collector-workers`` sets ``collector.workers`` (default: the setting's default, one per
   core). Short-lived children count when they are sampled: ``up-heartbeat`` reads the failing
   quality checks when ``quality.results`` changed (:mod:`headwater.serve.heartbeat`).
2. **Idle**: ``--idle-s`` (60; ``--quick`` 30) after ``up`` started, the bench samples every
   process of ``up``'s tree: RSS, PSS (``/proc/<pid>/smaps_rollup``: the pages of shared
   libraries split among the processes mapping them, so the sum is the memory the tree
   really holds) and USS (private pages), per process and by role (``up``, ``collector``,
   ``stream``, ``dagster`` (code server and daemon), ``dagster-ui``, …; a ``--peer-rev`` from
   before: ``dagster-code`` and ``dagster-daemon``). RSS is the figure the
   target is on: it counts a shared library once per process, as ``ps`` and ``top`` do.
3. **Load**: ``--eps`` (5,000) events/s for ``--load-s`` (60; ``--quick`` 20): Segment
   ``/v1/batch`` requests of 100 events (unique ``messageId``, event time = send time) sent
   on schedule by 4 keep-alive clients in this process (httpx), each waiting for its answer;
   the tree is sampled every 2 s. Reported: the peak and the last total, the by-role peak,
   events accepted, the failed requests by status and the setting that refused them (``"429
   collector.max_loop_delay_ms"``; an exception's name when there was no answer), and the
   stream's lag when the load ends, and the 1-minute load average then (``load_avg_1m``, also
   at the idle sample: the machine's other jobs). ``target_met``: the peak total RSS under load is at most
   1 GiB (issue 13).
4. **UI opened**: then the Dagster UI is asked for once (its process starts) and the tree is
   sampled again: what a user who has the UI open adds (``ui_opened``).
5. **Peer** (``--peer-rev REV``): the same run against the source tree of git revision ``REV``
   (``git archive``, put first on ``PYTHONPATH``, so ``up`` and all its children run that
   code with the same packages), e.g. the commit before the footprint work; ``ratio`` = this
   tree's peak RSS under load / the peer's. Without it there is no same-run peer, and only
   absolute figures are reported. ``--collector-workers`` applies to this tree only (a tree
   from before the setting rejects it): the peer runs its own default.

``--python``: the interpreter ``headwater up`` runs with, default this one. The project's venv
holds the dev group, and with it pandas, which pyarrow imports on its first conversion of
values to Arrow wherever it can (~45-55 MB resident a process). The ``headwater`` program keeps
it out of its processes (:func:`headwater.spark.defer_pandas`), so both venvs now measure the
same code; a user's installation (no dev group) is measured with a venv synced without it::

    UV_PROJECT_ENVIRONMENT=/tmp/hw-prod uv sync --locked --no-dev
    uv run python bench/footprint.py --python /tmp/hw-prod/bin/python

Other jobs on the machine change timings, hardly memory; the load generator runs in this
process, on the same cores. The table goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import psutil

BATCH = 100
TARGET_MB = 1024
CLIENTS = 4
SAMPLE_S = 2.0
ROOT = Path(__file__).resolve().parent.parent


def role(proc: psutil.Process) -> str:
    """What a process of ``up``'s tree is, from its command line."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "other"
    line = " ".join(cmd)
    for needle, name in (("dagster_code_server_with_daemon", "dagster"), ("dagster api grpc", "dagster-code"), ("dagster code-server", "dagster-code-proxy"),
                         ("dagster dev", "dagster-dev"), ("dagster._daemon", "dagster-daemon"), ("dagster-daemon", "dagster-daemon"),
                         ("dagster_webserver", "dagster-ui"), ("dagster-webserver", "dagster-ui"), ("dagster api execute", "dagster-run"),
                         # headwater.serve.heartbeat's short-lived child: its DataFusion query (a --peer-rev from
                         # before it: headwater.quality.alerts on DuckDB)
                         ("QueryBuilder", "up-heartbeat"), ("quality import alerts", "up-heartbeat")):
        if needle in line:
            return name
    if "headwater" in cmd:
        rest = cmd[cmd.index("headwater") + 1:]
        return next((a for a in rest if a in ("up", "collector", "stream", "batch")), "headwater")
    return "other"


def sample(root: int) -> list[dict]:
    """``root`` and its descendants: ``pid``, ``role``, ``rss`` / ``pss`` / ``uss`` (bytes)."""
    try:
        top = psutil.Process(root)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return []
    out = []
    for p in procs:
        try:
            m = p.memory_full_info()
        except psutil.Error:
            continue
        out.append({"pid": p.pid, "role": role(p), "rss": m.rss, "pss": m.pss, "uss": m.uss})
    return out


def totals(procs: list[dict]) -> dict:
    by_role: dict[str, dict[str, float]] = defaultdict(lambda: {"procs": 0, "rss_mb": 0.0, "pss_mb": 0.0})
    for p in procs:
        r = by_role[p["role"]]
        r["procs"] += 1
        r["rss_mb"] += p["rss"] / 2**20
        r["pss_mb"] += p["pss"] / 2**20
    return {
        "processes": len(procs),
        "rss_mb": round(sum(p["rss"] for p in procs) / 2**20),
        "pss_mb": round(sum(p["pss"] for p in procs) / 2**20),
        "uss_mb": round(sum(p["uss"] for p in procs) / 2**20),
        "by_role": {k: {"procs": v["procs"], "rss_mb": round(v["rss_mb"]), "pss_mb": round(v["pss_mb"])} for k, v in sorted(by_role.items())},
    }


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def show(label: str, t: dict) -> None:
    say(f"{label}: {t['processes']} processes, RSS {t['rss_mb']} MB, PSS {t['pss_mb']} MB, USS {t['uss_mb']} MB")
    for name, r in t["by_role"].items():
        say(f"    {name:<20} {r['procs']:>2} x  RSS {r['rss_mb']:>5} MB  PSS {r['pss_mb']:>5} MB")


def body(run: str, seq: int) -> bytes:
    """One ``/v1/batch`` request of :data:`BATCH` events stamped now, with unique message ids."""
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    msgs = [{
        "type": "track", "event": ("Product Viewed", "Product Added", "Order Completed")[i % 3],
        "messageId": f"{run}-{seq}-{i}", "userId": f"user-{(seq * BATCH + i) % 20_000}", "timestamp": now,
        "properties": {"product_id": f"sku-{i}", "price": 12.5, "currency": "EUR"},
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"}, "ip": "10.0.0.1"},
    } for i in range(BATCH)]
    return json.dumps({"batch": msgs, "sentAt": now}).encode()


def load(url: str, write_key: str, eps: int, seconds: float, run: str) -> dict:
    """Send ``eps`` events/s for ``seconds`` on schedule; counts of what was sent and accepted."""
    interval = BATCH / eps  # seconds between requests, over all clients
    n = int(seconds / interval)
    auth = {"Authorization": "Basic " + base64.b64encode(f"{write_key}:".encode()).decode(), "Content-Type": "application/json"}
    start = time.monotonic() + 0.5
    counts = {"requests": 0, "accepted": 0, "errors": 0, "late_s": 0.0}
    refused: dict[str, int] = defaultdict(int)  # failed requests: HTTP status (with the body's "limit") or exception
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as http:
            for seq in range(k, n, CLIENTS):
                delay = start + seq * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                why = None
                try:
                    r = http.post(f"{url}/v1/batch", content=body(run, seq), headers=auth)
                    if r.status_code != 200:
                        why = f"{r.status_code} {r.json().get('limit') or r.json().get('code')}"
                except (httpx.HTTPError, ValueError) as e:
                    why = type(e).__name__
                with lock:
                    counts["requests"] += 1
                    counts["errors" if why else "accepted"] += 1 if why else BATCH
                    if why:
                        refused[why] += 1
                    counts["late_s"] = max(counts["late_s"], -delay)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts["seconds"] = round(time.monotonic() - start, 1)
    counts["achieved_eps"] = round(counts["accepted"] / counts["seconds"])
    counts["late_s"] = round(counts["late_s"], 2)
    counts["refused"] = dict(refused)
    return counts


def lag(home: Path) -> int | None:
    from headwater.config import Home
    from headwater.serve.progress import log_offsets

    try:
        return sum(t["lag"] for t in log_offsets(Home(home)).values())
    except Exception:  # noqa: BLE001 - no log yet: no figure
        return None


def measure(tmp: Path, label: str, args, pythonpath: str | None = None) -> dict:
    """``headwater up`` in a fresh home under ``tmp``: idle, then under load (module doc)."""
    from headwater.config import Home
    from headwater.runtime import free_port, wait_http

    home = tmp / f"{label}-home"
    home.mkdir()
    write_key = Home(home).add_source("bench")
    port = free_port()
    env = {**os.environ, "HEADWATER_HOME": str(home), "HEADWATER_WRITE_KEY": write_key, "HEADWATER_PORT": str(port),
           "HEADWATER_DAGSTER_PORT": str(free_port())}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    if args.collector_workers and not pythonpath:
        env["HEADWATER_COLLECTOR_WORKERS"] = str(args.collector_workers)
    console = tmp / f"{label}.console"
    with open(console, "wb") as out:
        up = subprocess.Popen([args.python, "-m", "headwater", "up"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s=180, proc=up)
        started = time.monotonic()
        time.sleep(args.idle_s)
        idle = {**totals(sample(up.pid)), "load_avg_1m": round(os.getloadavg()[0], 2)}
        show(f"{label} idle ({time.monotonic() - started:.0f} s after start; load average {idle['load_avg_1m']})", idle)
        samples: list[list[dict]] = []
        done = threading.Event()

        def sampler() -> None:
            while not done.wait(SAMPLE_S):
                samples.append(sample(up.pid))

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        sent = load(f"http://127.0.0.1:{port}", write_key, args.eps, args.load_s, label)
        sent["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other jobs on the 2 cores slow the stream, hardly memory
        done.set()
        thread.join()
        lag_end = lag(home)
        peak = max((totals(s) for s in samples), key=lambda t: t["rss_mb"])
        end = totals(samples[-1])
        show(f"{label} peak under load", peak)
        say(f"{label} load: {sent}; stream lag at the end {lag_end}")
        peak_by_role: dict[str, int] = defaultdict(int)
        for s in samples:
            for name, r in totals(s)["by_role"].items():
                peak_by_role[name] = max(peak_by_role[name], r["rss_mb"])
        wait_http(f"http://127.0.0.1:{env['HEADWATER_DAGSTER_PORT']}/server_info", timeout_s=180, proc=up)
        time.sleep(SAMPLE_S)
        ui_opened = totals(sample(up.pid))
        show(f"{label} Dagster UI opened", ui_opened)
    finally:
        up.terminate()  # `headwater up` stops its children on SIGTERM
        try:
            up.wait(90)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    text = console.read_text(errors="replace")
    return {
        "idle": idle,
        "ui_opened": ui_opened,
        "load": {"offered_eps": args.eps, "seconds": args.load_s, **sent, "lag_end": lag_end,
                 "peak": peak, "end_rss_mb": end["rss_mb"], "end_pss_mb": end["pss_mb"], "peak_rss_by_role_mb": dict(peak_by_role)},
        "console_warnings": [line for line in text.splitlines() if "Warning" in line or "Traceback" in line][:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="idle 30 s, load 20 s")
    ap.add_argument("--eps", type=int, default=5_000)
    ap.add_argument("--idle-s", type=float, default=None)
    ap.add_argument("--load-s", type=float, default=None)
    ap.add_argument("--collector-workers", type=int, default=None, help="setting collector.workers for `up` (default: the setting's)")
    ap.add_argument("--python", default=sys.executable, help="interpreter `headwater up` runs with (module doc)")
    ap.add_argument("--peer-rev", default=None, help="git revision whose source tree is measured in the same run as the peer")
    args = ap.parse_args()
    args.idle_s = args.idle_s if args.idle_s is not None else (30.0 if args.quick else 60.0)
    args.load_s = args.load_s if args.load_s is not None else (20.0 if args.quick else 60.0)

    out: dict = {"bench": "footprint", "quick": args.quick, "target_mb": TARGET_MB, "collector_workers": args.collector_workers,
                 "python": args.python, "pandas_installed": subprocess.run([args.python, "-c", "import pandas"], capture_output=True).returncode == 0}
    with tempfile.TemporaryDirectory(prefix="hw-bench-footprint-") as name:
        tmp = Path(name)
        out["headwater"] = measure(tmp, "headwater", args)
        peak = out["headwater"]["load"]["peak"]["rss_mb"]
        out["idle_rss_mb"], out["load_peak_rss_mb"] = out["headwater"]["idle"]["rss_mb"], peak
        out["ui_opened_rss_mb"] = out["headwater"]["ui_opened"]["rss_mb"]
        out["target_met"] = peak <= TARGET_MB
        if args.peer_rev:
            tree = tmp / "peer"
            tree.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.peer_rev, "src"], check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
            out["peer"] = {"rev": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.peer_rev], check=True,
                                                 capture_output=True, text=True).stdout.strip(),
                           **measure(tmp, "peer", args, pythonpath=str(tree / "src"))}
            out["peer_idle_rss_mb"] = out["peer"]["idle"]["rss_mb"]
            out["peer_load_peak_rss_mb"] = out["peer"]["load"]["peak"]["rss_mb"]
            out["ratio"] = round(peak / out["peer_load_peak_rss_mb"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
