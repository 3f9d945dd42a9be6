"""Overload: the collector at 2x its measured capacity, with nothing accepted ever lost.

    uv run python bench/overload.py [--quick] [--duration S] [--factor F]

1. A fresh ``HEADWATER_HOME`` (one source, :meth:`Home.add_source`) and, as
   ``headwater up --no-dagster`` runs them, ``headwater collector`` and ``headwater stream``
   as child processes on 127.0.0.1.
2. **Capacity**: a closed-loop locust run (``--capacity-users`` users, each sending its next
   request when the previous answer arrived) of Segment ``/v1/batch`` requests of 100 events
   (realistic messages from ``bench/collector.py``, unique ``messageId`` per event) for
   ``--capacity-s``; capacity = events answered 200 per second after a 1 s warm-up. The
   stream then drains before step 3.
3. **Overload**: an open-loop schedule at ``--factor`` (2) x capacity for ``--duration``
   (60 s; ``--quick`` 8 s): ``locust --headless`` with many users at a constant throughput
   each (``constant_throughput``, ``--user-rps``), every user sending at most its share of
   the planned requests (the request count is bounded as well as the duration).
   ``--clients sdk`` (default): a user sends one request at a time over one connection and
   the next waits for the answer, as the SDKs' consumer threads do (analytics-python,
   posthog-python): the 2x demand is there, but a slow collector slows each client instead of
   multiplying its connections. ``--clients open``: each request in its own greenlet and
   connection, so slow answers do not slow the schedule.
   Clients behave like the SDKs: a 429, a 5xx or a connection error / timeout (30 s) is
   retried, after ``Retry-After`` seconds when the answer carries one (else exponential
   backoff), at most ``--max-retries`` times within ``--retry-budget-s``; then the request
   is given up (``gave_up``). Every request and every answer is recorded (one JSON line per
   request: its key, the status and duration of every attempt, the ``accepted`` count of
   a 200); ``rejected`` counts attempts by status, ``error`` = no answer.
4. The stream drains (log lag 0); then ``bronze.events`` is counted per request key:
   ``persisted`` (distinct event ids), ``duplicates`` (rows beyond one per id), and
   ``lost`` = events answered 200 whose id is not in bronze (must be 0), over both phases.

Load runs in its own process (locust monkey-patches the standard library with gevent): the
locustfile is written from :data:`LOCUSTFILE` into the run's temporary directory. Event ids
are ``<key>e<NNN>``, ``key`` = ``<phase><user:04d>u<seq:07d>``, so a request's events are
found in bronze by its key. The collector's RSS is sampled every 0.5 s (psutil); the peak
is the larger of the samples and the kernel's high-water mark (``VmHWM``).
``rss_growth_after_10s`` = RSS at the end of the overload / RSS 10 s into it (``--quick``:
at half of it); ``rss_flat`` when that is at most 1.10. ``5xx`` counts answers >= 500 over
all attempts, 503 included.

A table goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import psutil

from collector import BATCH, make_message  # bench/collector.py: the same realistic messages

KEY = "@@KEY@@"  # placeholder of the request key in the body templates
KEY_RE = r"[a-z]+\d{4}u\d{7}"  # a request key inside an event id (see the module docstring)
FLAT_RATIO = 1.10

LOCUSTFILE = r'''
"""Segment /v1/batch clients for bench/overload.py (settings in HW_* environment variables)."""
import base64, itertools, json, os, random, time

import gevent
import gevent.pool
from locust import FastHttpUser, constant, constant_throughput, events, task
from locust.exception import StopUser

E = os.environ
TEMPLATES = [t.encode() for t in json.load(open(E["HW_TEMPLATES"]))]
PHASE, RATE, QUOTA, DURATION_S = E["HW_PHASE"], float(E["HW_RATE"]), int(E["HW_QUOTA"]), float(E["HW_DURATION_S"])
OPEN = E["HW_CLIENTS"] == "open"  # each request in its own greenlet; else one at a time, as an SDK
MAX_RETRIES, BUDGET_S = int(E["HW_MAX_RETRIES"]), float(E["HW_RETRY_BUDGET_S"])
HEADERS = {"Authorization": "Basic " + base64.b64encode((E["HW_WRITE_KEY"] + ":").encode()).decode(),
           "Content-Type": "application/json"}
OUT = open(E["HW_OUT"], "w")
_ids = itertools.count()
_active = [0]
_end = [0.0]


@events.test_start.add_listener
def _start(environment, **_):
    # The schedule's end, on the wall clock: locust's --run-time timer can fire seconds early
    # when the machine is busy (gevent's loop time is stale after a slow start-up).
    _end[0] = time.time() + DURATION_S


@events.quitting.add_listener
def _close(environment, **_):
    OUT.close()


def _wait_s(response, attempt):
    """Retry-After (delta seconds) if the answer has one, else 0.5 s doubling up to 8 s."""
    value = (response.headers or {}).get("Retry-After") if response is not None else None
    if value and value.strip().isdigit():
        return float(value)
    return min(0.5 * 2 ** attempt, 8.0)


class SegmentClient(FastHttpUser):
    """Sends a request every 1/RATE s (RATE 0: when the previous one is answered). With a
    rate, each request is delivered, retries included, in its own greenlet: the schedule of
    new requests does not wait for answers (open loop), as independent clients would not."""

    wait_time = constant_throughput(RATE) if RATE > 0 else constant(0)
    connection_timeout = 10.0
    network_timeout = 30.0
    concurrency = 32 if OPEN else 1  # connections of this user's pool (its deliveries in flight at once)

    def on_start(self):
        self.n, self.seq, self.pending = next(_ids), 0, gevent.pool.Group()
        _active[0] += 1
        if RATE > 0:  # spread the users' first requests over one period: a steady schedule, not a burst
            gevent.sleep(random.uniform(0, 1 / RATE))

    @task
    def send(self):
        if self.seq >= QUOTA or time.time() >= _end[0]:
            self.pending.join()  # this user's last deliveries finish their retries
            _active[0] -= 1
            if _active[0] == 0:  # every user is done: end the run before --run-time
                gevent.spawn(self.environment.runner.quit)
            raise StopUser()
        key = f"{PHASE}{self.n:04d}u{self.seq:07d}"
        body = TEMPLATES[self.seq % len(TEMPLATES)].replace(b"@@KEY@@", key.encode())
        self.seq += 1
        if RATE > 0 and OPEN:
            self.pending.spawn(self.deliver, key, body)
        else:
            self.deliver(key, body)

    def deliver(self, key, body):
        """POST until a final answer (SDK-like retries); one record line per request."""
        rec = {"k": key, "t0": time.time(), "s": [], "d": [], "ra": []}
        deadline = rec["t0"] + BUDGET_S
        while True:
            sent = time.time()
            with self.client.post("/v1/batch", data=body, headers=HEADERS, catch_response=True, name="/v1/batch") as r:
                status = r.status_code or 0  # 0: connection error / timeout
                if status == 200:
                    doc = r.json()
                    rec["a"], rec["r"] = doc.get("accepted"), doc.get("rejected")
                r.success()  # outcomes are judged by the bench from the records, not by locust
            rec["s"].append(status)
            rec["d"].append(round(time.time() - sent, 3))
            retry = status == 0 or status == 429 or status >= 500
            if not retry or len(rec["s"]) > MAX_RETRIES:
                break
            wait = _wait_s(r, len(rec["s"]) - 1)
            rec["ra"].append(wait)
            if time.time() + wait > deadline:
                break
            gevent.sleep(wait * (1 + 0.2 * random.random()))  # at least Retry-After, with jitter
        rec["t1"] = time.time()
        OUT.write(json.dumps(rec) + "\n")
'''


# -- processes -----------------------------------------------------------------------------
def _headwater(home: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "HEADWATER_HOME": str(home)}
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "headwater", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def vm_hwm_bytes(pid: int) -> int:
    """The kernel's resident-set high-water mark of ``pid`` (``/proc/<pid>/status`` VmHWM), 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
        return int(m.group(1)) * 1024 if m else 0
    except OSError:
        return 0


