"""Stream processor end to end: headwater's engine vs Spark Structured Streaming, freshness, memory.

    uv run python bench/stream.py [--quick] [--events N] [--freshness-seconds S]

1. **Input**: ``--events`` generated canonical events (default 2,000,000; ``--quick``
   100,000) with 5 % late (event time up to 10 min behind), 2 % duplicates (re-sends of an
   earlier event: same ``event_id`` and event time, later ``received_at``) and one hot user
   sending 30 % of the traffic, over 20,000 users and 2 h of event time. They are appended to
   the event log (``open_log(home.settings.log_url)``: SQLite) under a temporary
   ``HEADWATER_HOME`` as the collector would: requests of
   ``--request-events`` events split by identity key over 4 partitions (the hot user's
   partition gets ~1/3 of everything), 20 requests per log transaction.
2. **Throughput** (log → ``bronze.events`` + the real-time aggregates of
   ``DEFAULT_PIPELINE`` committed in Delta): each engine in its own process, on the same
   log, timed from the start of the run to its end (process and JVM start-up excluded; Spark
   first runs the same queries over a 5,000-event log, untimed, to warm up the JVM):
   - headwater: ``BronzeStream(...).run(available_now=True)``, default ``StreamConfig``
     (50,000 events per partition per batch);
   - headwater again on the same input without the hot user (``headwater_eps_without_hot_user``):
     a hot key must not make it slower per event;
   - Spark: :class:`headwater.stream.spark.runner.SparkPipeline` (bronze query + one query
     per aggregate, sessions in append mode as Spark requires) with ``Trigger.AvailableNow``
     and ONE micro-batch holding the whole log — its best configuration here (its
     throughput grows with batch size; per-batch overhead is ~1 s) — ``local[2]``, 2 shuffle
     partitions, default (HDFS-backed, in-memory) state store, 2 GB driver.
   ``ratio = headwater_eps / spark_eps``.
3. **Freshness** at ``--offered-eps`` (20,000 events/s) for ``--freshness-seconds``: a
   producer appends pre-encoded requests on schedule (event time = send time) while the
   headwater processor runs with its processing-time trigger; per event, freshness = the
   wall-clock time its batch committed (``commits/N`` ``committed_ms``, after the
   ``realtime.*`` upserts) − its log append time (``_appended_ms``). p50 / p95 over all events.
4. **Peak RSS**: sum of the resident sets of the engine's process tree (for Spark: the
   Python driver, the JVM and its Python workers), sampled every 0.2 s. headwater's
   processes keep pandas out as the ``headwater stream`` program does (``defer_pandas``).
5. **Load**: the machine's 1-minute load average at the start and the end of the run
   (``load_avg_1m_start`` / ``_end``): on a shared machine the throughputs depend on it.

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.ingest.partitioning import event_appends
from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.log import open_log

USERS = 20_000
HOT_SHARE, LATE_SHARE, DUP_SHARE = 0.30, 0.05, 0.02
MAX_LATE_S = 600
NAMES = np.array(["Page Viewed", "Product Viewed", "Product Added", "Checkout Started", "Order Completed", "Signed In", "Search", "Share"])
PLATFORMS = np.array(["web", "ios", "android"])
PARTITIONS = 4
REQUESTS_PER_TXN = 20


# -- input ---------------------------------------------------------------------------------
def user_token(i: int) -> str:
    """User ``i``'s id as the collector stores it: a hex token (its HMAC); ``USERS`` is the hot user."""
    return hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest()


