"""Collector throughput and latency: Segment ``/v1/batch`` requests of 100 events, with 1 and 2 worker processes.

    uv run python bench/collector.py [--quick] [--workers 1,2] [--duration S] [--connections N-PER-WORKER] [--gzip]

For each worker count of ``--workers`` (setting ``collector.workers``), starts ``headwater
collector`` on 127.0.0.1 with a fresh temporary ``HEADWATER_HOME`` (with one worker it
serves in its own process, with more it supervises that many, sharing the port), then a
load-generator process: N keep-alive connections per worker (asyncio + uvloop, pre-encoded
requests, closed loop: each connection sends its next request when the previous answer
arrived) posting batches of 100 realistic events with HTTP Basic auth, for a fixed duration
after a warm-up. N is per worker (default 8: 8 connections for one worker, 16 for two) so
that each worker is offered the concurrency a single one gets: a closed loop's throughput is
at most connections / latency, and a request's latency includes its durable commit, so 8
connections over two workers measure the commit latency more than the workers (measured: 54k
events/s, against 102k with 16). A 200 from the collector means the events are durable in
the log (group commit, ``synchronous=FULL``); the bench checks the log holds every accepted
event afterwards.

Reports per worker count events/s, p50/p99 latency and the CPU time per request of the
collector's processes and of the load generator (from ``/proc``, after the warm-up: a cost
that, unlike events/s, other jobs on the machine hardly change), ``ratio`` = events/s of the
largest worker count / events/s of the smallest (2 vs 1 by default), and ``target_met``: the
largest count reaches :data:`TARGET_EPS` with p99 under :data:`TARGET_P99_MS` (issue 13, for
2 workers). As a peer it runs the same load against a bare Starlette + uvicorn endpoint (one
process) that reads the body and answers 200 — the HTTP stack's ceiling on this machine —
``vs_bare = headwater_eps / bare_eps``. Note the load generator shares the machine's cores
with the server under test, and the kernel hashes each connection to a worker, so a few
connections may not split evenly (16 over 2 workers: within 10/6 in 8 runs of 10).

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

WRITE_KEY = "bench-write-key-0001"
BATCH = 100
TARGET_EPS = 100_000
TARGET_P99_MS = 50.0

_BARE = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def batch(request):
    await request.body()
    return Response(b'{"success":true}', media_type="application/json")

async def health(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/v1/batch", batch, methods=["POST"]), Route("/health", health)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False, server_header=False, date_header=False)
"""

_COLLECTOR = [sys.executable, "-m", "headwater", "collector", "--port"]


# -- payloads ------------------------------------------------------------------------------
EVENTS = ["Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Signed Up", "Search"]
LIBS = [
    {"name": "analytics.js", "version": "2.11.1"},
    {"name": "analytics-ios", "version": "4.1.8"},
    {"name": "analytics-android", "version": "4.11.3"},
    {"name": "analytics-python", "version": "2.3.2"},
]


def make_message(rng: random.Random, i: int) -> dict:
    """A Segment message of ~500-700 bytes, like an SDK's (track mostly, some page/identify)."""
    user = rng.randrange(20_000)
    lib = rng.choice(LIBS)
    ctx = {"library": lib, "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}", "locale": "en-US"}
    if lib["name"] == "analytics.js":
        ctx["page"] = {"path": "/products/42", "url": "https://shop.example/products/42", "referrer": "https://www.google.com/"}
        ctx["userAgent"] = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
    elif lib["name"] != "analytics-python":
        ctx["device"] = {"type": "ios" if "ios" in lib["name"] else "android", "model": "Pixel 7"}
        ctx["os"] = {"name": "iOS" if "ios" in lib["name"] else "Android", "version": "17.2"}
    kind = rng.random()
    m = {
        "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "anonymousId": f"anon-{user:06d}-{rng.randrange(3)}",
        "timestamp": f"2024-03-01T12:{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z",
        "context": ctx,
    }
    if rng.random() < 0.7:
        m["userId"] = f"user-{user:06d}@example.com"
    if kind < 0.8:
        m.update(type="track", event=rng.choice(EVENTS), properties={
            "product_id": f"sku-{rng.randrange(5000)}", "price": round(rng.uniform(1, 300), 2), "currency": "USD",
            "quantity": rng.randrange(1, 4), "category": rng.choice(["shoes", "hats", "books"]), "position": i % 20,
        })
    elif kind < 0.95:
        m.update(type="page", name="Product", properties={"path": "/products/42", "title": "Product 42"})
    else:
        m.update(type="identify", traits={"plan": rng.choice(["free", "pro"]), "created_at": "2023-11-02T10:00:00Z"})
        m.setdefault("userId", f"user-{user:06d}@example.com")
    return m