class RssSampler(threading.Thread):
    """Samples ``(wall time, RSS bytes)`` of one process every ``interval_s`` until :meth:`stop`."""

    def __init__(self, pid: int, interval_s: float = 0.5):
        super().__init__(daemon=True)
        self.proc, self.interval_s = psutil.Process(pid), interval_s
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append((time.time(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            self._done.wait(self.interval_s)

    def stop(self) -> None:
        self._done.set()
        self.join()

    def at(self, t: float) -> int:
        """The last sample taken at or before wall time ``t`` (the first one if none)."""
        before = [rss for when, rss in self.samples if when <= t]
        return before[-1] if before else self.samples[0][1]

    def peak(self, start: float, end: float) -> int:
        return max((rss for when, rss in self.samples if start <= when <= end), default=0)


def wait_drained(home: Path, timeout_s: float) -> float:
    """Block until the stream has committed everything in the log; seconds waited.
    ``TimeoutError`` past ``timeout_s``."""
    from headwater.config import Home
    from headwater.runtime import lag

    h, t = Home(home), time.monotonic()
    while (remaining := lag(h)) > 0:
        if time.monotonic() - t > timeout_s:
            raise TimeoutError(f"stream still {remaining} events behind after {timeout_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - t


# -- load ----------------------------------------------------------------------------------
def templates(n: int, seed: int = 11) -> list[str]:
    """``n`` request bodies of ``BATCH`` messages, ids ``<KEY>e<NNN>``, stamped now.
    ``timestamp`` = ``sentAt``, so the collector's clock-skew correction gives each event
    its receive time as event time."""
    import random

    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out = []
    for _ in range(n):
        batch = [make_message(rng, i) | {"messageId": f"{KEY}e{i:03d}", "timestamp": now} for i in range(BATCH)]
        out.append(json.dumps({"batch": batch, "sentAt": now}))
    return out


def run_locust(tmp: Path, port: int, write_key: str, phase: str, users: int, rate: float, quota: int,
               run_s: float, args) -> list[dict]:
    """One locust run (its own process); the records of every request it sent."""
    locustfile, out, log = tmp / "locustfile.py", tmp / f"{phase}.jsonl", tmp / f"{phase}.locust.log"
    locustfile.write_text(LOCUSTFILE)
    env = {**os.environ, "HW_TEMPLATES": str(tmp / "templates.json"), "HW_PHASE": phase, "HW_RATE": str(rate),
           "HW_QUOTA": str(quota), "HW_MAX_RETRIES": str(args.max_retries), "HW_RETRY_BUDGET_S": str(args.retry_budget_s),
           "HW_WRITE_KEY": write_key, "HW_OUT": str(out), "HW_DURATION_S": str(run_s),
           "HW_CLIENTS": args.clients}
    # The users end the schedule themselves (HW_DURATION_S, HW_QUOTA); --run-time is only the
    # outer bound, with room for the last requests' retries, and --stop-timeout lets a request
    # still running then finish, so no answer goes unrecorded.
    stop_timeout = int(args.retry_budget_s + 35)
    cmd = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--host", f"http://127.0.0.1:{port}",
           "-u", str(users), "-r", str(users), "-t", f"{math.ceil(run_s + args.retry_budget_s + 30)}s", "--stop-timeout", str(stop_timeout),
           "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0"]
    with open(log, "wb") as f:
        proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=run_s + stop_timeout + 60)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"locust ({phase}) failed with exit code {proc.returncode}:\n{log.read_text()[-3000:]}")
    for line in log.read_text().splitlines():  # e.g. locust's own "CPU usage above 90%" warning
        if ("/WARNING/" in line or "/ERROR/" in line) and "spawn rate is very high" not in line:  # all users start at once, on purpose
            print(f"locust ({phase}): {line}", file=sys.stderr, flush=True)
    return [json.loads(line) for line in out.read_text().splitlines() if line]


def _pct(values: list[float], p: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(p * len(values)))], 3) if values else None


