"""The stream processors writing their lake to S3 (the ``s3`` fixture: moto's server).

The same log contents, processed in the same batches by two homes — one with the default
local lake, one whose ``[lake]`` settings put it at ``s3://bucket/lake`` — give the same
tables: bronze (duplicates removed, late events kept), the late events and every real-time
aggregate. What stays on local disk for the S3 home (checkpoints, dedup and window state,
the log) is checked too: only tables move. The S3 secret reaches no log line. The Spark
runner's executors write bronze into the same kind of lake.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time

import pytest

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.log import Append, open_log
from headwater.stream.processor import QUERY, BronzeStream

from .conftest import T0, canonical, table_rows

MIN = dt.timedelta(minutes=1)
BATCHES = 5
SECRET = "hw-s3-secret-0123456789abcdef"  # moto checks no signatures: any secret works


def traffic(seed: int = 7) -> list[list[tuple[int, list[str], dt.datetime]]]:
    """Per batch, appends ``(partition, event ids, event time)``: new events moving forward in
    time across a day boundary, re-sent ids (duplicates) and events older than the watermark."""
    rng = random.Random(seed)
    batches, sent = [], []
    for b in range(BATCHES):
        appends = []
        for p in range(4):
            ids = [f"e{b}-{p}-{i}" for i in range(rng.randint(5, 40))]
            sent += ids
            ts = T0 + dt.timedelta(hours=11, minutes=20 * b + rng.randint(0, 9))  # crosses midnight at b = 2
            appends.append((p, ids, ts))
        appends.append((rng.randrange(4), rng.sample(sent, 10), T0 + dt.timedelta(hours=11, minutes=20 * b)))  # re-sent
        if b >= 2:
            appends.append((rng.randrange(4), [f"late{b}-{i}" for i in range(3)], T0 + dt.timedelta(hours=10)))  # behind the watermark
        batches.append(appends)
    return batches


def run(home: Home) -> list[float]:
    """Process :func:`traffic` in :data:`BATCHES` batches; return each batch's duration (s)."""
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 4)
    log.ensure_topic("bad_rows", 1)
    clock = T0 + dt.timedelta(days=1)  # a fixed processing time: both runs see the same one
    stream = BronzeStream(home, event_log=log, clock=lambda: int(clock.timestamp() * 1000))
    took = []
    try:
        for appends in traffic():
            log.append([Append("events", p, canonical(ids, received_at=ts)) for p, ids, ts in appends])
            start = time.perf_counter()
            assert stream.run_once() is not None
            took.append(time.perf_counter() - start)
    finally:
        stream.close()
        log.close()
    return took


@pytest.fixture
def s3_home(s3, tmp_path) -> Home:
    root = tmp_path / "s3home"
    root.mkdir()
    (root / "headwater.toml").write_text(s3.lake_toml(s3.create_bucket(), secret=SECRET))
    return Home(root)


def test_the_stream_on_an_s3_lake_writes_what_it_writes_on_local_disk(s3_home, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    local = Home(tmp_path / "local")
    local_s = run(local)
    s3_s = run(s3_home)
    out, err = capfd.readouterr()  # what delta-rs (Rust) and pyarrow (C++) print, too
    assert SECRET not in caplog.text + out + err
    lake = Lake.of(s3_home)
    assert lake.root.startswith("s3://")
    tables = Lake.of(local).tables()
    assert {"bronze.events", "bronze.late_events", "realtime.events_per_minute", "realtime.sessions"} <= set(tables)
    assert lake.tables() == tables
    for table in tables:
        assert table_rows(s3_home, table) == table_rows(local, table), table
    assert lake.committed_batch("bronze.events", QUERY) == BATCHES - 1
    bronze = table_rows(s3_home, "bronze.events")
    assert len(bronze) == len({r["event_id"] for r in bronze})  # each event once
    assert table_rows(s3_home, "bronze.late_events") and any(r["event_id"].startswith("late") for r in bronze)
    assert {r["ds"] for r in bronze} == {T0.date(), T0.date() + dt.timedelta(days=1)}
    # only the tables moved: the log, checkpoint and state stay under the home
    assert not (s3_home.root / "lake").exists()
    assert s3_home.checkpoint_dir(QUERY).is_dir() and (s3_home.root / "log").is_dir()
    print(f"\nbatch duration, median of {BATCHES}: local {sorted(local_s)[BATCHES // 2] * 1000:.0f} ms, "
          f"s3 (moto) {sorted(s3_s)[BATCHES // 2] * 1000:.0f} ms")


def test_spark_executors_write_bronze_to_the_s3_lake(s3_home, spark):
    """The Spark runner's sinks: executors write the Parquet files through the lake's pickled
    S3 filesystem, the driver commits them with delta-rs (no Hadoop S3 connector involved)."""
    from headwater.stream.pipeline import Pipeline
    from headwater.stream.spark.runner import SparkConfig, SparkPipeline

    log = open_log(s3_home.settings.log_url)
    log.ensure_topic("events", 2)
    log.ensure_topic("bad_rows", 1)
    for p, ids in ((0, ["a0", "a1"]), (0, ["a2", "a1"]), (1, ["b0"])):
        log.append([Append("events", p, canonical(ids))])
    log.close()
    SparkPipeline(spark, s3_home, Pipeline(name="s3"), SparkConfig(max_records_per_partition=3)).run_available_now()
    assert sorted(r["event_id"] for r in table_rows(s3_home, "bronze.events")) == ["a0", "a1", "a2", "b0"]
    assert not (s3_home.root / "lake").exists()
