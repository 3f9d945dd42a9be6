"""Distributed, exactly-once Delta writes of the Spark stream runner.

On a Spark standalone cluster (master + 2 workers, separate processes, started by the
``spark_cluster`` fixture; the driver in a process of its own): the runner over the embedded
log (the Python data source reads the sqlite log on the executors) writes bronze, the
dead letters, an append-mode and an update-mode window table — equal to the same run on the
local session, and the append windows to the watermark model of the parity tests. A driver
killed between the executors' writes and the commit leaves unreferenced files only; the
restarted query lands the epoch once.

Locally (the ``spark`` fixture): the sinks collect nothing but add actions to the driver,
and an epoch whose commit failed after its files were written lands once when replayed.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from datasketches import hll_sketch

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.log import Append, open_log
from headwater.spark_delta import ADD_SCHEMA
from headwater.stream.pipeline import Aggregate, Measure, Tumbling
from headwater.stream.spark.runner import SparkConfig, SparkPipeline
from headwater.stream.spark.sink import STAGING, window_sink

from .conftest import T0, table_rows
from .test_spark_parity import MINUTE, PIPELINE, events_table, reference, stream

CAP = 100  # events per log partition and micro-batch
KILLED = 17  # exit code of a driver killed between its files and its commit
TABLES = ("bronze.events", "bronze.dead_letter", "realtime.per_minute", "realtime.per_minute_u")
UPDATE = Aggregate("per_minute_u", Tumbling(MINUTE), group_by=("event_name",),
                   measures=(Measure.count("events"), Measure.distinct("users", "actor_id")), output_mode="update")
PIPELINE_U = replace(PIPELINE, name="dist", aggregates=(*PIPELINE.aggregates, UPDATE))


def fill(root: Path) -> tuple[str, dict[int, list]]:
    """A log of two partitions (late, duplicated events; records of 25 events) and one
    undecodable record at the end of partition 1. Returns (log URL, events per partition)."""
    url = f"sqlite:///{root / 'log.db'}"
    log = open_log(url)
    log.ensure_topic("events", 2)
    log.ensure_topic("bad_rows", 1)
    rng = random.Random(3)
    parts = {p: stream(rng, 300, late_every=0.05, late_min=3, late_max=12, prefix=f"p{p}-") for p in (0, 1)}
    for p, evs in parts.items():
        for i in range(0, len(evs), 25):
            log.append([Append("events", p, events_table(evs[i : i + 25]))])
    log._insert([("events", 1, 3, b"not arrow")])  # the sqlite backend's raw record
    log.close()
    return url, parts


def batches(parts: dict[int, list]) -> list[list[tuple[int, object]]]:
    """The micro-batches ``maxRecordsPerPartition=CAP`` cuts: ``[(partition, Ev)]`` each."""
    longest = max(len(v) for v in parts.values())
    return [[(p, evs[i]) for p, evs in parts.items() for i in range(s, min(s + CAP, len(evs)))] for s in range(0, longest, CAP)]


def snapshot(home: Home) -> dict[str, list[dict]]:
    """Rows of :data:`TABLES`. A window's ``users_sketch`` becomes its HLL estimate: the
    serialized bytes depend on the order in which partial sketches were merged (which
    executor finished first), the sketch's content does not."""
    out = {t: table_rows(home, t) for t in TABLES}
    for t in TABLES[2:]:
        out[t] = [r | {"users_sketch": hll_sketch.deserialize(r["users_sketch"]).get_estimate()} for r in out[t]]
        assert all(r["users_sketch"] == r["users"] for r in out[t])
    return out


