"""Soak: half of the collector's capacity for 30 minutes with the stream and batches running.

    uv run python bench/soak.py [--minutes M] [--quick] [--dagster] [--batch-every-s S]

1. A fresh ``HEADWATER_HOME`` with one source, and ``headwater up --no-dagster`` (collector +
   stream processor, supervised; ``--dagster`` also runs the Dagster UI + daemon).
2. Capacity as in ``bench/overload.py`` (closed-loop locust run, ``--capacity-s``), then the
   stream drains.
3. Load at ``--factor`` (0.5) x capacity for ``--minutes`` (30; ``--quick`` 2): locust users
   at constant throughput, SDK-like retries (``bench/overload.py``'s locustfile). Meanwhile
   ``headwater batch`` runs at the start and every ``--batch-every-s`` (3600: the hourly
   batch, so once in 30 minutes) in its own process, and every ``--sample-s`` (30; ``--quick``
   10) the bench samples, per process of the platform (``up`` and its children, the running
   batch): RSS and open file descriptors (``/proc/<pid>/fd``), grouped by role (``up``,
   ``collector``, ``stream``, ``dagster``, ``batch``); the log lag (events not yet committed
   by the stream) and ``bronze.events`` rows from the ``headwater status --format json``
   document (:func:`headwater.serve.status.status`).
4. After the load the stream drains and ``bronze.events`` is checked against every answer,
   as in the overload bench: ``lost`` (answered 200, not in bronze) must be 0.

Growth figures compare the last sample with the first sample taken after ``--settle-s``
(60 s; ``--quick`` 20 s) of load: ``rss_growth`` (total RSS of the platform without the
batch process, end / settled) and ``fd_growth`` (end - settled). The table goes to stderr;
the last line of stdout is one JSON object. Not run in CI.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import psutil

from overload import BATCH, bronze_by_key, run_locust, summarize, templates, wait_drained  # bench/overload.py

ROLES = ("collector", "stream", "batch", "up")


def role(proc: psutil.Process) -> str:
    """``collector`` / ``stream`` / ``batch`` / ``up`` for ``python -m headwater <command>``,
    ``dagster`` for the Dagster processes, else ``other``."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "other"
    if "headwater" in cmd:
        rest = cmd[cmd.index("headwater") + 1 :]
        for arg in rest:
            if arg in ROLES:
                return arg
    return "dagster" if any("dagster" in a for a in cmd) else "other"


