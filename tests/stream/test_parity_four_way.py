"""Four-way parity: one generated stream through both logs and both engines.

The same events — out of order, 3 % re-sent duplicates, late ones, and a hot user sending 30 %
of the traffic — are appended, request by request and split by identity key over
:data:`PARTITIONS` partitions, to the embedded log (SQLite) and to a Kafka-protocol broker
(Tansu, one producer transaction per request group). Then:

1. headwater's engine on the embedded log;
2. headwater's engine on Kafka;
3. Spark Structured Streaming on Kafka, on the standalone cluster (master + 2 workers);
4. Spark on the embedded log, on the same cluster.

The events arrive as they would live: :data:`CHUNK` events at a time are appended to both
logs, and headwater's engines each run one trigger (available-now) after every chunk, so a
micro-batch is a chunk on either log (Kafka's offsets differ: each transaction leaves a commit
marker) and the hot user's partition keeps pace in event time with the others. Spark replays
the batch boundaries headwater recorded on the same log (``offsets/N``), as
``test_spark_parity`` does. Late events are far behind (:data:`LATE_MIN` minutes, more than
two batches of event time plus the delay), so under both engines' watermark rules the same
events are late; that this holds is asserted against
:func:`tests.stream.test_spark_parity.reference` for every run, so the equality below is not luck.

Compared: ``bronze.events`` (every column of the canonical event), the append-mode windows of
``realtime.per_minute`` (counts, distinct-user estimates), and gold: the DuckDB models over
each bronze, and the Spark SQL models on the cluster over Spark-on-Kafka's bronze.
"""

from __future__ import annotations

import dataclasses
import hashlib
import datetime as dt
import random
from pathlib import Path

import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.ingest.partitioning import event_appends
from headwater.log import open_log
from headwater.models.dag import MODELS
from headwater.models.run import build
from headwater.stream.processor import QUERY, BronzeStream, StreamConfig
from tests.helpers import query
from tests.models.test_spark_parity import assert_same
from tests.stream.conftest import table_rows
from tests.stream.test_spark_parity import PIPELINE, events_table, reference, stream

pytestmark = pytest.mark.slow

PARTITIONS = 3
REQUEST = 40  # events per request: one log append each, split by identity key
CHUNK = 160  # events arriving between two triggers: ~5 min of event time
LATE_MIN, LATE_MAX = 30, 45  # minutes behind
HOT_SHARE = 0.3


def generated() -> pa.Table:
    rng = random.Random(23)
    evs = stream(rng, 1_200, late_every=0.05, late_min=LATE_MIN, late_max=LATE_MAX, late_after=2 * CHUNK)
    # user ids as the collector stores them (hex tokens, which the log partitions by)
    hot = [dataclasses.replace(e, user=token("hot" if rng.random() < HOT_SHARE else e.user)) for e in evs]
    # a re-sent duplicate keeps its original's user
    first = {}
    for e in hot:
        first.setdefault(e.event_id, e)
    return events_table([first[e.event_id] for e in hot])


def token(user: str) -> str:
    return hashlib.blake2b(user.encode(), digest_size=16).hexdigest()


def fill(url: str, events: pa.Table) -> None:
    log = open_log(url)
    log.ensure_topic("events", PARTITIONS)
    log.ensure_topic("bad_rows", 1)
    for i in range(0, events.num_rows, REQUEST):
        log.append(event_appends(events.slice(i, REQUEST), PARTITIONS))
    log.close()


def home_on(path: Path, log_url: str | None = None) -> Home:
    path.mkdir(parents=True)
    if log_url:
        (path / "headwater.toml").write_text(f'[log]\nurl = "{log_url}"\npartitions = {PARTITIONS}\n')
    return Home(path)


def trigger(home: Home) -> None:
    """One trigger of headwater's engine: everything the log holds, as one micro-batch."""
    BronzeStream(home, StreamConfig(compact_every=0), pipeline=PIPELINE).run(available_now=True)


def batches_of(home: Home) -> list[list]:
    """The committed batches of ``home``'s engine as ``[(partition, Ev)]`` lists for
    :func:`reference`, read back from the log by their recorded offset ranges."""
    from headwater.stream.checkpoint import Checkpoint

    log, ck = open_log(home.settings.log_url), Checkpoint(home.checkpoint_dir(QUERY))
    batches = []
    for n in range(ck.latest_committed() + 1):
        batch = []
        for p, (s, e) in sorted(ck.read_offsets(n)["events"].items()):
            if e > s:
                batch += [(p, ev) for ev in as_evs(log.read("events", p, s, e, EVENT_SCHEMA).events)]
        batches.append(batch)
    log.close()
    return batches


def as_evs(rows: pa.Table) -> list:
    from tests.stream.test_spark_parity import Ev

    return [Ev(r["event_id"], r["event_ts"], r["event_name"], r["user_id"]) for r in rows.to_pylist()]