def summarize(records: list[dict]) -> dict:
    """Counts over one phase's request records (statuses over all attempts); latencies in
    seconds: of one attempt per status (``error``: connection error or timeout) and from a
    request's first send to its 200 (``delivery_*``, retries included)."""
    attempts = Counter(s for r in records for s in r["s"])
    final_ok = [r for r in records if r["s"] and r["s"][-1] == 200]
    latency: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for status, d in zip(r["s"], r["d"]):
            latency["error" if status == 0 else str(status)].append(d)
    delivery = [r["t1"] - r["t0"] for r in final_ok]
    return {
        "attempt_latency_s": {k: {"p50": _pct(v, 0.5), "p99": _pct(v, 0.99)} for k, v in sorted(latency.items())},
        "delivery_p50_s": _pct(delivery, 0.5),
        "delivery_p99_s": _pct(delivery, 0.99),
        "tried": len(records),
        "attempts": sum(attempts.values()),
        "accepted": len(final_ok),
        "accepted_events": sum(r.get("a") or 0 for r in final_ok),
        "rejected_in_200": sum(r.get("r") or 0 for r in final_ok),
        "rejected": {("error" if s == 0 else str(s)): n for s, n in sorted(attempts.items()) if s != 200},  # error: no answer
        "5xx": sum(n for s, n in attempts.items() if s >= 500),
        "connection_errors": attempts.get(0, 0),
        "gave_up": len(records) - len(final_ok),
        "retried_requests": sum(1 for r in records if len(r["s"]) > 1),
    }


