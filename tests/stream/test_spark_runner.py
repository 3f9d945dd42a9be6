"""The Spark runner's pieces: the log data source (offsets, batch boundaries, decoding, dead
letters, floors), the idempotent foreachBatch sinks, the bad_rows query, and the pipeline
translation's refusals."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from headwater.config import Home

from headwater.events import STREAM_GROUP
from headwater.ingest.badrows import BadRow, bad_rows_table
from headwater.lake.store import Lake
from headwater.errors import InvalidInputError, NotFoundError
from headwater.log import Append, EventLog, open_log
from headwater.stream.pipeline import DEFAULT_PIPELINE, Aggregate, Column, Hopping, Measure, Pipeline, Session, Tumbling
from headwater.stream.processor import QUERY, BronzeStream, StreamConfig
from headwater.stream.spark.runner import SparkConfig, SparkPipeline, for_spark
from headwater.stream.spark.sink import window_sink
from headwater.stream.spark.source import SCHEMA, LogDataSource, LogStreamReader, read_range, replay_plan

from .conftest import T0, canonical, table_rows

MINUTE = dt.timedelta(minutes=1)


@pytest.fixture
def log(home) -> EventLog:
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 2)
    log.ensure_topic("bad_rows", 1)
    yield log
    log.close()


def fill(log: EventLog) -> None:
    """Partition 0: 7 events in 3 records (a duplicate "a1" in the last); partition 1: 2 good
    records around an undecodable one."""
    for p, ids in ((0, ["a0", "a1"]), (0, ["a2", "a3", "a4"]), (0, ["a5", "a1"]), (1, ["b0"])):
        log.append([Append("events", p, canonical(ids, event_ts=T0 + MINUTE * len(ids)))])
    log._insert([("events", 1, 3, b"not arrow")])  # the sqlite backend's raw record
    log.append([Append("events", 1, canonical(["b1", "b2"]))])


def test_batch_boundaries_are_headwaters(home, log):
    """With the same per-partition cap, the source cuts the log exactly where headwater's
    engine does, and ``replayOffsets`` gives back headwater's recorded batches."""
    fill(log)
    BronzeStream(home, StreamConfig(max_records_per_partition=2, compact_every=0), pipeline=Pipeline()).run(available_now=True)
    offsets = home.checkpoint_dir(QUERY) / "offsets"
    files = sorted((f for f in offsets.iterdir() if f.name.isdigit()), key=lambda f: int(f.name))
    headwater = [json.loads(f.read_text())["events"] for f in files]
    reader = LogStreamReader(home.settings.log_url, "events", max_records_per_partition=2, plan=None)
    start, spark = reader.initialOffset(), []
    while (end := reader.latestOffset(start, None)) != start:
        spark.append({p: [start[p], end[p]] for p in end})
        start = end
    assert spark == headwater
    assert start == {"0": 7, "1": 6}

    replay = LogStreamReader(home.settings.log_url, "events", None, replay_plan(offsets))
    start, replayed = replay.initialOffset(), []
    while (end := replay.latestOffset(start, None)) != start:
        replayed.append({p: [start[p], end[p]] for p in end})
        start = end
    assert replayed == headwater
    assert [(p.partition, p.start, p.end) for p in replay.partitions({"0": 2, "1": 2}, {"0": 4, "1": 2})] == [(0, 2, 4)]


def test_available_now_stops_at_the_log_end_seen_at_start(home, log):
    fill(log)
    reader = LogStreamReader(home.settings.log_url, "events", None, None)
    reader.prepareForTriggerAvailableNow()
    log.append([Append("events", 0, canonical(["late-arrival"]))])
    assert reader.latestOffset(reader.initialOffset(), None) == {"0": 7, "1": 6}
    assert reader.reportLatestOffset() == {"0": 8, "1": 6}