def generate(n: int, start_us: int, span_s: float, seed: int = 1, hot_share: float = HOT_SHARE) -> pa.Table:
    """``n`` canonical events (``EVENT_SCHEMA``) in arrival order; event time spread evenly over
    ``span_s`` seconds from ``start_us``, then 5 % moved back by up to 10 min; 2 % are
    duplicates of an event 1..2,000 positions earlier. Vectorised (numpy / Arrow)."""
    rng = np.random.default_rng(seed)
    users = pa.array([user_token(i) for i in range(USERS + 1)])
    user = np.where(rng.random(n) < hot_share, USERS, rng.integers(0, USERS, n))  # USERS = the hot user
    ts = start_us + (np.arange(n) * (span_s * 1e6 / n)).astype(np.int64)
    received = ts.copy()
    late = rng.random(n) < LATE_SHARE
    ts[late] -= rng.integers(1, MAX_LATE_S * 1_000_000, late.sum())
    ids = np.arange(n)
    dup = np.flatnonzero(rng.random(n) < DUP_SHARE)
    dup = dup[dup > 2000]
    src = dup - rng.integers(1, 2000, len(dup))
    ids[dup], ts[dup], user[dup] = ids[src], ts[src], user[src]
    name, platform = rng.integers(0, len(NAMES), n), rng.integers(0, len(PLATFORMS), n)
    name[dup], platform[dup] = name[src], platform[src]
    event_ts = pa.array(ts, pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "event_id": pc.binary_join_element_wise("evt-", pa.array(ids).cast(pa.string()), ""),
            "event_type": pa.array(np.full(n, "track")),
            "event_name": pa.array(NAMES[name]),
            "anonymous_id": pa.nulls(n, pa.string()),
            "user_id": users.take(pa.array(user)),
            "event_ts": event_ts,
            "received_at": pa.array(received, pa.timestamp("us", tz="UTC")),
            "source": pa.array(np.full(n, "bench")),
            "surface": pa.array(np.where(PLATFORMS[platform] == "web", "web", "mobile")),
            "platform": pa.array(PLATFORMS[platform]),
            "properties": pa.array(np.full(n, '{"price": 12.5, "currency": "EUR"}')),
            "context": pa.array(np.full(n, '{"library": {"name": "analytics-python", "version": "2.3.3"}}')),
            "schema_version": pa.nulls(n, pa.string()),
            "ds": event_ts.cast(pa.date32()),
        },
        schema=EVENT_SCHEMA,
    )


def requests(events: pa.Table, per_request: int) -> list[list]:
    """The log appends of each request (one ``Append`` per partition it touches)."""
    return [event_appends(events.slice(i, per_request), PARTITIONS) for i in range(0, events.num_rows, per_request)]


def fill_log(home: Home, events: pa.Table, per_request: int) -> None:
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", PARTITIONS)
    log.ensure_topic("bad_rows", 1)
    reqs = requests(events, per_request)
    for i in range(0, len(reqs), REQUESTS_PER_TXN):
        log.append([a for r in reqs[i : i + REQUESTS_PER_TXN] for a in r])
    log.close()


# -- processes and memory ------------------------------------------------------------------
def _tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2 :].split()
            pid = int(entry)
            children.setdefault(int(fields[1]), []).append(pid)
            rss[pid] = int(fields[21]) * page
        except (OSError, ValueError, IndexError):
            continue
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def run_measured(
    code: str, args: list[str], started: Callable[[subprocess.Popen], None] | None = None, env: dict[str, str] | None = None
) -> tuple[dict, int]:
    """Run ``python -c code *args`` (``started`` gets the process once it runs, ``env`` is
    added to the environment); return its last stdout line as JSON and the peak RSS (bytes)
    of its process tree."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    if started is not None:
        started(proc)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"engine process failed with exit code {proc.returncode}:\n{out[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), peak


# Both headwater processes keep pandas out, as the `headwater stream` program does
# (headwater.spark.defer_pandas): pyarrow would otherwise import it (~45 MB resident).
_HEADWATER = """
import json, sys, time
from pathlib import Path
from headwater.spark import defer_pandas
defer_pandas()
from headwater.config import Home
from headwater.stream.processor import BronzeStream
stream = BronzeStream(Home(Path(sys.argv[1])))
t = time.perf_counter()
stream.run(available_now=True)
elapsed = time.perf_counter() - t
last = stream.checkpoint.latest_committed()
info = stream.checkpoint.read_commit(last)
print(json.dumps({"seconds": elapsed, "batches": last + 1, "totals": info["totals"], "state_rows": info["metrics"].get("state_rows")}))
"""

_SPARK = """
import json, sys, time
from pathlib import Path
from headwater.config import Home
from headwater.spark import session
from headwater.stream.pipeline import DEFAULT_PIPELINE
from headwater.stream.spark.runner import SparkConfig, SparkPipeline, for_spark
spark = session("bench-stream")
if sys.argv[3] == "rocksdb":
    spark.conf.set("spark.sql.streaming.stateStore.providerClass", "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider")