def spark_runs(spark, streams: list[dict], gold_home: str, start: str, end: str) -> list[int]:
    """Driver (on the cluster), one application for all of Spark's work — a driver and two
    executor JVMs start once, not three times: each of ``streams`` (``home``, ``log_url``,
    ``offsets``) replays a headwater checkpoint's batches of ``log_url`` into ``home``'s bronze
    and realtime tables, one after the other (each query runs to its end before the next
    starts; each has its own checkpoint and state); then the batch models on Spark SQL over
    ``gold_home``'s bronze. Returns the data batches of each stream's bronze query."""
    from headwater.stream.spark.runner import SparkConfig, SparkPipeline

    batches = []
    for s in streams:
        queries = SparkPipeline(spark, Home(Path(s["home"])), PIPELINE, SparkConfig(replay_offsets=Path(s["offsets"])),
                                log_url=s["log_url"]).run_available_now()
        batches.append(max(sum(1 for p in q.recentProgress if p["numInputRows"]) for q in queries))
    build(Home(Path(gold_home)), dt.date.fromisoformat(start), dt.date.fromisoformat(end), engine="spark")
    return batches


def bronze(home: Home) -> pa.Table:
    t = query(home, "SELECT * FROM bronze.events").select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)
    return t.sort_by([("event_id", "ascending")])


def windows(home: Home) -> dict:
    rows = table_rows(home, "realtime.per_minute")
    keys = [(r["window_start"], r["event_name"]) for r in rows]
    assert len(keys) == len(set(keys)), "a window was emitted twice"
    return {(r["window_start"], r["event_name"]): (r["events"], r["users"]) for r in rows}


def gold(home: Home) -> dict[str, pa.Table]:
    out = {}
    for model in MODELS:
        if model.table.startswith("gold."):
            t = query(home, f"SELECT * FROM {model.table}").select(model.schema.names).cast(model.schema)
            out[model.table] = t.sort_by([(n, "ascending") for n in model.schema.names])
    return out


def test_four_ways_give_identical_bronze_windows_and_gold(tmp_path, spark_cluster):
    from tests.kafka import start_kafka

    events = generated()
    ids = events["event_id"].to_pylist()
    assert len(ids) - len(set(ids)) >= 30  # duplicates in the input
    broker = start_kafka()  # its own: the collector's topic names are fixed
    try:
        sqlite_home = home_on(tmp_path / "embedded-sqlite")
        kafka_home = home_on(tmp_path / "embedded-kafka", broker.url())
        for i in range(0, events.num_rows, CHUNK):
            for home in (sqlite_home, kafka_home):
                fill(home.settings.log_url, events.slice(i, CHUNK))
                trigger(home)
        runs = {"embedded/sqlite": batches_of(sqlite_home), "embedded/kafka": batches_of(kafka_home)}
        day = events["ds"][0].as_py()
        last = max(events["ds"].to_pylist())
        sources = {"spark/kafka": kafka_home, "spark/sqlite": sqlite_home}
        spark_homes = {name: home_on(tmp_path / name.replace("/", "-")) for name in sources}
        run = spark_cluster.drive(f"{__name__}:spark_runs", gold_home=str(spark_homes["spark/kafka"].root), start=str(day), end=str(last),
                                  streams=[{"home": str(spark_homes[name].root), "log_url": source.settings.log_url,
                                            "offsets": str(source.checkpoint_dir(QUERY) / "offsets")} for name, source in sources.items()])
        assert run.returncode == 0, run.output[-4000:]
        assert run.result == [len(runs[f"embedded/{name.split('/')[1]}"]) for name in sources]  # the same batches, replayed
        homes = {"embedded/sqlite": sqlite_home, "embedded/kafka": kafka_home, **spark_homes}

        # The input keeps clear of where the engines' watermark rules differ, on both logs' batches.
        for name, batches in runs.items():
            assert len(batches) >= 8, name
            spark_rule, headwater_rule = reference(batches, lag=2, per_partition_min=False), reference(batches, lag=1, per_partition_min=True)
            assert spark_rule == headwater_rule, name
        expected = reference(runs["embedded/sqlite"], lag=1, per_partition_min=True)
        assert sum(expected.values()) < len(set(ids)) - 20  # late events were dropped from the windows

        want_bronze = bronze(sqlite_home)
        assert want_bronze.num_rows == len(set(ids))  # deduplicated, late events kept
        for name, home in homes.items():
            assert bronze(home).equals(want_bronze), name
            got = windows(home)
            assert {k: v[0] for k, v in got.items()} == expected, name
            assert got == windows(sqlite_home), name  # distinct-user estimates too

        for home in (sqlite_home, kafka_home, spark_homes["spark/sqlite"]):
            build(home, day, last)  # spark/kafka's gold: Spark SQL's, built by the driver above
        want_gold = gold(sqlite_home)
        assert want_gold["gold.active_users"].num_rows > 0
        for name, home in homes.items():
            got = gold(home)
            for table, t in want_gold.items():
                assert_same(table, t, got[table])  # exact, but for the last bit of Spark's exp/pow
    finally:
        broker.stop()