def test_read_range_decodes_slices_and_dead_letters_bad_records(home, log):
    fill(log)
    rows = pa.Table.from_batches(list(read_range(home.settings.log_url, "events", 1, 0, 6)), schema=SCHEMA).to_pylist()
    assert sorted((r["_offset"], r["event_id"], r["_error"] is None) for r in rows) == [
        (0, "b0", True), (1, None, False), (4, "b1", True), (5, "b2", True)
    ]
    (bad,) = [r for r in rows if r["_error"] is not None]
    assert (bad["_partition"], bad["_count"], bad["_payload"]) == (1, 3, b"not arrow") and "Arrow" in bad["_error"]
    assert all(r["_count"] is None for r in rows if r["_error"] is None)
    sliced = pa.Table.from_batches(list(read_range(home.settings.log_url, "events", 0, 1, 4)), schema=SCHEMA)
    assert sliced.column("event_id").to_pylist() == ["a1", "a2", "a3"]
    assert all(ms > 0 for ms in sliced.column("_appended_ms").to_pylist())


def test_read_range_in_slices_reads_every_event_and_dead_letter_once(home, log, monkeypatch):
    from headwater.stream.spark import source

    fill(log)
    whole = pa.Table.from_batches(list(read_range(home.settings.log_url, "events", 1, 0, 6)), schema=SCHEMA)
    monkeypatch.setattr(source, "READ_SLICE", 2)  # the dead unit (offsets 1-3) straddles slices
    sliced = pa.Table.from_batches(list(read_range(home.settings.log_url, "events", 1, 0, 6)), schema=SCHEMA)
    key = lambda t: sorted(zip(t.column("_offset").to_pylist(), t.column("event_id").to_pylist(), t.column("_error").to_pylist()))  # noqa: E731
    assert key(sliced) == key(whole) and sliced.num_rows == 4


def test_source_options_are_validated(home):
    with pytest.raises(InvalidInputError, match="option `url`"):
        LogDataSource({}).streamReader(None)
    with pytest.raises(NotFoundError, match="topic 'events' does not exist"):
        LogDataSource({"url": f"sqlite:///{home.root / 'nowhere.db'}"}).streamReader(None)
    with pytest.raises(InvalidInputError, match="unknown event log scheme"):
        LogDataSource({"url": str(home.root / "log.db")}).streamReader(None)
    url = home.settings.log_url
    log = open_log(url)
    log.ensure_topic("events", 1)
    log.close()
    for bad in ("0", "-5", "many"):
        with pytest.raises(ValueError, match="option `maxRecordsPerPartition`: must be a positive integer"):
            LogDataSource({"url": url, "maxRecordsPerPartition": bad}).streamReader(None)
    with pytest.raises(FileNotFoundError):
        LogDataSource({"url": url, "replayOffsets": str(home.root / "missing")}).streamReader(None)


def test_pipelines_spark_cannot_run_are_refused(spark, home):
    lateness = Pipeline(aggregates=(Aggregate("m", Tumbling(MINUTE), allowed_lateness=MINUTE),))
    with pytest.raises(ValueError, match="aggregate m: allowed_lateness has no Spark"):
        SparkPipeline(spark, home, lateness)
    with pytest.raises(ValueError, match="aggregate sessions: Spark supports session windows only in append"):
        SparkPipeline(spark, home, DEFAULT_PIPELINE)
    fixed = for_spark(DEFAULT_PIPELINE)
    assert [a.output_mode for a in fixed.aggregates if isinstance(a.window, Session)] == ["append"]
    assert [a for a in fixed.aggregates if not isinstance(a.window, Session)] == [
        a for a in DEFAULT_PIPELINE.aggregates if not isinstance(a.window, Session)
    ]


