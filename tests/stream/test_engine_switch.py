"""Switching ``stream.engine`` back and forth on one home (:mod:`headwater.stream.handover`).

Each engine resumes from its own checkpoint; after a switch, the consumer group ``bronze``
stands past it, committed by the other engine. The engine starting again adopts the group's
offsets only when the group's recorded last committer is the other engine:

- headwater's engine (fast tests, the other engine simulated by a group commit and its
  record): it starts at the group, records the take-over in the batch's offsets metadata, and
  commits an interrupted batch as superseded instead of re-running it; a group ahead with any
  other last committer is logged and not adopted;
- both engines over a growing log, embedded → Spark → embedded → Spark: bronze exact after
  every stint, nothing twice, the group at the log's end.
"""

from __future__ import annotations

import datetime as dt
import logging

import pyarrow as pa
import pytest

from headwater.events import STREAM_GROUP
from headwater.ingest.badrows import BadRow, bad_rows_table
from headwater.log import Append, open_log
from headwater.stream import handover
from headwater.stream.pipeline import Pipeline
from headwater.stream.processor import QUERY, BronzeStream, StreamConfig

from .conftest import T0, append_events, canonical, table_rows

CONFIG = StreamConfig(max_records_per_partition=3, compact_every=0)


def bronze_ids(home) -> list[str]:
    return sorted(r["event_id"] for r in table_rows(home, "bronze.events"))


def spark_consumed(home, log) -> None:
    """What the Spark engine leaves behind when it consumed the log to its end: its record as
    the group's committer, then the group's commit (its bronze rows are left out here, so a
    re-read would show)."""
    handover.record(home, handover.SPARK)
    for topic in ("events", "bad_rows"):
        log.commit(STREAM_GROUP, topic, log.end_offsets(topic))


def test_the_embedded_engine_starts_where_spark_left_the_group(home, event_log, caplog):
    append_events(event_log, 0, ["a", "b"])
    append_events(event_log, 1, ["c"])
    stream = BronzeStream(home, CONFIG)
    stream.run(available_now=True)
    stream.close()
    assert handover.last_committer(home) == handover.EMBEDDED
    append_events(event_log, 0, ["s1", "s2"])  # consumed by "Spark"
    append_events(event_log, 2, ["s3"])
    spark_consumed(home, event_log)
    append_events(event_log, 0, ["d"])  # after the switch back

    caplog.set_level(logging.INFO, logger="headwater.stream")
    stream = BronzeStream(home, CONFIG)
    (line,) = [r.getMessage() for r in caplog.records if "taking over" in r.getMessage()]
    assert "from the Spark engine" in line and handover.NOT_CARRIED in line
    stream.run(available_now=True)
    stream.close()
    assert bronze_ids(home) == ["a", "b", "c", "d"]  # s1..s3 are Spark's: not read again
    batch = stream.checkpoint.latest_committed()
    assert stream.checkpoint.read_metadata(batch)["handover"] == {"from": "spark", "group": {"events": {"0": 4, "2": 1}}}
    assert stream.checkpoint.read_offsets(batch)["events"][0] == (4, 5)
    assert event_log.committed(QUERY, "events") == event_log.end_offsets("events")
    assert handover.last_committer(home) == handover.EMBEDDED  # recorded before its group commit

    # Restarted, the query stands where it is: nothing is adopted twice.
    caplog.clear()
    BronzeStream(home, CONFIG).close()
    assert not [r for r in caplog.records if "taking over" in r.getMessage()]


