import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time

from deltalake import DeltaTable

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.settings import load
from headwater.stream.processor import QUERY, BronzeStream, StreamConfig

from .conftest import T0, append_events


def bronze_ids(home) -> list[str]:
    lake = Lake.of(home)
    if not lake.exists("bronze.events"):
        return []
    return lake.dataset("bronze.events").to_table(columns=["event_id"]).column("event_id").to_pylist()


def test_batches_land_in_bronze_once_with_duplicates_removed(home, event_log):
    append_events(event_log, 0, ["a", "b", "a"])
    append_events(event_log, 1, ["c", "b"])
    stream = BronzeStream(home)
    first = stream.run_once()
    assert (first.input_events, first.written_events, first.duplicates) == (5, 3, 2)
    append_events(event_log, 2, ["a", "d"])
    second = stream.run_once()
    assert (second.written_events, second.duplicates) == (1, 1)
    assert stream.run_once() is None
    assert sorted(bronze_ids(home)) == ["a", "b", "c", "d"]
    assert event_log.committed(QUERY, "events") == {0: 3, 1: 2, 2: 2, 3: 0}


def test_bronze_is_partitioned_by_ds_and_has_the_canonical_schema(home, event_log):
    append_events(event_log, 0, ["a"], event_ts=T0)
    append_events(event_log, 0, ["b"], event_ts=T0 + dt.timedelta(days=1))
    BronzeStream(home).run_once()
    dt_ = DeltaTable(Lake.of(home).uri("bronze.events"))
    assert dt_.metadata().partition_columns == ["ds"]
    got = dt_.to_pyarrow_table()
    assert sorted(got.column("ds").to_pylist()) == [T0.date(), T0.date() + dt.timedelta(days=1)]
    assert str(got.schema.field("event_ts").type) == "timestamp[us, tz=UTC]"


def test_replay_after_crash_between_sink_commit_and_commit_log_writes_nothing_twice(home, event_log):
    append_events(event_log, 0, ["a", "b"])
    stream = BronzeStream(home)
    stream.run_once()
    append_events(event_log, 1, ["c", "a"])
    stream.run_once()  # batch 1 reached bronze ...
    # ... and the process died before commits/1 and its state were written: exactly what a
    # kill -9 between the Delta commit and the commit log leaves behind.
    (stream.checkpoint.commits_dir / "1").unlink()
    (stream.checkpoint.state_dir / "dedup" / "1-1.arrow").unlink()
    version = DeltaTable(Lake.of(home).uri("bronze.events")).version()

    recovered = BronzeStream(home)  # re-runs batch 1 with the offsets of offsets/1
    assert DeltaTable(Lake.of(home).uri("bronze.events")).version() == version
    assert sorted(bronze_ids(home)) == ["a", "b", "c"]
    assert recovered.checkpoint.recover() == (None, 1)
    append_events(event_log, 2, ["c", "d"])  # c must still be known to the dedup state
    assert recovered.run_once().written_events == 1
    assert sorted(bronze_ids(home)) == ["a", "b", "c", "d"]


def test_replay_of_batch_that_never_reached_the_sink_writes_it(home, event_log):
    append_events(event_log, 0, ["a"])
    stream = BronzeStream(home)
    stream.checkpoint.write_offsets(0, {"events": {0: (0, 1), 1: (0, 0), 2: (0, 0), 3: (0, 0)}, "bad_rows": {0: (0, 0)}})
    append_events(event_log, 0, ["b"])  # arrived after batch 0 was planned: not part of it
    replayed = BronzeStream(home)
    assert bronze_ids(home) == ["a"]
    assert Lake.of(home).committed_batch("bronze.events", QUERY) == 0
    replayed.run_once()
    assert sorted(bronze_ids(home)) == ["a", "b"]