def test_bronze_lands_once_and_bad_records_are_dead_lettered(spark, home, log):
    """Spark's bronze query: duplicates dropped (also across batches), undecodable records
    in bronze.dead_letter; a second run after new appends resumes from Spark's checkpoint."""
    fill(log)
    pipeline = Pipeline(name="t")
    runner = SparkPipeline(spark, home, pipeline, SparkConfig(max_records_per_partition=3))
    runner.run_available_now()
    ids = lambda: sorted(r["event_id"] for r in table_rows(home, "bronze.events"))  # noqa: E731
    assert ids() == ["a0", "a1", "a2", "a3", "a4", "a5", "b0", "b1", "b2"]
    dead = table_rows(home, "bronze.dead_letter")
    assert [(d["topic"], d["partition"], d["offset"], d["count"], d["payload"]) for d in dead] == [("events", 1, 1, 3, b"not arrow")]

    log.append([Append("events", 0, canonical(["a6", "a0"]))])
    SparkPipeline(spark, home, pipeline, SparkConfig(max_records_per_partition=3)).run_available_now()
    assert ids() == ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "b0", "b1", "b2"]
    assert len(table_rows(home, "bronze.dead_letter")) == 1


def test_bronze_dedup_is_keyed_on_source_and_event_id(spark, home, log):
    """One source's messageId must not drop another source's event; a re-send within one
    source is still dropped."""
    web, ios = canonical(["m1", "m2"]), canonical(["m1"])
    ios = ios.set_column(ios.schema.get_field_index("source"), "source", pa.array(["ios"]))
    log.append([Append("events", 0, web)])
    log.append([Append("events", 1, ios)])
    log.append([Append("events", 0, canonical(["m1"]))])  # web's re-send
    SparkPipeline(spark, home, Pipeline(name="t"), SparkConfig()).run_available_now()
    got = sorted((r["source"], r["event_id"]) for r in table_rows(home, "bronze.events"))
    assert got == [("ios", "m1"), ("test", "m1"), ("test", "m2")]


def test_window_sink_skips_an_epoch_the_table_already_holds(spark, home):
    """A replayed epoch (Spark re-runs an epoch whose commit it did not record) writes nothing."""
    rows = pa.table({"window_start": [T0], "window_end": [T0 + MINUTE], "events": [3]})
    df = spark.createDataFrame(rows.to_pandas())
    write = window_sink(Lake.of(home), "realtime.m", "spark-t-m", "append", ("window_start",))
    write(df, 0)
    write(df, 0)
    write(df, 1)
    assert len(table_rows(home, "realtime.m")) == 2
    assert Lake.of(home).committed_batch("realtime.m", "spark-t-m") == 1

    upsert = window_sink(Lake.of(home), "realtime.u", "spark-t-u", "update", ("window_start",))
    upsert(df, 0)
    upsert(spark.createDataFrame(rows.set_column(2, "events", pa.array([5])).to_pandas()), 1)
    upsert(df, 1)  # replay of epoch 1 with other content: ignored
    assert [r["events"] for r in table_rows(home, "realtime.u")] == [5]


def test_distinct_users_use_datasketches_hll(spark, home, log):
    """``distinct`` measures become Spark's ``hll_sketch_agg`` (Apache DataSketches HLL): the
    estimate and a mergeable sketch column, in update mode upserted per window."""
    ids = [f"e{i}" for i in range(40)]
    log.append([Append("events", 0, canonical(ids))])  # users u0..u6, all at T0
    pipeline = Pipeline(
        name="d",
        aggregates=(Aggregate("users", Tumbling(MINUTE), measures=(Measure.count("events"), Measure.distinct("users", "actor_id", 10)), output_mode="update"),),
    )
    SparkPipeline(spark, home, pipeline).run_available_now(bronze=False)
    (row,) = table_rows(home, "realtime.users")
    from datasketches import hll_sketch

    assert (row["window_start"], row["events"]) == (T0, 40)
    assert row["users"] == hll_sketch.deserialize(row["users_sketch"]).get_estimate() == pytest.approx(7.0)