def drive(spark, home: str, log_url: str, bronze_only: bool = False, kill_at: int | None = None) -> dict:
    """Driver (run by ``SparkCluster.drive``): the pipeline available-now. ``kill_at``: exit
    the process (:data:`KILLED`) right before the bronze.events commit of that epoch, after
    the executors wrote its files. Returns the times (s) of the executors' writes (a Spark job
    each: the micro-batch's whole plan), the appends' commits and the update-mode MERGEs."""
    from headwater import spark_delta
    from headwater.stream.spark import sink

    commits, merges, writes = [], [], []
    commit, merge, write = Lake.commit_files, Lake.upsert_once, spark_delta.write

    def timed_commit(self, table, adds, *a, **kw):
        if kill_at is not None and table == "bronze.events" and kw.get("batch_id") == kill_at:
            os._exit(KILLED)
        t0 = time.perf_counter()
        commit(self, table, adds, *a, **kw)
        commits.append(time.perf_counter() - t0)

    def timed_merge(self, *a, **kw):
        t0 = time.perf_counter()
        merge(self, *a, **kw)
        merges.append(time.perf_counter() - t0)

    def timed_write(*a, **kw):
        t0 = time.perf_counter()
        out = write(*a, **kw)
        writes.append(time.perf_counter() - t0)
        return out

    Lake.commit_files, Lake.upsert_once = timed_commit, timed_merge
    sink.spark_delta.write = timed_write
    pipeline = replace(PIPELINE_U, aggregates=()) if bronze_only else PIPELINE_U
    t0 = time.perf_counter()
    SparkPipeline(spark, Home(Path(home)), pipeline, SparkConfig(max_records_per_partition=CAP), log_url=log_url).run_available_now()
    return {"seconds": time.perf_counter() - t0, "commits": commits, "merges": merges, "writes": writes,
            "executors": spark.sparkContext._jsc.sc().getExecutorIds().size()}


def unreferenced(lake: Lake, table: str) -> set[str]:
    """Parquet files in ``table``'s directory that its current snapshot does not reference."""
    root = Path(lake.uri(table))
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*.parquet") if STAGING not in p.parts}
    return on_disk - set(lake.add_actions(table)["path"].to_pylist() if lake.exists(table) else ())


# -- on the cluster -------------------------------------------------------------------------
@pytest.mark.slow
def test_stream_on_the_cluster_equals_the_local_run(spark, spark_cluster, tmp_path):
    url, parts = fill(tmp_path)
    local = Home(tmp_path / "local")
    SparkPipeline(spark, local, PIPELINE_U, SparkConfig(max_records_per_partition=CAP), log_url=url).run_available_now()
    run = spark_cluster.drive(f"{__name__}:drive", home=str(tmp_path / "cluster"), log_url=url)
    assert run.returncode == 0, run.output[-4000:]
    assert run.result["executors"] == 2
    print(f"\ncluster run {run.seconds:.1f} s (queries {run.result['seconds']:.1f} s); executor writes "
          f"{sorted(round(s, 2) for s in run.result['writes'])} s; commits {sorted(round(s, 3) for s in run.result['commits'])} s; "
          f"MERGEs {sorted(round(s, 3) for s in run.result['merges'])} s")
    cluster, expected = snapshot(Home(tmp_path / "cluster")), snapshot(local)
    for table in TABLES:
        assert cluster[table] == expected[table], table
    ids = [r["event_id"] for r in cluster["bronze.events"]]
    assert len(ids) == len(set(ids)) == len({e.event_id for evs in parts.values() for e in evs})
    assert [(d["partition"], d["payload"]) for d in cluster["bronze.dead_letter"]] == [(1, b"not arrow")]
    windows = {(r["window_start"], r["event_name"]): r["events"] for r in cluster["realtime.per_minute"]}
    assert windows == reference(batches(parts), lag=2, per_partition_min=False)
    updated = {(r["window_start"], r["event_name"]): r["events"] for r in cluster["realtime.per_minute_u"]}
    assert all(updated[k] == c for k, c in windows.items()) and len(updated) > len(windows)  # open windows too