def bronze_by_key(home: Path) -> dict[str, tuple[int, int]]:
    """``{request key: (rows, distinct event ids)}`` of ``bronze.events``."""
    from headwater.config import Home
    from headwater.lake import sql
    from headwater.lake.store import Lake

    t = sql.query(Lake.of(Home(home)), f"SELECT regexp_extract(event_id, '{KEY_RE}') AS k, count(*) AS n, "
                                       "count(DISTINCT event_id) AS d FROM bronze.events GROUP BY k")
    return {k: (n, d) for k, n, d in zip(*(t.column(c).to_pylist() for c in ("k", "n", "d")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 3 s capacity run, 8 s of overload")
    ap.add_argument("--duration", type=float, default=None, help="overload seconds (default 60; --quick 8)")
    ap.add_argument("--capacity-s", type=float, default=None, help="closed-loop capacity run seconds (default 10; --quick 3)")
    ap.add_argument("--capacity-users", type=int, default=8, help="closed-loop connections of the capacity run")
    ap.add_argument("--factor", type=float, default=2.0, help="offered load / measured capacity")
    ap.add_argument("--user-rps", type=float, default=0.25, help="requests per second per simulated client (low: the schedule holds while answers are slow, so the load stays open-loop)")
    ap.add_argument("--clients", choices=("sdk", "open"), default="sdk",
                    help="sdk: each client sends one request at a time and queues the rest, as the SDKs' consumer "
                         "threads do; open: every request in its own greenlet and connection (no client-side queue)")
    ap.add_argument("--max-retries", type=int, default=8)
    ap.add_argument("--retry-budget-s", type=float, default=30.0, help="a request gives up when its next retry would start later than this")
    ap.add_argument("--drain-timeout-s", type=float, default=600.0)
    args = ap.parse_args()
    duration = args.duration or (8.0 if args.quick else 60.0)
    capacity_s = args.capacity_s or (3.0 if args.quick else 10.0)
    flat_after = min(10.0, duration / 2)

    from headwater.config import Home
    from headwater.runtime import free_port, wait_http

    began = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - began:5.1f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="hw-bench-overload-") as name:
        tmp = Path(name)
        home = tmp / "home"
        home.mkdir()
        write_key = Home(home).add_source("bench")  # the key is shown once, at creation
        (tmp / "templates.json").write_text(json.dumps(templates(16)))
        port = free_port()
        collector = _headwater(home, "collector", "--port", str(port), log=tmp / "collector.log")
        stream = _headwater(home, "stream", log=tmp / "stream.log")
        sampler = None
        try:
            wait_http(f"http://127.0.0.1:{port}/health", proc=collector)
            sampler = RssSampler(collector.pid)
            sampler.start()
            say(f"collector on 127.0.0.1:{port}, stream processor running")

            cap = run_locust(tmp, port, write_key, "cap", args.capacity_users, 0.0, 1_000_000, capacity_s, args)
            start = min(r["t0"] for r in cap) + 1.0  # 1 s warm-up
            end = max(r["t1"] for r in cap)
            capacity_eps = sum(r.get("a") or 0 for r in cap if r["s"][-1] == 200 and r["t1"] >= start) / (end - start)
            say(f"capacity: {capacity_eps:.0f} events/s ({len(cap)} requests, closed loop, {args.capacity_users} users)")
            say(f"drained the capacity run in {wait_drained(home, args.drain_timeout_s):.1f} s")

            offered_rps = args.factor * capacity_eps / BATCH
            users = max(1, math.ceil(offered_rps / args.user_rps))
            rate = offered_rps / users
            quota = math.ceil(rate * duration)  # per user: the run ends after `duration` or these many requests
            say(f"overload: {offered_rps * BATCH:.0f} events/s offered ({users} users x {rate:.2f} requests/s) for {duration:g} s")
            ovl = run_locust(tmp, port, write_key, "ovl", users, rate, quota, duration, args)
            t_first = min(r["t0"] for r in ovl)
            t_last = max(r["t1"] for r in ovl)
            rss_flat_at, rss_end = sampler.at(t_first + flat_after), sampler.at(t_last)
            drain_s = wait_drained(home, args.drain_timeout_s)
            say(f"drained the overload in {drain_s:.1f} s")
            peak = max(sampler.peak(0, time.time()), vm_hwm_bytes(collector.pid))
        finally:
            if sampler is not None:
                sampler.stop()
            _stop(collector)
            _stop(stream)
        if collector.returncode not in (0, -15):
            say((tmp / "collector.log").read_text()[-3000:])

        by_key = bronze_by_key(home)
        lost = 0
        for r in cap + ovl:
            if r["s"][-1] == 200:
                lost += max(0, (r.get("a") or 0) - by_key.get(r["k"], (0, 0))[1])
        ours = {k: v for k, v in by_key.items() if k}
        persisted = sum(d for _, d in ours.values())
        duplicates = sum(n - d for n, d in ours.values())
        persisted_ovl = sum(d for k, (_, d) in ours.items() if k.startswith("ovl"))

    s = summarize(ovl)
    c = summarize(cap)
    load_s = t_last - t_first
    result = {
        "bench": "overload",
        "quick": args.quick,
        "capacity_eps": round(capacity_eps),
        "offered_eps": round(offered_rps * BATCH),
        "factor": args.factor,
        "clients": args.clients,
        "duration_s": duration,
        "load_s": round(load_s, 1),
        "users": users,
        "sent_eps": round(s["tried"] * BATCH / duration),  # new requests on the schedule
        "attempted_eps": round(s["attempts"] * BATCH / load_s),  # retries included, until the last answer
        "accepted_eps": round(s["accepted_events"] / load_s),
        **s,
        "persisted": persisted_ovl,
        "lost": lost,
        "duplicates": duplicates,
        "persisted_all_phases": persisted,
        "capacity_phase": {k: c[k] for k in ("tried", "accepted", "accepted_events", "5xx", "rejected")},
        "drain_s": round(drain_s, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "rss_at_10s_mb": round(rss_flat_at / 2**20, 1),
        "rss_end_mb": round(rss_end / 2**20, 1),
        "rss_growth_after_10s": round(rss_end / rss_flat_at, 3),
        "rss_flat": rss_end / rss_flat_at <= FLAT_RATIO,
        "rss_flat_from_s": flat_after,
        "batch_size": BATCH,
    }
    rows = [("requests tried", s["tried"]), ("attempts (with retries)", s["attempts"]), ("accepted (200)", s["accepted"]),
            ("accepted events", s["accepted_events"]), ("persisted in bronze", persisted_ovl),
            *((f"rejected {k}", v) for k, v in s["rejected"].items()), ("5xx", s["5xx"]), ("gave up", s["gave_up"]),
            ("delivery p50 / p99 s", f"{s['delivery_p50_s']} / {s['delivery_p99_s']}"),
            *((f"attempt {k} p50 / p99 s", f"{v['p50']} / {v['p99']}") for k, v in s["attempt_latency_s"].items()),
            ("lost (both phases)", lost), ("duplicates in bronze", duplicates), ("peak RSS MB", result["peak_rss_mb"]),
            (f"RSS growth after {flat_after:g} s", result["rss_growth_after_10s"])]
    for label, value in rows:
        say(f"{label:>26}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