def test_translation_of_window_kinds(spark, home):
    pipeline = Pipeline(
        aggregates=(Aggregate("hop", Hopping(2 * MINUTE, MINUTE), group_by=("platform",), measures=(Measure.sum("n", "value"),)),),
        columns=(Column("value", "CAST(1.5 AS DOUBLE)"),),
    )
    frame = SparkPipeline(spark, home, pipeline).aggregate_frame(pipeline.aggregates[0])
    assert frame.isStreaming
    assert frame.columns == ["window_start", "window_end", "platform", "n"]


def test_a_new_query_starts_at_the_given_offsets(home, log):
    """``startingOffsets`` (``SparkConfig.start_at_group``): where a query without a checkpoint
    starts; partitions not named start at 0."""
    fill(log)
    reader = LogStreamReader(home.settings.log_url, "events", None, None, starting={"0": 5})
    assert reader.initialOffset() == {"0": 5, "1": 0}
    assert [(p.partition, p.start, p.end) for p in reader.partitions(reader.initialOffset(), reader.latestOffset(reader.initialOffset(), None))] == [(0, 5, 7), (1, 0, 6)]


def test_epoch_0_re_run_after_its_group_commit_reads_its_own_offsets_again(spark, home, log):
    """A stop after epoch 0's sink and group commits but before Spark's ``commits/0`` (seen
    under SIGTERM): the next run re-runs epoch 0 from where it first started, not from the
    group (now at the epoch's end), so the dedup state holds its ids and a re-sent copy in
    epoch 1 is dropped."""
    log.append([Append("events", 0, canonical(["a0", "a1"]))])
    pipeline, config = Pipeline(name="t"), SparkConfig(max_records_per_partition=2, start_at_group=True)
    SparkPipeline(spark, home, pipeline, config).run_available_now()
    # The checkpoint as that stop leaves it: epoch 0 planned, nothing after it (the run's
    # no-data epoch 1, which only moved the watermark, and every commit removed).
    checkpoint = home.checkpoint_dir("spark-t-bronze")
    later = [f for f in (checkpoint / "offsets").iterdir() if not f.name.lstrip(".").startswith("0")]
    for f in [*(checkpoint / "commits").iterdir(), *later, *(checkpoint / "state").rglob("*delta*")]:
        if not f.name.lstrip(".").startswith("1.delta"):
            f.unlink()
    assert log.committed(STREAM_GROUP, "events")[0] == 2
    log.append([Append("events", 0, canonical(["a1", "a2"]))])
    SparkPipeline(spark, home, pipeline, config).run_available_now()
    assert [r["event_id"] for r in table_rows(home, "bronze.events", ["event_id"])] == ["a0", "a1", "a2"]


def test_a_floor_is_never_read_and_the_batch_bound_counts_from_it(home, log):
    """``floorOffsets``: a query whose checkpoint stands before the floor plans its next batch
    from where it stands (Spark's epochs stay contiguous) but reads only from the floor on."""
    fill(log)
    reader = LogStreamReader(home.settings.log_url, "events", 2, None, floor={"0": 5})
    start = {"0": 2, "1": 0}
    end = reader.latestOffset(start, None)
    assert end == {"0": 7, "1": 2}
    assert [(p.partition, p.start, p.end) for p in reader.partitions(start, end)] == [(0, 5, 7), (1, 0, 2)]
    assert reader.partitions({"0": 1, "1": 2}, {"0": 4, "1": 2}) == []  # a replayed epoch below the floor reads nothing


def bad_rows(n: int, start: int = 0) -> pa.Table:
    at = int(T0.timestamp() * 1_000_000)
    return bad_rows_table([BadRow("envelope_violation", f"missing messageId ({i})", "test" if i % 2 else None, at + i, f'{{"n": {i}}}', "segment")
                           for i in range(start, start + n)])