@pytest.mark.parametrize("committer", [handover.EMBEDDED, None])
def test_a_group_ahead_without_spark_as_its_committer_is_logged_not_adopted(home, event_log, caplog, committer):
    append_events(event_log, 0, ["a"])
    BronzeStream(home, CONFIG).run(available_now=True)
    append_events(event_log, 0, ["b", "c"])
    event_log.commit(STREAM_GROUP, "events", event_log.end_offsets("events"))
    if committer is None:
        handover.marker_path(home).unlink()
    else:
        handover.record(home, committer)
    caplog.set_level(logging.INFO, logger="headwater.stream")
    stream = BronzeStream(home, CONFIG)
    stream.run(available_now=True)
    assert bronze_ids(home) == ["a", "b", "c"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "not adopting its offsets" in warning.getMessage() and (committer or "unrecorded") in warning.getMessage()


def test_a_batch_interrupted_before_spark_took_over_is_superseded(home, event_log, caplog):
    append_events(event_log, 0, ["a"])
    stream = BronzeStream(home, CONFIG)
    stream.run_once()
    append_events(event_log, 1, ["b", "c"])

    def killed(n: int) -> None:
        raise RuntimeError("killed mid-batch")

    stream.on_commit = killed
    with pytest.raises(RuntimeError):
        stream.run_once()  # batch 1: bronze.events committed, then the process "died"
    stream.close()
    assert stream.checkpoint.recover() == (1, 0)
    spark_consumed(home, event_log)  # Spark took over at batch 0's end and wrote b, c as well
    append_events(event_log, 2, ["d"])

    caplog.set_level(logging.INFO, logger="headwater.stream")
    stream = BronzeStream(home, CONFIG)
    superseded = stream.checkpoint.read_commit(1)["superseded"]
    assert superseded["by"] == "spark"
    assert superseded["offsets"] == {"events": {"0": [1, 1], "1": [0, 2], "2": [0, 0], "3": [0, 0]}, "bad_rows": {"0": [0, 0]}}
    assert superseded["tables_with_batch"][0] == "bronze.events"  # and the realtime tables, committed before the "kill"
    assert stream.checkpoint.failure(1) is None
    assert any("committed as superseded" in r.getMessage() and "bronze.events" in r.getMessage() for r in caplog.records)
    stream.run(available_now=True)
    assert bronze_ids(home) == ["a", "b", "c", "d"]  # b, c from the interrupted batch; not re-run
    assert stream.checkpoint.latest_committed() == 2


# -- both engines --------------------------------------------------------------------------
PARTITIONS = 3


def chunk(k: int, n: int = 30) -> tuple[pa.Table, pa.Table]:
    """Stint ``k``'s events (ids ``k-<i>``, with re-sends inside the chunk) and 2 bad rows."""
    ids = [f"{k}-{i}" for i in range(n)] + [f"{k}-{i}" for i in range(0, n, 7)]
    at = T0 + dt.timedelta(minutes=k)
    events = canonical(ids, received_at=at)
    events = events.set_column(events.schema.get_field_index("user_id"), "user_id", pa.array([f"u{i % 5}" for i in range(len(ids))]))
    us = int(at.timestamp() * 1_000_000)
    bad = bad_rows_table([BadRow("decode_failure", f"stint {k} row {i}", "test", us + i, "{", "segment") for i in range(2)])
    return events, bad


def append_chunk(log, k: int) -> None:
    events, bad = chunk(k)
    for i in range(0, events.num_rows, 8):  # requests of 8, spread over the partitions
        log.append([Append("events", i // 8 % PARTITIONS, events.slice(i, 8))])
    log.append([Append("bad_rows", 0, bad)])


@pytest.mark.slow
def test_embedded_spark_embedded_spark_over_a_growing_log(spark, home, caplog):
    """Each stint consumes what was appended since the previous one; after each, bronze holds
    every event once and every bad row once, and the group stands at the log's end."""
    from headwater.stream.spark.runner import FLOOR_FILE, SparkConfig, SparkPipeline

    pipeline = Pipeline(name="switch")
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", PARTITIONS), log.ensure_topic("bad_rows", 1)

    def embedded() -> None:
        stream = BronzeStream(home, CONFIG, pipeline=pipeline)
        try:
            stream.run(available_now=True)
        finally:
            stream.close()

    def on_spark() -> None:
        SparkPipeline(spark, home, pipeline, SparkConfig(max_records_per_partition=10, start_at_group=True)).run_available_now()

    caplog.set_level(logging.INFO, logger="headwater.stream")
    try:
        for k, (engine, run) in enumerate([("embedded", embedded), ("spark", on_spark), ("embedded", embedded), ("spark", on_spark)]):
            append_chunk(log, k)
            run()
            assert handover.last_committer(home) == engine
            expected = sorted({f"{j}-{i}" for j in range(k + 1) for i in range(30)})
            assert bronze_ids(home) == expected, f"after stint {k} ({engine})"
            reasons = [r["reason"] for r in table_rows(home, "bronze.bad_rows")]
            assert sorted(reasons) == sorted(f"stint {j} row {i}" for j in range(k + 1) for i in range(2)), f"after stint {k} ({engine})"
            for topic in ("events", "bad_rows"):
                assert log.committed(STREAM_GROUP, topic) == log.end_offsets(topic), f"after stint {k} ({engine}): {topic}"
    finally:
        log.close()
    takeovers = [r.getMessage() for r in caplog.records if "takes over" in r.getMessage() or "taking over" in r.getMessage()]
    # stint 2: the embedded engine; stint 3: Spark's two queries, their checkpoints behind the group
    assert len(takeovers) == 3 and all(handover.NOT_CARRIED in m for m in takeovers), takeovers
    assert (home.checkpoint_dir("spark-switch-bronze") / FLOOR_FILE).exists()