cap = int(sys.argv[4]) or None
# Warm-up (not timed): the same queries over a small log, so the timed run meets a JVM that
# has loaded and JIT-compiled the code paths, as a long-running Spark application would.
SparkPipeline(spark, Home(Path(sys.argv[5])), for_spark(DEFAULT_PIPELINE), SparkConfig(), log_url=sys.argv[6]).run_available_now()
runner = SparkPipeline(spark, Home(Path(sys.argv[1])), for_spark(DEFAULT_PIPELINE), SparkConfig(max_records_per_partition=cap), log_url=sys.argv[2])
t = time.perf_counter()
queries = runner.run_available_now()
elapsed = time.perf_counter() - t
rows = sum(p["numInputRows"] for p in queries[0].recentProgress)
durations = {q.name: {k: sum(p["durationMs"].get(k, 0) for p in q.recentProgress) for k in ("triggerExecution", "addBatch", "latestOffset", "queryPlanning")} for q in queries}
print(json.dumps({"seconds": elapsed, "rows": rows, "batches": [len([p for p in q.recentProgress if p["numInputRows"]]) for q in queries], "durations_ms": durations}))
spark.stop()
"""

# Freshness: the processor as `headwater stream` would run it (processing-time trigger).
_LIVE = """
import signal, sys, threading
from pathlib import Path
from headwater.spark import defer_pandas
defer_pandas()
from headwater.config import Home
from headwater.stream.processor import BronzeStream, StreamConfig
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stream = BronzeStream(Home(Path(sys.argv[1])), StreamConfig(trigger_interval_s=float(sys.argv[2]), retain_batches=1_000_000))
Path(sys.argv[1], "ready").touch()
stream.run(stop)
print("{}")
"""


# -- freshness -----------------------------------------------------------------------------
def freshness(home: Home, offered_eps: int, seconds: float, per_request: int, trigger_s: float) -> dict:
    """Produce at ``offered_eps`` for ``seconds`` while the processor runs; per-event
    commit-minus-append latencies (see the module docstring)."""
    from headwater.stream.checkpoint import Checkpoint
    from headwater.stream.processor import QUERY

    n = int(offered_eps * seconds)
    start_s = time.time() + 3.0  # event times start here; the schedule starts once the processor is ready
    events = generate(n, int(start_s * 1e6), seconds, seed=2)
    reqs = requests(events, per_request)
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", PARTITIONS)
    log.ensure_topic("bad_rows", 1)

    result: dict = {}
    box: dict = {}
    ready = threading.Event()

    def processor():
        box["out"] = run_measured(_LIVE, [str(home.root), str(trigger_s)], lambda p: (box.update(proc=p), ready.set()))

    t = threading.Thread(target=processor)
    t.start()
    ready.wait()
    while not (home.root / "ready").exists():  # the processor has recovered and polls the log
        if box["proc"].poll() is not None:
            raise RuntimeError("the live processor exited before it was ready")
        time.sleep(0.05)
    start_s = time.time() + 0.5
    interval = per_request / offered_eps
    for i, appends in enumerate(reqs):
        delay = start_s + i * interval - time.time()
        if delay > 0:
            time.sleep(delay)
        log.append(appends)
    produced_s = time.time() - start_s
    ends = log.end_offsets("events")
    while any(log.committed(QUERY, "events").get(p, 0) < e for p, e in ends.items()):
        time.sleep(0.2)
    box["proc"].terminate()  # SIGTERM: the processor finishes its batch and exits
    t.join()

    ck = Checkpoint(home.checkpoint_dir(QUERY))
    lat: list[np.ndarray] = []
    for batch_id in range(ck.latest_committed() + 1):  # every batch is kept (retain_batches above)
        committed_ms = ck.read_commit(batch_id)["committed_ms"]
        for p, (s, e) in ck.read_offsets(batch_id)["events"].items():
            if e <= s:
                continue
            appended = log.read("events", p, s, e, EVENT_SCHEMA).events.column("_appended_ms").to_numpy()
            lat.append((committed_ms - appended) / 1000)
    log.close()
    lat_s = np.concatenate(lat).astype(np.float64)
    result.update(
        offered_eps=offered_eps,
        achieved_offered_eps=round(n / produced_s),
        freshness_events=int(lat_s.size),
        freshness_p50_s=round(float(np.percentile(lat_s, 50)), 3),
        freshness_p95_s=round(float(np.percentile(lat_s, 95)), 3),
        freshness_max_s=round(float(lat_s.max()), 3),
        live_peak_rss_mb=round(box["out"][1] / 2**20),
        live_batches=ck.latest_committed() + 1,
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 100,000 events, 5 s of freshness load")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--request-events", type=int, default=500, help="events per collector request (one log record per partition)")
    ap.add_argument("--offered-eps", type=int, default=20_000)
    ap.add_argument("--freshness-seconds", type=float, default=None)
    ap.add_argument("--trigger-interval", type=float, default=0.2, help="processing-time trigger of the live processor (s)")
    ap.add_argument("--skip-spark", action="store_true")
    ap.add_argument("--spark-state-store", choices=["hdfs", "rocksdb"], default="hdfs", help="Spark state store provider")
    ap.add_argument("--spark-max-records-per-partition", type=int, default=250_000, help="Spark micro-batch bound per partition (0: whole log in one batch; at 2M events that runs out of the 2 GB driver heap)")
    args = ap.parse_args()
    n = args.events or (100_000 if args.quick else 2_000_000)
    fresh_s = args.freshness_seconds or (5.0 if args.quick else 30.0)

    # The machine's 1-minute load average with the figures: a shared 2-core box skews them.
    out: dict = {"bench": "stream", "events": n, "quick": args.quick, "load_avg_1m_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="hw-bench-stream-") as tmp:
        root = Path(tmp)
        home = Home(root / "headwater")
        t = time.perf_counter()
        events = generate(n, int(dt.datetime(2024, 3, 1, 10, tzinfo=dt.timezone.utc).timestamp() * 1e6), 7200.0)
        fill_log(home, events, args.request_events)
        hot = pc.sum(pc.equal(events["user_id"], user_token(USERS))).as_py()
        del events
        print(f"input: {n} events in the log in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        hw, hw_rss = run_measured(_HEADWATER, [str(home.root)])
        out["headwater_eps"] = round(n / hw["seconds"])
        out["headwater_seconds"] = round(hw["seconds"], 2)
        out["headwater_batches"] = hw["batches"]
        out["headwater_peak_rss_mb"] = round(hw_rss / 2**20)
        out["headwater_totals"] = hw["totals"]
        out["headwater_state_rows"] = hw["state_rows"]
        print(f"headwater: {out['headwater_eps']} events/s ({hw['seconds']:.1f} s, {hw['batches']} batches)", file=sys.stderr)

        # The same input without the hot user: headwater's cost per event must not depend on it.
        flat = Home(root / "no-hot-user")
        fill_log(flat, generate(n, int(dt.datetime(2024, 3, 1, 10, tzinfo=dt.timezone.utc).timestamp() * 1e6), 7200.0, hot_share=0.0), args.request_events)
        flat_run, flat_rss = run_measured(_HEADWATER, [str(flat.root)])
        out["headwater_eps_without_hot_user"] = round(n / flat_run["seconds"])
        out["headwater_peak_rss_mb_without_hot_user"] = round(flat_rss / 2**20)
        print(f"headwater without the hot user: {out['headwater_eps_without_hot_user']} events/s", file=sys.stderr)

        if not args.skip_spark:
            # The bronze foreachBatch collects its micro-batch to the driver (delta-rs writes
            # from there): lift the 1 GB cap on collected results for one whole-log batch.
            submit = {"PYSPARK_SUBMIT_ARGS": "--conf spark.driver.maxResultSize=0 pyspark-shell"}
            warm = Home(root / "spark-warm-up-log")
            fill_log(warm, generate(5_000, int(dt.datetime(2024, 3, 2, tzinfo=dt.timezone.utc).timestamp() * 1e6), 600.0, seed=3), args.request_events)
            spark_args = [str(root / "spark"), home.settings.log_url, args.spark_state_store, str(args.spark_max_records_per_partition),
                          str(root / "spark-warm-up"), warm.settings.log_url]
            sp, sp_rss = run_measured(_SPARK, spark_args, env=submit)
            out["spark_eps"] = round(n / sp["seconds"])
            out["spark_seconds"] = round(sp["seconds"], 2)
            out["spark_rows_read_per_query"] = sp["rows"]
            out["spark_batches_per_query"] = sp["batches"]
            out["spark_durations_ms"] = sp["durations_ms"]
            out["spark_peak_rss_mb"] = round(sp_rss / 2**20)
            out["spark_config"] = {
                "master": "local[2]", "trigger": "AvailableNow",
                "micro_batch": f"{args.spark_max_records_per_partition} events per partition" if args.spark_max_records_per_partition else "whole log (1 batch per query)",
                "queries": "bronze + 1 per aggregate (sessions in append mode)", "shuffle_partitions": 2,
                "state_store": "RocksDBStateStoreProvider" if args.spark_state_store == "rocksdb" else "HDFSBackedStateStoreProvider (default)",
                "driver_memory": "2g",
                "driver_max_result_size": "unlimited", "sink": "foreachBatch -> toArrow -> delta-rs",
            }
            out["ratio"] = round(out["headwater_eps"] / out["spark_eps"], 2)
            print(f"spark: {out['spark_eps']} events/s ({sp['seconds']:.1f} s)", file=sys.stderr)

        out.update(freshness(Home(root / "live"), args.offered_eps, fresh_s, args.request_events, args.trigger_interval))
        out["peak_rss_mb"] = max(out["headwater_peak_rss_mb"], out["live_peak_rss_mb"])
        out["input"] = {"late_share": LATE_SHARE, "max_late_s": MAX_LATE_S, "duplicate_share": DUP_SHARE, "hot_user_share": HOT_SHARE,
                        "hot_user_events": hot, "users": USERS, "partitions": PARTITIONS, "request_events": args.request_events}
    out["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
