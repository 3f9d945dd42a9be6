"""Scale-out: the Spark engine on a standalone cluster with 1 worker vs 2 workers, one input.

    uv run python bench/scale.py [--quick] [--events N]

1. **Input**: ``--events`` canonical events (default 2,000,000; ``--quick`` 200,000) from
   ``bench/stream.py``'s generator (5 % late, 2 % duplicates, a hot user with 30 %), appended
   to the embedded log over :data:`PARTITIONS` partitions as the collector would.
2. **Cluster**: a Spark standalone master and N workers (``tests/spark_cluster.py``: separate
   JVMs from the pyspark package, 1 core and 1.5 GB of executor memory each), started by this
   bench; N = 1, then N = 2 on a fresh cluster, same input, fresh output.
3. **Job** (the driver runs in its own process): the Spark streaming pipeline
   (:class:`headwater.stream.spark.runner.SparkPipeline`: bronze with dedup, plus the
   real-time aggregates of ``DEFAULT_PIPELINE``) with ``Trigger.AvailableNow`` over the whole
   log in batches of ``--batch-events`` per partition: executors read their log partitions
   (the Python data source) and write the Delta files, the driver commits one transaction
   per batch and table. Then the batch model ``silver.events`` on Spark SQL over that bronze
   (executors write, the driver commits one overwrite; its inputs, the identity models, are
   built first on DuckDB, untimed). A small untimed warm-up run first.
4. Figures: events/s of each phase at 1 and 2 workers, ``speedup`` = t(1) / t(2), and
   ``efficiency`` = speedup / 2 (1.0 = linear); and ``*_eps_per_executor_core``: events per
   CPU-second of the executors (JVMs and Python workers, from ``/proc``) in the 2-worker run,
   the per-core figure of ``docs/scaling.md``. This machine has 2 cores, which the driver,
   the JVM daemons and the 2 executors share: efficiency here is a lower bound of what
   separate machines give.

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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.spark_cluster, bench.stream

from headwater.config import Home  # noqa: E402

PARTITIONS = 8


def fill(home: Home, n: int, seed: int) -> None:
    """``n`` events of ``bench/stream.py``'s generator in ``home``'s embedded log, as the
    collector appends them: requests of 500 events split by identity key, 20 per append."""
    from bench.stream import generate

    from headwater.ingest.partitioning import event_appends
    from headwater.log import open_log

    events = generate(n, int(dt.datetime(2024, 3, 1, 10, tzinfo=dt.timezone.utc).timestamp() * 1e6), 7200.0, seed=seed)
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", PARTITIONS)
    log.ensure_topic("bad_rows", 1)
    reqs = [event_appends(events.slice(i, 500), PARTITIONS) for i in range(0, n, 500)]
    for i in range(0, len(reqs), 20):
        log.append([a for r in reqs[i : i + 20] for a in r])
    log.close()


def executors_cpu_s() -> float:
    """CPU seconds (user + system, with reaped children's) of the Spark executors on this
    machine: each ``CoarseGrainedExecutorBackend`` JVM and its descendants (the Python
    workers), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    stats, children = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        pid = int(entry)
        stats[pid] = (sum(int(f) for f in fields[11:15]), b"CoarseGrainedExecutorBackend" in cmd)
        children.setdefault(int(fields[1]), []).append(pid)
    total, stack = 0, [pid for pid, (_, executor) in stats.items() if executor]
    while stack:
        pid = stack.pop()
        total += stats[pid][0]
        stack += children.get(pid, [])
    return total / tick


def job(spark, home: str, log_url: str, warm_home: str, batch_events: int) -> dict:
    """Driver (on the cluster): warm up on ``warm_home``'s own log, then the timed stream
    phase over ``log_url`` into ``home`` and the timed batch phase on that bronze."""
    from headwater.models.dag import MODELS
    from headwater.models.run import run_model
    from headwater.stream.pipeline import DEFAULT_PIPELINE
    from headwater.stream.spark.runner import SparkConfig, SparkPipeline, for_spark

    pipeline = for_spark(DEFAULT_PIPELINE)
    SparkPipeline(spark, Home(Path(warm_home)), pipeline, SparkConfig()).run_available_now()
    target = Home(Path(home))
    t, cpu = time.perf_counter(), executors_cpu_s()
    queries = SparkPipeline(spark, target, pipeline, SparkConfig(max_records_per_partition=batch_events), log_url=log_url).run_available_now()
    stream_s, stream_cpu = time.perf_counter() - t, executors_cpu_s() - cpu
    rows = sum(p["numInputRows"] for p in queries[0].recentProgress)
    from headwater.lake.store import Lake

    days = Lake.of(target).ds_days("bronze.events")
    by_table = {m.table: m for m in MODELS}
    model = by_table["silver.events"]
    # its inputs (the identity links and map), untimed, on DuckDB
    upstream, todo = [], list(model.inputs)
    while todo:
        table = todo.pop()
        if table in by_table and table not in upstream:
            upstream.append(table)
            todo += by_table[table].inputs
    for table in [m.table for m in MODELS if m.table in upstream]:
        run_model(target, by_table[table], days[0], days[-1], engine="duckdb")
    t, cpu = time.perf_counter(), executors_cpu_s()
    run_model(target, model, days[0], days[-1], engine="spark")
    batch_s, batch_cpu = time.perf_counter() - t, executors_cpu_s() - cpu
    return {"stream_seconds": stream_s, "stream_executor_cpu_s": stream_cpu, "stream_rows": rows, "batch_seconds": batch_s,
            "batch_executor_cpu_s": batch_cpu, "silver_rows": Lake.of(target).row_count("silver.events")}


def main() -> None:
    from tests.spark_cluster import start_cluster

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI size: 200,000 events")
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--batch-events", type=int, default=100_000, help="micro-batch bound per log partition")
    args = ap.parse_args()
    n = args.events or (200_000 if args.quick else 2_000_000)
    out: dict = {"bench": "scale", "events": n, "quick": args.quick, "partitions": PARTITIONS}
    with tempfile.TemporaryDirectory(prefix="hw-bench-scale-") as tmp:
        root = Path(tmp)
        source = Home(root / "input")
        fill(source, n, seed=1)
        runs = {}
        for workers in (1, 2):
            warm = Home(root / f"warm-{workers}")
            fill(warm, 5_000, seed=3)
            cluster = start_cluster(workers=workers)
            try:
                run = cluster.drive("bench.scale:job", timeout_s=3600, home=str(root / f"workers-{workers}"), log_url=source.settings.log_url,
                                    warm_home=str(warm.root), batch_events=args.batch_events)
            finally:
                cluster.stop()
            if run.returncode != 0 or run.result is None:
                raise SystemExit(f"{workers} worker(s): the driver failed:\n{run.output[-4000:]}")
            runs[workers] = run.result
            print(f"{workers} worker(s): {json.dumps(run.result)}", file=sys.stderr)
        if runs[1]["stream_rows"] != n or runs[2]["stream_rows"] != n or runs[1]["silver_rows"] != runs[2]["silver_rows"]:
            raise SystemExit(f"the runs disagree: {runs}")
        for phase in ("stream", "batch"):
            t1, t2 = runs[1][f"{phase}_seconds"], runs[2][f"{phase}_seconds"]
            out[f"{phase}_eps_1_worker"] = round(n / t1)
            out[f"{phase}_eps_2_workers"] = round(n / t2)
            out[f"{phase}_speedup"] = round(t1 / t2, 2)
            out[f"{phase}_efficiency"] = round(t1 / t2 / 2, 2)
            # per core: events per CPU-second of the executors (their JVMs and Python workers)
            out[f"{phase}_eps_per_executor_core"] = round(n / max(runs[2][f"{phase}_executor_cpu_s"], 1e-9))
        out["silver_rows"] = runs[2]["silver_rows"]
        out["cluster"] = "spark standalone on 127.0.0.1: master + N workers x (1 core, 1536 MB executors); driver in its own process"
    print(json.dumps(out))


if __name__ == "__main__":
    main()