def sample_processes(roots: list[int]) -> dict[str, dict[str, int]]:
    """``{role: {"rss": bytes, "fds": open descriptors, "procs": n}}`` over ``roots`` and their descendants."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: {"rss": 0, "fds": 0, "procs": 0})
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            try:
                rss, fds = p.memory_info().rss, p.num_fds()
            except psutil.Error:
                continue
            r = out[role(p)]
            r["rss"] += rss
            r["fds"] += fds
            r["procs"] += 1
    return dict(out)


def status(home: Path) -> dict:
    """The document of ``headwater status --format json`` for ``home``, built in this process
    (a ``headwater`` process per sample would cost a few CPU seconds of the 2 shared cores)."""
    from headwater.config import Home
    from headwater.serve.status import status as get_status

    return get_status(Home(home))


class Batches(threading.Thread):
    """Runs ``headwater batch`` now and every ``every_s`` until :meth:`stop`; keeps each run's
    exit code and seconds, and the running process (for sampling)."""

    def __init__(self, home: Path, every_s: float, log: Path):
        super().__init__(daemon=True)
        self.home, self.every_s, self.log = home, every_s, log
        self.runs: list[dict] = []
        self.proc: subprocess.Popen | None = None
        self._done = threading.Event()

    def run(self) -> None:
        env = {**os.environ, "HEADWATER_HOME": str(self.home)}
        while not self._done.is_set():
            t = time.monotonic()
            with open(self.log, "ab") as f:
                self.proc = subprocess.Popen([sys.executable, "-m", "headwater", "batch", "--format", "json"],
                                             env=env, stdout=f, stderr=subprocess.STDOUT)
                code = self.proc.wait()
            self.runs.append({"exit_code": code, "seconds": round(time.monotonic() - t, 1)})
            self.proc = None
            self._done.wait(max(0.0, self.every_s - (time.monotonic() - t)))

    def stop(self) -> None:
        self._done.set()
        self.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=None, help="load minutes (default 30; --quick 2)")
    ap.add_argument("--quick", action="store_true", help="2 minutes, samples every 10 s")
    ap.add_argument("--factor", type=float, default=0.5, help="offered load / measured capacity")
    ap.add_argument("--capacity-s", type=float, default=10.0)
    ap.add_argument("--capacity-users", type=int, default=8)
    ap.add_argument("--user-rps", type=float, default=2.0, help="requests per second per simulated client")
    ap.add_argument("--batch-every-s", type=float, default=3600.0, help="seconds between `headwater batch` runs (one at the start)")
    ap.add_argument("--sample-s", type=float, default=None, help="seconds between samples (default 30; --quick 10)")
    ap.add_argument("--settle-s", type=float, default=None, help="growth is measured from the first sample after this (default 60; --quick 20)")
    ap.add_argument("--dagster", action="store_true", help="also run the Dagster UI + daemon (`headwater up`)")
    ap.add_argument("--max-retries", type=int, default=8)
    ap.add_argument("--retry-budget-s", type=float, default=30.0)
    ap.add_argument("--drain-timeout-s", type=float, default=600.0)
    args = ap.parse_args()
    minutes = args.minutes or (2.0 if args.quick else 30.0)
    sample_s = args.sample_s or (10.0 if args.quick else 30.0)
    settle_s = args.settle_s if args.settle_s is not None else (20.0 if args.quick else 60.0)
    duration = minutes * 60

    from headwater.config import Home
    from headwater.runtime import free_port, wait_http

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="hw-bench-soak-") as name:
        tmp = Path(name)
        home = tmp / "home"
        home.mkdir()
        write_key = Home(home).add_source("bench")  # the key is shown once, at creation
        (tmp / "templates.json").write_text(json.dumps(templates(16)))
        port = free_port()
        env = {**os.environ, "HEADWATER_HOME": str(home), "HEADWATER_WRITE_KEY": write_key}
        up_log = open(tmp / "up.log", "ab")
        up = subprocess.Popen([sys.executable, "-m", "headwater", "up", "--port", str(port),
                               "--dagster" if args.dagster else "--no-dagster"], env=env, stdout=up_log, stderr=subprocess.STDOUT)
        samples: list[dict] = []
        batches = Batches(home, args.batch_every_s, tmp / "batch.log")
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout_s=120, proc=up)
            cap = run_locust(tmp, port, write_key, "cap", args.capacity_users, 0.0, 1_000_000, args.capacity_s, args)
            start = min(r["t0"] for r in cap) + 1.0
            capacity_eps = sum(r.get("a") or 0 for r in cap if r["s"][-1] == 200 and r["t1"] >= start) / (max(r["t1"] for r in cap) - start)
            say(f"capacity: {capacity_eps:.0f} events/s; drained in {wait_drained(home, args.drain_timeout_s):.1f} s")

            offered_rps = args.factor * capacity_eps / BATCH
            users = max(1, math.ceil(offered_rps / args.user_rps))
            rate = offered_rps / users
            say(f"soak: {offered_rps * BATCH:.0f} events/s offered ({users} users x {rate:.2f} requests/s) "
                f"for {minutes:g} min, batch every {args.batch_every_s:g} s, samples every {sample_s:g} s")
            box: dict = {}
            load = threading.Thread(target=lambda: box.update(records=run_locust(
                tmp, port, write_key, "soak", users, rate, math.ceil(rate * duration), duration, args)), daemon=True)
            t0 = time.time()
            load.start()
            batches.start()
            say(f"{'t_s':>6} {'collector_mb':>12} {'stream_mb':>9} {'dagster_mb':>10} {'batch_mb':>8} {'total_mb':>8} "
                f"{'fds':>5} {'lag':>8} {'bronze_rows':>11}")
            for tick in itertools.count():
                t_s = time.time() - t0
                roles = sample_processes([up.pid] + ([batches.proc.pid] if batches.proc else []))
                st = status(home)
                s = {"t_s": round(t_s), "roles": roles,
                     "rss_mb": round(sum(r["rss"] for k, r in roles.items() if k != "batch") / 2**20, 1),
                     "fds": sum(r["fds"] for k, r in roles.items() if k != "batch"),
                     "lag": st.get("lag"), "bronze_rows": st.get("tables", {}).get("bronze.events")}
                samples.append(s)

                def mb(k):
                    return f"{roles[k]['rss'] / 2**20:.0f}" if k in roles else "-"

                say(f"{s['t_s']:>6} {mb('collector'):>12} {mb('stream'):>9} {mb('dagster'):>10} {mb('batch'):>8} "
                    f"{s['rss_mb']:>8.0f} {s['fds']:>5} {s['lag']!s:>8} {s['bronze_rows']!s:>11}")
                if not load.is_alive():
                    break
                if up.poll() is not None:
                    raise RuntimeError(f"headwater up exited with code {up.returncode}")
                time.sleep(max(0.0, t0 + (tick + 1) * sample_s - time.time()))
            load.join()
            if "records" not in box:
                raise RuntimeError("the load run failed (see the traceback above)")
            batches.stop()
            drain_s = wait_drained(home, args.drain_timeout_s)
        finally:
            if batches.is_alive():
                batches.stop()
            up.terminate()  # `headwater up` stops its children on SIGTERM
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait()
        by_key = bronze_by_key(home)

    records = box["records"]
    lost = sum(max(0, (r.get("a") or 0) - by_key.get(r["k"], (0, 0))[1]) for r in cap + records if r["s"][-1] == 200)
    summary = summarize(records)
    settled = next((s for s in samples if s["t_s"] >= settle_s), samples[0])
    last = samples[-1]
    result = {
        "bench": "soak",
        "minutes": minutes,
        "capacity_eps": round(capacity_eps),
        "offered_eps": round(offered_rps * BATCH),
        "users": users,
        **{k: summary[k] for k in ("tried", "accepted", "accepted_events", "rejected", "5xx", "gave_up")},
        "lost": lost,
        "duplicates": sum(n - d for k, (n, d) in by_key.items() if k),
        "drain_s": round(drain_s, 1),
        "batches": batches.runs,
        "rss_settled_mb": settled["rss_mb"],
        "rss_end_mb": last["rss_mb"],
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "rss_growth": round(last["rss_mb"] / settled["rss_mb"], 3),
        "rss_end_by_role_mb": {k: round(r["rss"] / 2**20, 1) for k, r in last["roles"].items()},
        "fds_settled": settled["fds"],
        "fds_end": last["fds"],
        "fds_max": max(s["fds"] for s in samples),
        "fd_growth": last["fds"] - settled["fds"],
        "lag_max": max((s["lag"] or 0) for s in samples),
        "lag_end_of_load": last["lag"],
        "samples": [[s["t_s"], s["rss_mb"], s["fds"], s["lag"], s["bronze_rows"]] for s in samples],
        "samples_columns": ["t_s", "rss_mb", "fds", "lag", "bronze_rows"],
        "dagster": args.dagster,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