@pytest.mark.slow
def test_driver_killed_between_files_and_commit_lands_the_epoch_once(spark_cluster, tmp_path):
    url, parts = fill(tmp_path)
    home = Home(tmp_path / "cluster")
    lake = Lake.of(home)
    killed = spark_cluster.drive(f"{__name__}:drive", home=str(home.root), log_url=url, bronze_only=True, kill_at=2)
    assert killed.returncode == KILLED, killed.output[-4000:]
    assert lake.committed_batch("bronze.events", "spark-dist-bronze") == 1
    orphans = unreferenced(lake, "bronze.events")
    assert orphans  # epoch 2's files: written by the executors, never committed
    rerun = spark_cluster.drive(f"{__name__}:drive", home=str(home.root), log_url=url, bronze_only=True)
    assert rerun.returncode == 0, rerun.output[-4000:]
    rows = table_rows(home, "bronze.events")
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)) == len({e.event_id for evs in parts.values() for e in evs})
    assert lake.committed_batch("bronze.events", "spark-dist-bronze") == len(batches(parts)) - 1
    assert unreferenced(lake, "bronze.events") == orphans  # the killed attempt's files stay unreferenced
    assert sorted(lake.vacuum("bronze.events", 0)) == sorted(orphans)
    assert table_rows(home, "bronze.events") == rows


# -- local -------------------------------------------------------------------------------------
def test_nothing_but_add_actions_reaches_the_driver(spark, tmp_path, monkeypatch):
    """Every DataFrame the sinks collect is the executors' add actions (one row per file)."""
    from pyspark.sql.classic.dataframe import DataFrame

    collected: list[tuple[str, ...]] = []
    for name in ("collect", "toArrow", "toPandas", "toLocalIterator", "take", "tail"):
        original = getattr(DataFrame, name)

        def spy(self, *a, _original=original, **kw):
            collected.append(tuple(self.columns))
            return _original(self, *a, **kw)

        monkeypatch.setattr(DataFrame, name, spy)
    url, _ = fill(tmp_path)
    home = Home(tmp_path / "home")
    SparkPipeline(spark, home, PIPELINE_U, SparkConfig(max_records_per_partition=CAP), log_url=url).run_available_now()
    assert all(table_rows(home, t) for t in TABLES)
    assert collected and set(collected) == {tuple(ADD_SCHEMA.names)}


def test_an_epoch_whose_commit_failed_lands_once_when_replayed(spark, tmp_path, monkeypatch):
    """The second call of an epoch (Spark's replay after a failed commit) writes new files
    and commits once; the first attempt's files stay unreferenced, its staging is removed."""
    lake = Lake.of(Home(tmp_path))
    rows = pa.table({"window_start": [T0], "window_end": [T0 + MINUTE], "events": [3]})
    df = spark.createDataFrame(rows.to_pandas())
    fail = {"commit_files", "upsert_once"}

    def failing(name):
        original = getattr(Lake, name)

        def call(self, *a, **kw):
            if name in fail:
                fail.discard(name)
                raise OSError("driver lost before the commit")
            return original(self, *a, **kw)

        return call

    for name in tuple(fail):
        monkeypatch.setattr(Lake, name, failing(name))
    append = window_sink(lake, "realtime.m", "spark-t-m", "append", ("window_start",))
    with pytest.raises(OSError):
        append(df, 0)
    orphans = unreferenced(lake, "realtime.m")
    assert len(orphans) == 1 and not lake.exists("realtime.m")
    append(df, 0)
    append(df, 0)  # already committed: skipped without writing
    assert [r["events"] for r in table_rows(Home(tmp_path), "realtime.m")] == [3]
    assert unreferenced(lake, "realtime.m") == orphans

    update = window_sink(lake, "realtime.m", "spark-t-m2", "update", ("window_start",))
    changed = spark.createDataFrame(rows.set_column(2, "events", pa.array([5])).to_pandas())
    with pytest.raises(OSError):
        update(changed, 1)
    assert not (Path(lake.uri("realtime.m")) / STAGING).exists() or not any((Path(lake.uri("realtime.m")) / STAGING).iterdir())
    update(changed, 1)
    update(changed, 1)
    assert [r["events"] for r in table_rows(Home(tmp_path), "realtime.m")] == [5]
    assert lake.committed_batch("realtime.m", "spark-t-m2") == 1