def make_requests(n: int, port: int, use_gzip: bool, seed: int = 7) -> list[bytes]:
    """``n`` distinct pre-encoded HTTP/1.1 requests of ``BATCH`` messages each."""
    import gzip

    rng = random.Random(seed)
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    out = []
    for _ in range(n):
        body = json.dumps({"batch": [make_message(rng, i) for i in range(BATCH)], "sentAt": "2024-03-01T12:59:59.000Z"}).encode()
        extra = ""
        if use_gzip:
            body = gzip.compress(body, 6)
            extra = "Content-Encoding: gzip\r\n"
        head = (
            f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: application/json\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


# -- load generator (runs in its own process) ----------------------------------------------
_ACCEPTED = re.compile(rb'"accepted":(\d+)')
_LENGTH = re.compile(rb"(?i)content-length:\s*(\d+)")


async def _connection(port: int, reqs: list[bytes], offset: int, warm_end: float, end: float, out: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            writer.write(reqs[i % len(reqs)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = _LENGTH.search(head)
            body = await reader.readexactly(int(m.group(1))) if m else b""
            t1 = time.perf_counter()
            if t0 < warm_end:
                continue
            if status != 200:
                out["errors"] += 1
                if out["errors"] <= 3:
                    out["error_samples"].append(f"{status} {body[:200]!r}")
                continue
            a = _ACCEPTED.search(body)
            out["events"] += int(a.group(1)) if a else BATCH
            out["requests"] += 1
            out["latencies"].append(t1 - t0)
    finally:
        writer.close()


def _cpu_s(procs) -> float:
    """User + system CPU seconds of ``procs`` (psutil processes) so far."""
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def generate(port: int, connections: int, warmup: float, duration: float, n_requests: int, use_gzip: bool,
             server_pid: int | None = None) -> dict:
    """Run the load against ``127.0.0.1:port``; counts and latencies after the warm-up, and
    with ``server_pid`` the CPU time of that process and its children (the workers) per
    request after the warm-up, beside this generator's own: a cost per request that, unlike
    events/s, a busy machine hardly changes."""
    import psutil
    import uvloop

    reqs = make_requests(n_requests, port, use_gzip)
    out = {"events": 0, "requests": 0, "errors": 0, "latencies": [], "error_samples": []}
    cpu: dict[str, float] = {}
    me = psutil.Process()

    def sample(key: str) -> None:
        if server_pid is not None:
            server = psutil.Process(server_pid)
            cpu[key] = _cpu_s([server, *server.children(recursive=True)])
        cpu[key + "_self"] = _cpu_s([me])

    async def run_all():
        start = time.perf_counter()
        warm_end, end = start + warmup, start + warmup + duration
        asyncio.get_running_loop().call_later(warmup, sample, "warm")
        await asyncio.gather(*(_connection(port, reqs, k * 7, warm_end, end, out) for k in range(connections)))
        sample("end")

    uvloop.run(run_all())
    lat = sorted(out.pop("latencies"))
    per_request = max(1, out["requests"] + out["errors"]) / 1000  # answered after the warm-up, in thousands

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else float("nan")

    return {
        **out,
        "duration_s": duration,
        "eps": round(out["events"] / duration),
        "rps": round(out["requests"] / duration, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 2) if lat else float("nan"),
        "body_bytes": sum(len(r) for r in reqs) // len(reqs),
        "server_cpu_ms_per_request": round((cpu["end"] - cpu["warm"]) / per_request, 3) if "end" in cpu else None,
        "loadgen_cpu_ms_per_request": round((cpu["end_self"] - cpu["warm_self"]) / per_request, 3),
    }


# -- orchestration ------------------------------------------------------------------------
def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _run_load(port: int, server_pid: int, connections: int, args) -> dict:
    cmd = [sys.executable, __file__, "--generate", str(port), "--server-pid", str(server_pid), "--connections", str(connections),
           "--warmup", str(args.warmup), "--duration", str(args.duration), "--requests", str(args.requests)]
    if args.gzip:
        cmd.append("--gzip")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _phase(name: str, server_cmd: list[str], env: dict, args, profile: str | None = None, connections: int | None = None) -> dict:
    from headwater.runtime import free_port, wait_http

    port = free_port()
    proc = subprocess.Popen([*server_cmd, str(port)], env=env)
    spy = None
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s=120, proc=proc)
        if profile:  # sample the running server (and its workers) during the load (py-spy on PATH)
            fmt = ["--format", "raw"] if profile.endswith(".txt") else []  # collapsed stacks / flame graph
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--subprocesses", "-o", profile, "-r", "250",
                                    "--duration", str(int(args.warmup + args.duration)), *fmt])
        res = _run_load(port, proc.pid, connections or args.connections, args)
        if spy is not None:
            spy.wait(60)
    finally:
        _stop(proc)
    print(f"{name:>12}: {res['eps']:>8} events/s  {res['rps']:>7} req/s  p50 {res['p50_ms']} ms  p99 {res['p99_ms']} ms  "
          f"max {res['max_ms']} ms  errors {res['errors']}  CPU/request {res['server_cpu_ms_per_request']} ms "
          f"(load generator {res['loadgen_cpu_ms_per_request']} ms)  ({res['body_bytes']} B/request)", flush=True)
    for s in res.get("error_samples", []):
        print(f"              error: {s}", flush=True)
    return res


def _headwater(workers: int, args) -> dict:
    """One phase: ``headwater collector`` with ``workers`` processes on a fresh home; the
    load's figures and the events durable in the log afterwards (checked >= accepted)."""
    from headwater.config import Home
    from headwater.log import open_log

    with tempfile.TemporaryDirectory(prefix="headwater-bench-") as tmp:
        env = {**os.environ, "HEADWATER_HOME": tmp, "HEADWATER_COLLECTOR_WORKERS": str(workers)}
        env.pop("HEADWATER_PARTITIONS", None)
        home = Home(Path(tmp))
        home.add_source("bench", WRITE_KEY)
        res = _phase(f"{workers} worker{'s' if workers > 1 else ''}", _COLLECTOR, env, args, args.profile, args.connections * workers)
        log = open_log(home.settings.log_url)
        res["durable_in_log"] = sum(log.end_offsets("events").values())
        log.close()
    # accepted after warm-up; the log also holds the warm-up's events
    print(f"     durable: {res['durable_in_log']} events in the log (>= {res['events']} accepted after warm-up)", flush=True)
    if res["durable_in_log"] < res["events"]:
        raise SystemExit("accepted events missing from the log")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 s of load per server (default 20 s)")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to measure, in one run (default 1,2)")
    ap.add_argument("--duration", type=float, default=None)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--connections", type=int, default=8, help="keep-alive connections per worker (the bare peer: this many)")
    ap.add_argument("--requests", type=int, default=200, help="distinct pre-encoded request bodies")
    ap.add_argument("--gzip", action="store_true", help="send Content-Encoding: gzip bodies")
    ap.add_argument("--profile", metavar="FILE", help="sample the collector with py-spy (on PATH) into FILE (.svg flame graph, .txt collapsed stacks); skips the bare peer")
    ap.add_argument("--no-bare", action="store_true", help="skip the bare Starlette peer (vs_bare is then null)")
    ap.add_argument("--generate", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.duration is None:
        args.duration = 5.0 if args.quick else 20.0

    if args.generate:
        print(json.dumps(generate(args.generate, args.connections, args.warmup, args.duration, args.requests, args.gzip,
                                  args.server_pid)))
        return

    counts = sorted({int(w) for w in args.workers.split(",")})
    print(f"collector bench: batches of {BATCH} events, {args.connections} keep-alive connections per worker, "
          f"{args.duration:g} s (+{args.warmup:g} s warm-up) per server, workers {counts}, {os.cpu_count()} cores"
          f"{', gzip' if args.gzip else ''}", flush=True)
    if args.profile or args.no_bare:
        bare = {"eps": 0, "p50_ms": None, "p99_ms": None}
    else:
        bare = _phase("bare", [sys.executable, "-c", _BARE], {**os.environ}, args)
    runs = {n: _headwater(n, args) for n in counts}

    top = runs[counts[-1]]
    result = {
        "bench": "collector",
        "workers": {str(n): {k: r[k] for k in ("eps", "p50_ms", "p99_ms", "max_ms", "errors", "events", "durable_in_log",
                                               "server_cpu_ms_per_request", "loadgen_cpu_ms_per_request")}
                    for n, r in runs.items()},
        "headwater_eps": top["eps"],  # at the largest worker count
        "p50_ms": top["p50_ms"],
        "p99_ms": top["p99_ms"],
        "ratio": round(top["eps"] / runs[counts[0]]["eps"], 3) if runs[counts[0]]["eps"] else None,
        "target_met": top["eps"] >= TARGET_EPS and top["p99_ms"] < TARGET_P99_MS,
        "bare_eps": bare["eps"],
        "bare_p50_ms": bare["p50_ms"],
        "bare_p99_ms": bare["p99_ms"],
        "vs_bare": round(top["eps"] / bare["eps"], 3) if bare["eps"] else None,
        "errors": sum(r["errors"] for r in runs.values()),
        "batch_size": BATCH,
        "connections_per_worker": args.connections,
        "duration_s": args.duration,
        "gzip": args.gzip,
        "request_bytes": top["body_bytes"],
        "cores": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
