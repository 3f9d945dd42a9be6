"""Spark reading a ``kafka://`` log (Tansu): the Python data source on the executors gives the
bronze of headwater's engine; Spark's own Kafka connector (absent here: its jar cannot be
fetched) is chosen only when its class is on the classpath, and its rows decode like the
Python source's."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from headwater.config import Home
from headwater.log import Append, open_log
from headwater.stream.pipeline import Pipeline
from headwater.stream.processor import BronzeStream, StreamConfig
from headwater.stream.spark import kafka_connector
from headwater.stream.spark.runner import SparkConfig, SparkPipeline
from headwater.stream.spark.source import SCHEMA, read_range
from tests.kafka import kafka_home

from .conftest import T0, canonical, table_rows


def fill(broker, home: Home) -> None:
    """3 partitions: events with re-sends, across several transactions, and a garbage message."""
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 3), log.ensure_topic("bad_rows", 1)
    minute = dt.timedelta(minutes=1)
    for p, ids in ((0, ["a0", "a1"]), (1, ["b0", "b1", "b2"]), (0, ["a2", "a1"]), (2, ["c0"]), (1, ["b3", "b0", "b4"])):
        log.append([Append("events", p, canonical(ids, event_ts=T0 + minute * len(ids)))])
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("events", b"not json", partition=2)
    producer.flush(10)
    log.append([Append("events", 2, canonical(["c1", "c2"]))])
    log.close()


def test_spark_on_kafka_gives_the_bronze_of_headwaters_engine(spark, tmp_path, broker):
    engine, on_spark = kafka_home(tmp_path / "engine", broker, partitions=3), kafka_home(tmp_path / "spark", broker, partitions=3)
    fill(broker, engine)
    pipeline = Pipeline(name="t")
    stream = BronzeStream(engine, StreamConfig(max_records_per_partition=3, compact_every=0), pipeline=pipeline)
    stream.run(available_now=True)
    stream.close(), stream.log.close()
    assert not kafka_connector.available(spark)  # the Python data source reads Kafka on the executors
    SparkPipeline(spark, on_spark, pipeline, SparkConfig(max_records_per_partition=3)).run_available_now()
    order = ["source", "event_id"]
    assert table_rows(on_spark, "bronze.events", order) == table_rows(engine, "bronze.events", order)
    assert len(table_rows(engine, "bronze.events")) == 11
    dead = lambda h: [(d["topic"], d["partition"], d["offset"], d["count"], d["payload"]) for d in table_rows(h, "bronze.dead_letter")]  # noqa: E731
    assert dead(on_spark) == dead(engine) and len(dead(engine)) == 1


def connector_rows(broker, topic: str, partitions: int) -> list[dict]:
    """The topic's messages as Spark's Kafka connector returns them (its documented columns)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "connector-shape", "isolation.level": "read_committed",
                         "enable.partition.eof": True})
    rows = []
    for p in range(partitions):
        consumer.assign([TopicPartition(topic, p, 0)])
        while (m := consumer.poll(10)) is not None and not m.error():
            rows.append({"key": m.key(), "value": m.value(), "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
                         "timestamp": dt.datetime.fromtimestamp(m.timestamp()[1] / 1000, dt.timezone.utc), "timestampType": m.timestamp()[0],
                         "headers": [{"key": k, "value": v} for k, v in (m.headers() or [])]})
    consumer.close()
    return rows


CONNECTOR_DDL = ("key BINARY, value BINARY, topic STRING, partition INT, offset BIGINT, timestamp TIMESTAMP, timestampType INT, "
                 "headers ARRAY<STRUCT<key: STRING, value: BINARY>>")


def test_connector_rows_decode_like_the_python_source(spark, tmp_path, broker):
    home = kafka_home(tmp_path / "home", broker, partitions=3)
    fill(broker, home)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("events", b'{"event_id": "x"}', partition=1, headers=[("headwater-schema-version", b"1")])  # required columns missing
    producer.produce("events", b'{"event_id": "y"}', partition=1, headers=[("headwater-schema-version", b"9")])
    producer.flush(10)
    df = spark.createDataFrame(connector_rows(broker, "events", 3), CONNECTOR_DDL)
    got = [r.asDict() for r in kafka_connector.decode(df).collect()]
    log = open_log(home.settings.log_url)
    expected = pa.Table.from_batches(
        [b for p, end in log.end_offsets("events").items() for b in read_range(home.settings.log_url, "events", p, 0, end)], schema=SCHEMA
    ).to_pylist()
    log.close()
    key = lambda r: (r["_partition"], r["_offset"])  # noqa: E731
    got, expected = sorted(got, key=key), sorted(expected, key=key)
    assert [key(r) for r in got] == [key(r) for r in expected]
    events = lambda rows: [{k: v for k, v in r.items() if k != "_error"} for r in rows]  # noqa: E731
    normal = lambda rows: [{k: (v.replace(tzinfo=None) if isinstance(v, dt.datetime) else v) for k, v in r.items()} for r in rows]  # noqa: E731
    assert normal(events(got)) == normal(events(expected))
    assert [bool(r["_error"]) for r in got] == [bool(r["_error"]) for r in expected]
    assert sum(1 for r in got if r["_error"]) == 3


def test_selection_uses_the_connector_only_when_its_class_is_there(spark, tmp_path, broker, monkeypatch):
    home = kafka_home(tmp_path / "home", broker, partitions=3)
    fill(broker, home)
    runner = SparkPipeline(spark, home, Pipeline(name="t"))
    assert not kafka_connector.available(spark)
    df = runner.source()
    assert df.isStreaming and [f.name for f in df.schema] == SCHEMA.names
    assert "headwater_log" in df._jdf.queryExecution().logical().toString().lower()
    monkeypatch.setattr(kafka_connector, "available", lambda s: True)
    with pytest.raises(Exception, match="(?i)kafka"):  # Spark: "Failed to find the data source: kafka"
        runner.source()
    assert kafka_connector.options(home.settings.log_url + "&sasl.username=u", "events") == {
        "kafka.bootstrap.servers": broker.bootstrap, "subscribe": "events", "startingOffsets": "earliest", "includeHeaders": "true",
        "kafka.isolation.level": "read_committed", "kafka.sasl.username": "u",
    }


def test_the_connector_starts_a_new_query_at_given_offsets():
    """``start_at_group``: the connector's ``startingOffsets`` JSON, 0 as -2 (the earliest
    offset retention has kept)."""
    url = "kafka://127.0.0.1:9092/?retention_ms=1"
    assert kafka_connector.options(url, "events", {0: 5, 1: 0})["startingOffsets"] == '{"events": {"0": 5, "1": -2}}'
    assert kafka_connector.options(url, "events", {0: 0, 1: 0})["startingOffsets"] == "earliest"
