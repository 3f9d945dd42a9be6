"""The Kafka event log (headwater.log.kafka) against a real Kafka-protocol broker (Tansu):
the EventLog contract, the value encoding, dead letters, options and failures."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pyarrow as pa
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from headwater.errors import InvalidInputError, NotFoundError, TransientError
from headwater.events import BAD_ROW_SCHEMA, EVENT_SCHEMA
from headwater.log import Append, open_log, read_schema
from headwater.log.kafka import KafkaLog, codec
from headwater.settings import describe, load
from tests.kafka import kafka_home

TS = dt.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)


def events(n: int, first: int = 0, user: str | None = None) -> pa.Table:
    rows = [{"event_id": f"e{first + i}", "event_type": "track", "event_name": "Order \"Completed\"\n", "user_id": user or f"{i:08x}",
             "event_ts": TS, "received_at": TS, "source": "s", "properties": json.dumps({"n": i, "é": "ü"}), "ds": TS.date()}
            for i in range(n)]
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def bad_rows(n: int) -> pa.Table:
    return pa.Table.from_pylist([{"received_at": TS, "error_type": "decode_failure", "reason": f"r{i}", "payload": "{", "ds": TS.date()}
                                 for i in range(n)], schema=BAD_ROW_SCHEMA)


def name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def log(kafka):
    log = open_log(kafka.url())
    yield log
    log.close()


def test_round_trip_keeps_rows_order_and_partitioning(log, kafka):
    topic, bad = name(), name()
    assert log.ensure_topic(topic, 3) == 3
    assert log.ensure_topic(topic, 5) == 3  # an existing topic keeps its count
    assert log.ensure_topic(bad, 1) == 1
    assert isinstance(log, KafkaLog) and log.atomic_multi_topic_append
    # One transaction over two topics and two partitions.
    log.append([Append(topic, 0, events(5)), Append(topic, 2, events(3, 5)), Append(bad, 0, bad_rows(2))])
    log.append([Append(topic, 0, events(4, 8))])
    ends = log.end_offsets(topic)
    assert ends[1] == 0 and ends[0] >= 9 and ends[2] >= 3  # commit markers take offsets too
    got = log.read(topic, 0, 0, ends[0], EVENT_SCHEMA)
    assert not got.dead_letters
    assert got.events.schema == read_schema(EVENT_SCHEMA)
    assert got.events.select(EVENT_SCHEMA.names).to_pylist() == pa.concat_tables([events(5), events(4, 8)]).to_pylist()
    offsets = got.events.column("_offset").to_pylist()
    assert offsets == sorted(offsets) and offsets[:5] == [0, 1, 2, 3, 4]
    assert set(got.events.column("_partition").to_pylist()) == {0}
    assert all(abs(ms - dt.datetime.now(dt.timezone.utc).timestamp() * 1000) < 120_000 for ms in got.events.column("_appended_ms").to_pylist())
    assert log.appended_ms(topic, 0, 0) == got.events.column("_appended_ms")[0].as_py()  # the default: a read
    # Adjacent ranges read every event once, whatever offsets the markers took.
    mid = offsets[6]
    halves = [log.read(topic, 0, 0, mid, EVENT_SCHEMA).events, log.read(topic, 0, mid, ends[0], EVENT_SCHEMA).events]
    assert pa.concat_tables(halves).column("event_id").to_pylist() == got.events.column("event_id").to_pylist()
    assert log.read(topic, 1, 0, 0, EVENT_SCHEMA).events.num_rows == 0
    assert log.read(bad, 0, 0, log.end_offsets(bad)[0], BAD_ROW_SCHEMA).events.select(BAD_ROW_SCHEMA.names).to_pylist() == bad_rows(2).to_pylist()
    # Keys are the identity key; values and headers are the documented encoding.
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": name(), "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, 2, 0)])
    m = consumer.poll(10)
    assert m.key() == b"00000000" and dict(m.headers()) == {"content-type": b"application/json", "headwater-schema-version": b"1"}
    assert json.loads(m.value())["event_ts"] == "2024-03-01T12:00:00.123456+00:00" and json.loads(m.value())["ds"] == "2024-03-01"
    consumer.close()


def test_group_offsets_are_committed_where_lag_tools_read_them(log, kafka):
    topic, group = name(), name()
    log.ensure_topic(topic, 2)
    assert log.committed(group, topic) == {0: 0, 1: 0}
    log.commit(group, topic, {0: 7})
    log.commit(group, topic, {1: 3})
    assert log.committed(group, topic) == {0: 7, 1: 3}
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    assert [tp.offset for tp in consumer.committed([TopicPartition(topic, 0), TopicPartition(topic, 1)], timeout=10)] == [7, 3]
    consumer.close()


def test_unknown_topic_and_partition_are_not_found(log):
    topic = name()
    with pytest.raises(NotFoundError):
        log.partitions(topic)
    with pytest.raises(NotFoundError):
        log.append([Append(topic, 0, events(1))])
    log.ensure_topic(topic, 2)
    with pytest.raises(NotFoundError):
        log.read(topic, 2, 0, 1, EVENT_SCHEMA)
    with pytest.raises(NotFoundError):
        log.append([Append(topic, 5, events(1))])


def test_undecodable_messages_are_dead_letters_and_never_block(log, kafka):
    topic = name()
    log.ensure_topic(topic, 1)
    log.append([Append(topic, 0, events(2))])
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    good = codec.encode(events(1, 100))[0]
    missing = json.dumps({"event_id": "x", "event_type": "track"}).encode()  # required columns missing
    raw = [(b"\xff\xfe not json", codec.HEADERS), (missing, codec.HEADERS), (None, None), (good, [("headwater-schema-version", b"2")]),
           (b"[1, 2]", None), (json.dumps({**json.loads(good), "event_ts": "yesterday"}).encode(), None),
           (b'{\n  "pretty": true\n}', None), (good, None)]  # the last: a foreign producer's good event, no headers
    for value, headers in raw:
        producer.produce(topic, value, partition=0, headers=headers)
    producer.flush(10)
    log.append([Append(topic, 0, events(2, 2))])
    end = log.end_offsets(topic)[0]
    got = log.read(topic, 0, 0, end, EVENT_SCHEMA)
    assert got.events.column("event_id").to_pylist() == ["e0", "e1", "e100", "e2", "e3"]
    dead = got.dead_letters
    assert [d.payload for d in dead] == [v or b"" for v, _ in raw[:-1]]
    assert all(d.count == 1 and d.topic == topic and d.partition == 0 for d in dead)
    assert "null value(s) in a required field" in dead[1].error and "tombstone" in dead[2].error and "version" in dead[3].error
    # Reading in two adjacent ranges reports each dead letter once.
    cut = dead[3].offset
    first, second = log.read(topic, 0, 0, cut, EVENT_SCHEMA), log.read(topic, 0, cut, end, EVENT_SCHEMA)
    assert [d.offset for d in first.dead_letters + second.dead_letters] == [d.offset for d in dead]


def test_non_transactional_log_refuses_an_append_across_topics(kafka):
    log = open_log(kafka.url(transactional="false"))
    try:
        a, b = name(), name()
        log.ensure_topic(a, 1), log.ensure_topic(b, 1)
        assert not log.atomic_multi_topic_append
        with pytest.raises(InvalidInputError):
            log.append([Append(a, 0, events(1)), Append(b, 0, bad_rows(1))])
        log.append([Append(a, 0, events(3))])
        assert log.end_offsets(a) == {0: 3}  # no markers: dense offsets
        assert log.read(a, 0, 0, 3, EVENT_SCHEMA).events.num_rows == 3
    finally:
        log.close()


def test_url_options_and_client_properties():
    log = open_log("kafka://h1:9092,h2:9092/?transactional=no&replication_factor=3&timeout_s=5&client.id=x", retention_ms=1000)
    assert (log.transactional, log.replication_factor, log.retention_ms, log.timeout_s) == (False, 3, 1000, 5.0)
    assert log._client == {"bootstrap.servers": "h1:9092,h2:9092", "client.id": "x"}
    for bad in ("kafka:///", "kafka://h:1/path", "kafka://h:1/?nope=1", "kafka://h:1/?enable.idempotence=false",
                "kafka://h:1/?timeout_s=s3cr3t"):
        with pytest.raises(InvalidInputError) as e:
            open_log(bad)
        assert "s3cr3t" not in str(e.value)


def test_settings_pass_client_properties_through_and_mask_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_LOG_KAFKA", json.dumps({"security.protocol": "SASL_SSL", "sasl.password": "s3cr3t"}))
    settings = load(home=tmp_path, **{"log.url": "kafka://b:9092", "log.replication_factor": 3})
    log = open_log(settings.log_url)
    assert log._client["sasl.password"] == "s3cr3t" and log.replication_factor == 3 and log.retention_ms == settings.log.retention_ms
    shown = json.dumps(describe(settings), default=str)
    assert "s3cr3t" not in shown and "SASL_SSL" not in shown and "sasl.password" in shown


def test_a_broker_that_is_down_is_a_transient_error(tmp_path):
    from tests.kafka import start_kafka

    broker = start_kafka()
    log = open_log(broker.url(timeout_s=3))
    try:
        topic = name()
        log.ensure_topic(topic, 1)
        log.append([Append(topic, 0, events(1))])
        broker.stop()
        with pytest.raises(TransientError):
            log.append([Append(topic, 0, events(1, 1))])
        with pytest.raises(TransientError):
            log.end_offsets(topic)
    finally:
        log.close()
        broker.stop()


# -- end to end: collector -> Kafka -> stream processor -> bronze --------------------------------
def test_collector_to_bronze_through_kafka_with_more_partitions_than_consumers(tmp_path, broker):
    import httpx

    from headwater.events import STREAM_GROUP
    from tests.helpers import query, run_stream, start_collector

    home = kafka_home(tmp_path / "home", broker, partitions=8)
    sent = []
    with start_collector(home.root, env={"HEADWATER_COLLECTOR_WORKERS": "1"}) as c:
        with httpx.Client(base_url=c.url, auth=(c.write_key, ""), timeout=10) as http:
            for r in range(20):
                batch = [{"type": "track", "event": "Viewed", "userId": f"user-{r}-{i}", "messageId": f"m{r}-{i}", "properties": {"i": i}}
                         for i in range(25)]
                batch.append({"type": "track", "userId": "u", "messageId": f"bad{r}"})  # no event name: a bad row
                assert http.post("/v1/batch", json={"batch": batch}).status_code == 200
                sent += [m["messageId"] for m in batch[:-1]]
    log = open_log(home.settings.log_url)
    assert log.partitions("events") == 8
    ends = log.end_offsets("events")
    assert sum(1 for e in ends.values() if e) >= 6  # the identity keys spread over the partitions
    run_stream(home)  # one processor consumes all 8 partitions
    got = query(home, "SELECT event_id, user_id FROM bronze.events").to_pylist()
    assert sorted(r["event_id"] for r in got) == sorted(sent)
    bad = query(home, "SELECT error_type FROM bronze.bad_rows").column("error_type").to_pylist()
    assert len(bad) == 20 and set(bad) == {"envelope_violation"}
    assert log.committed(STREAM_GROUP, "events") == ends  # lag tools see the stream caught up
    assert log.committed(STREAM_GROUP, "bad_rows") == log.end_offsets("bad_rows")
    # Each user's events sit in the partition the embedded log would pick.
    from headwater.ingest.partitioning import partition_of

    table = pa.concat_tables([log.read("events", p, 0, e, EVENT_SCHEMA).events for p, e in ends.items() if e])
    keys = pa.compute.coalesce(table["user_id"], table["anonymous_id"])
    assert partition_of(keys, 8).tolist() == table.column("_partition").to_pylist()
    log.close()


def test_an_undecodable_message_reaches_bronze_dead_letter(tmp_path, broker):
    from tests.helpers import query, run_stream

    home = kafka_home(tmp_path / "home", broker, partitions=2)
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 2), log.ensure_topic("bad_rows", 1)
    log.append([Append("events", 0, events(3))])
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce("events", b"\x00garbage", partition=1)
    producer.flush(10)
    log.append([Append("events", 1, events(2, 3))])
    run_stream(home)
    assert sorted(query(home, "SELECT event_id FROM bronze.events").column("event_id").to_pylist()) == ["e0", "e1", "e2", "e3", "e4"]
    dead = query(home, "SELECT topic, partition, payload FROM bronze.dead_letter").to_pylist()
    assert dead == [{"topic": "events", "partition": 1, "payload": b"\x00garbage"}]
    log.close()