def test_bad_rows_reach_bronze_as_the_embedded_engine_writes_them(spark, tmp_path):
    """The bad_rows query: ``bronze.bad_rows`` and its dead letters equal headwater's engine's
    over the same log, exactly once across a second run, the group of bad_rows committed."""
    homes = {}
    for name in ("embedded", "spark"):
        home = homes[name] = Home(tmp_path / name)
        log = open_log(home.settings.log_url)
        log.ensure_topic("events", 2), log.ensure_topic("bad_rows", 1)
        fill(log)
        log.append([Append("bad_rows", 0, bad_rows(3))])
        log._insert([("bad_rows", 0, 2, b"not arrow")])
        log.append([Append("bad_rows", 0, bad_rows(2, start=3))])
        log.close()
    BronzeStream(homes["embedded"], StreamConfig(max_records_per_partition=2, compact_every=0), pipeline=Pipeline()).run(available_now=True)
    SparkPipeline(spark, homes["spark"], Pipeline(name="t"), SparkConfig(max_records_per_partition=2)).run_available_now()
    order = ["reason"]
    assert table_rows(homes["spark"], "bronze.bad_rows", order) == table_rows(homes["embedded"], "bronze.bad_rows", order)
    assert len(table_rows(homes["spark"], "bronze.bad_rows")) == 5
    dead = lambda h: sorted((d["topic"], d["partition"], d["offset"], d["count"], d["payload"]) for d in table_rows(h, "bronze.dead_letter"))  # noqa: E731
    assert dead(homes["spark"]) == dead(homes["embedded"]) == [("bad_rows", 0, 3, 2, b"not arrow"), ("events", 1, 1, 3, b"not arrow")]

    log = open_log(homes["spark"].settings.log_url)
    try:
        assert log.committed(STREAM_GROUP, "bad_rows") == log.end_offsets("bad_rows") == {0: 7}
        log.append([Append("bad_rows", 0, bad_rows(1, start=5))])
        SparkPipeline(spark, homes["spark"], Pipeline(name="t"), SparkConfig()).run_available_now()
        assert len(table_rows(homes["spark"], "bronze.bad_rows")) == 6 and len(dead(homes["spark"])) == 2
        assert log.committed(STREAM_GROUP, "bad_rows") == {0: 8}
    finally:
        log.close()


def test_connector_rows_of_bad_rows_decode_to_the_topics_schema(spark):
    """Spark's Kafka connector path for ``bad_rows``: the JSON value against BAD_ROW_SCHEMA, a
    message without a required column dead-lettered; a floor drops rows below it."""
    from headwater.log.kafka.codec import encode
    from headwater.stream.spark import kafka_connector
    from headwater.stream.spark.runner import _above
    from headwater.stream.spark.source import source_schema

    rows = bad_rows(2)
    values = [*encode(rows), b'{"reason": "no error_type"}']
    connector = [
        {"key": None, "value": v, "topic": "bad_rows", "partition": 0, "offset": i, "timestamp": T0, "timestampType": 0,
         "headers": [{"key": "headwater-schema-version", "value": b"1"}]}
        for i, v in enumerate(values)
    ]
    ddl = ("key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT, timestamp TIMESTAMP, timestampType INT, "
           "headers ARRAY<STRUCT<key: STRING, value: BINARY>>")
    df = kafka_connector.decode(spark.createDataFrame(connector, ddl), "bad_rows")
    assert df.columns == source_schema("bad_rows").names
    got = sorted((r.asDict() for r in df.collect()), key=lambda r: r["_offset"])
    assert [(r["reason"], r["error_type"], r["payload"], r["ds"]) for r in got[:2]] == [
        (r["reason"], r["error_type"], r["payload"], r["ds"]) for r in rows.to_pylist()
    ]
    assert got[2]["_error"] == "null or missing required column(s) received_at,error_type,ds" and got[2]["reason"] is None
    assert [r["_offset"] for r in _above(df, {0: 1}).collect()] == [1, 2]