def test_undecodable_record_goes_to_dead_letter_and_stream_continues(home, event_log):
    append_events(event_log, 0, ["a"])
    event_log._insert([("events", 0, 3, b"not arrow")])
    append_events(event_log, 0, ["b"])
    result = BronzeStream(home).run_once()
    assert result.dead_letters == 1
    assert sorted(bronze_ids(home)) == ["a", "b"]
    dead = DeltaTable(Lake.of(home).uri("bronze.dead_letter")).to_pyarrow_table().to_pylist()
    assert len(dead) == 1
    assert (dead[0]["topic"], dead[0]["partition"], dead[0]["offset"], dead[0]["count"]) == ("events", 0, 1, 3)
    assert dead[0]["payload"] == b"not arrow"
    assert "ArrowInvalid" in dead[0]["error"]


def test_micro_batch_size_is_bounded(home, event_log):
    for i in range(5):
        append_events(event_log, 0, [f"e{i}-{j}" for j in range(10)])
    stream = BronzeStream(home, StreamConfig(max_records_per_partition=15))
    sizes = []
    while (r := stream.run_once()) is not None:
        sizes.append(r.input_events)
    assert sizes == [15, 15, 15, 5]
    assert len(bronze_ids(home)) == 50


def test_available_now_processes_backlog_and_returns(home, event_log):
    for i in range(3):
        append_events(event_log, i, [f"x{i}"])
    BronzeStream(home, StreamConfig(max_records_per_partition=1)).run(available_now=True)
    assert sorted(bronze_ids(home)) == ["x0", "x1", "x2"]


def test_sigkill_at_random_moments_neither_loses_nor_duplicates(home, event_log):
    """A producer appends (with re-sends) while the processor is SIGKILLed again and again."""
    rng = random.Random(7)
    expected: set[str] = set()
    done = threading.Event()

    def produce():
        n = 0
        while not done.is_set():
            ids = [f"id-{n + j}" for j in range(50)]
            resend = rng.sample(sorted(expected), min(5, len(expected)))  # SDK retries
            expected.update(ids)
            append_events(event_log, rng.randrange(4), ids + resend)
            n += 50
            time.sleep(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    cmd = [sys.executable, "-m", "headwater", "stream", "--trigger-interval", "0.05"]
    try:
        for _ in range(8):
            proc = subprocess.Popen(cmd, env=env)
            time.sleep(rng.uniform(0.8, 2.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        done.set()
        producer.join()
    subprocess.run([*cmd, "--available-now"], env=env, check=True, timeout=120)

    ids = bronze_ids(home)
    assert len(ids) == len(set(ids)), "duplicate event_id in bronze"
    assert set(ids) == expected
    history = DeltaTable(Lake.of(home).uri("bronze.events")).history()
    assert {h["operation"] for h in history} <= {"CREATE TABLE", "WRITE", "OPTIMIZE"}


def test_compaction_merges_micro_batch_files_without_changing_rows(home, event_log):
    """A partition is compacted after the batch that gives it ``lake.compact_min_files`` small files."""
    stream = BronzeStream(Home(home.root, load(home=home.root, **{"lake.compact_min_files": 4})), StreamConfig(compact_every=1))
    for i in range(4):
        append_events(event_log, 0, [f"c{i}-{j}" for j in range(5)])
        stream.run_once()
        assert len(DeltaTable(Lake.of(home).uri("bronze.events")).file_uris()) == (i + 1 if i < 3 else 1)
    table = DeltaTable(Lake.of(home).uri("bronze.events"))
    assert table.history()[0]["operation"] == "OPTIMIZE"
    assert sorted(bronze_ids(home)) == sorted(f"c{i}-{j}" for i in range(4) for j in range(5))
    assert Lake.of(home).committed_batch("bronze.events", QUERY) == 3


def test_consumed_log_records_past_retention_are_deleted(home, event_log):
    """``log.retention_ms`` reaches the log the stream opens, which applies it on commit."""
    stream = BronzeStream(Home(home.root, load(home=home.root, **{"log.retention_ms": 0})))
    append_events(event_log, 0, ["r1"])
    stream.run_once()
    append_events(event_log, 1, ["r2"])
    stream.run_once()
    assert not any(event_log.read("events", p, 0, 1, EVENT_SCHEMA).events.num_rows for p in (0, 1))
    assert event_log.end_offsets("events")[0] == 1
    append_events(event_log, 0, ["r3"])
    assert stream.run_once().written_events == 1
    assert sorted(bronze_ids(home)) == ["r1", "r2", "r3"]
