import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pytest

from headwater.errors import InvalidInputError, NotFoundError, TransientError
from headwater.log import Append, open_log
from headwater.log.base import oldest_unconsumed_ms
from headwater.log.group_commit import GroupCommitWriter
from headwater.log.sqlite import SqliteLog, _encode
from tests.helpers import PerTopicLog

V = pa.schema([pa.field("v", pa.int64(), nullable=False)])


def rows(start: int, n: int) -> pa.Table:
    return pa.table({"v": list(range(start, start + n))})


def read(log, topic, partition, start, end, schema=V):
    return log.read(topic, partition, start, end, schema)


@pytest.fixture
def log(tmp_path):
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    log.ensure_topic("t", 2)
    yield log
    log.close()


def test_one_offset_is_one_event_and_reads_return_exactly_the_range(log):
    log.append([Append("t", 0, rows(0, 3)), Append("t", 1, rows(100, 2))])
    log.append([Append("t", 0, rows(3, 4))])
    assert log.end_offsets("t") == {0: 7, 1: 2}
    events, dead = read(log, "t", 0, 2, 5)
    assert dead == []
    assert events.schema.names == ["v", "_partition", "_offset", "_appended_ms"]
    assert events.column("v").to_pylist() == [2, 3, 4]
    assert events.column("_offset").to_pylist() == [2, 3, 4]
    assert events.column("_partition").to_pylist() == [0, 0, 0]
    assert abs(events.column("_appended_ms")[0].as_py() - time.time() * 1000) < 60_000
    empty, dead = read(log, "t", 0, 7, 10)
    assert empty.num_rows == 0 and empty.schema.names == events.schema.names and dead == []


def test_appended_ms_of_an_offset_and_the_oldest_unconsumed_event(log):
    assert oldest_unconsumed_ms(log, "g", "nope") is None  # no topic yet
    log.append([Append("t", 0, rows(0, 3))])
    time.sleep(0.01)
    log.append([Append("t", 0, rows(3, 2)), Append("t", 1, rows(0, 1))])
    at = read(log, "t", 0, 0, 5).events.column("_appended_ms").to_pylist()
    assert [log.appended_ms("t", 0, o) for o in range(6)] == [*at, None]  # the unit holding each offset; none past the end
    assert at[2] < at[3]
    assert oldest_unconsumed_ms(log, "g", "t") == at[0]
    log.commit("g", "t", {0: 4, 1: 0})
    assert oldest_unconsumed_ms(log, "g", "t") == at[3]  # partition 1's event came in the same append as offset 3
    log.commit("g", "t", {0: 5, 1: 1})
    assert oldest_unconsumed_ms(log, "g", "t") is None  # caught up
    with pytest.raises(NotFoundError):
        log.appended_ms("t", 5, 0)


def test_topics_keep_their_partition_count_and_unknown_ones_are_not_found(log):
    assert log.ensure_topic("t", 8) == 2
    with pytest.raises(NotFoundError, match="topic 'nope' does not exist"):
        log.partitions("nope")
    with pytest.raises(NotFoundError, match="topic 'nope'"):
        read(log, "nope", 0, 0, 1)
    with pytest.raises(NotFoundError, match="topic 't' has no partition 5"):
        read(log, "t", 5, 0, 1)
    with pytest.raises(NotFoundError):
        log.end_offsets("nope")


def test_consumer_group_offsets(log):
    assert log.committed("g", "t") == {0: 0, 1: 0}
    log.commit("g", "t", {1: 5})
    log.commit("g", "t", {0: 2, 1: 6})
    assert log.committed("g", "t") == {0: 2, 1: 6}
    assert log.committed("other", "t") == {0: 0, 1: 0}


def test_unreadable_units_become_dead_letters_once_each(log):
    log._insert([("t", 0, 2, b"garbage")])  # offsets 0-1
    log.append([Append("t", 0, rows(0, 1))])  # 2
    log._insert([("t", 0, 5, _encode(rows(0, 4)))])  # 3-7: claims 5, holds 4
    log.append([Append("t", 0, pa.table({"v": ["not a number"]}))])  # 8
    events, dead = read(log, "t", 0, 0, 9)
    assert events.column("_offset").to_pylist() == [2]
    assert [(d.offset, d.count) for d in dead] == [(0, 2), (3, 5), (8, 1)]
    assert "ArrowInvalid" in dead[0].error and dead[0].payload == b"garbage" and dead[0].topic == "t"
    assert "payload has 4 rows, record header says 5" in dead[1].error
    assert dead[2].error.startswith("invalid record: column v: cannot cast string to int64")
    # A bad unit straddling two reads is reported by the read holding its first offset only.
    assert [d.offset for d in read(log, "t", 0, 0, 4)[1]] == [0, 3]
    assert [d.offset for d in read(log, "t", 0, 4, 9)[1]] == [8]


def test_reads_conform_to_the_schema_and_fill_missing_optional_columns(log):
    schema = pa.schema([pa.field("v", pa.int64(), nullable=False), pa.field("w", pa.string())])
    log.append([Append("t", 1, pa.table({"v": pa.array([1], pa.int32())}))])
    log.append([Append("t", 1, pa.table({"v": [2], "w": ["x"], "extra": [0.5]}))])
    events, dead = read(log, "t", 1, 0, 2, schema)
    assert not dead
    assert events.select(["v", "w"]).to_pylist() == [{"v": 1, "w": None}, {"v": 2, "w": "x"}]
    assert events.schema.field("v").type == pa.int64()


def test_failed_append_stores_nothing(log):
    with pytest.raises(Exception):
        log.append([Append("t", 0, rows(0, 1)), Append("t", 0, object())])
    assert log.end_offsets("t") == {0: 0, 1: 0}


def test_append_to_a_missing_partition_stores_nothing(log):
    with pytest.raises(NotFoundError, match="topic 't' has no partition 2"):
        log.append([Append("t", 0, rows(0, 1)), Append("t", 2, rows(0, 1))])
    assert log.end_offsets("t") == {0: 0, 1: 0}


def test_appends_to_several_topics_are_one_transaction(log):
    log.ensure_topic("u", 1)
    assert log.atomic_multi_topic_append
    with pytest.raises(NotFoundError):
        log.append([Append("t", 0, rows(0, 1)), Append("u", 0, rows(0, 1)), Append("u", 3, rows(0, 1))])
    assert log.end_offsets("t") == {0: 0, 1: 0} and log.end_offsets("u") == {0: 0}
    both = [Append("t", 0, rows(0, 1)), Append("u", 0, rows(0, 2))]
    assert log.atomic_groups(both) == [both]


def test_a_log_without_multi_topic_atomicity_refuses_mixed_appends(tmp_path):
    log = PerTopicLog(tmp_path / "log.db")
    log.ensure_topic("t", 1), log.ensure_topic("u", 1)
    mixed = [Append("t", 0, rows(0, 1)), Append("u", 0, rows(0, 1)), Append("t", 0, rows(1, 1))]
    with pytest.raises(InvalidInputError, match="one topic per atomic append"):
        log.append(mixed)
    assert log.atomic_groups(mixed) == [[mixed[0], mixed[2]], [mixed[1]]]
    for group in log.atomic_groups(mixed):
        log.append(group)
    assert log.end_offsets("t") == {0: 2} and log.end_offsets("u") == {0: 1}


def test_group_commit_shares_transactions_and_reports_failures(log):
    writer = GroupCommitWriter(log)
    futures = []
    threads = [
        threading.Thread(target=lambda i=i: futures.append(writer.submit([Append("t", i % 2, rows(0, 10))])))
        for i in range(40)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        assert f.result(timeout=10) is None
    assert sum(log.end_offsets("t").values()) == 400
    bad = writer.submit([Append("t", 0, object())])
    with pytest.raises(Exception):
        bad.result(timeout=10)
    writer.close()
    assert sum(log.end_offsets("t").values()) == 400


def test_group_commit_on_a_per_topic_log_appends_each_topic_and_fails_the_requests_it_touched(tmp_path):
    log = PerTopicLog(tmp_path / "log.db")
    log.ensure_topic("events", 2), log.ensure_topic("bad_rows", 1)
    writer = GroupCommitWriter(log)
    request = [Append("events", 0, rows(0, 2)), Append("events", 1, rows(2, 1)), Append("bad_rows", 0, rows(0, 1))]
    assert writer.submit(request).result(timeout=10) is None
    assert log.end_offsets("events") == {0: 2, 1: 1} and log.end_offsets("bad_rows") == {0: 1}
    log.fail_topic = "bad_rows"
    failing = writer.submit(request)
    events_only = writer.submit(request[:1])
    with pytest.raises(TransientError):
        failing.result(timeout=10)
    assert events_only.result(timeout=10) is None
    writer.close()
    # The failed request's events were stored (its retry re-sends them: deduplicated by
    # event_id downstream); its bad rows were not.
    assert log.end_offsets("events")[0] >= 4 and log.end_offsets("bad_rows") == {0: 1}


WRITER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from headwater.log import Append, open_log
    log = open_log(sys.argv[1])
    log.ensure_topic("t", 2)
    i = 0
    while True:
        n = 1 + i % 7
        log.append([Append("t", i % 2, pa.table({"v": [i] * n}))])
        i += 1
        if i == int(sys.argv[2]):
            break
    """
)


def test_concurrent_writer_processes_get_dense_offsets(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, "150"]) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    log = open_log(url)
    for part in (0, 1):
        events, dead = read(log, "t", part, 0, log.end_offsets("t")[part])
        assert not dead and events.column("_offset").to_pylist() == list(range(events.num_rows))
    assert sum(log.end_offsets("t").values()) == 2 * sum(1 + i % 7 for i in range(150))


def test_writer_killed_mid_append_leaves_a_consistent_log(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = open_log(url)
    log.ensure_topic("t", 2)
    for i in range(3):
        before = sum(log.end_offsets("t").values())
        proc = subprocess.Popen([sys.executable, "-c", WRITER, url, "-1"])
        deadline = time.monotonic() + 60
        while sum(log.end_offsets("t").values()) == before:  # kill it once it is appending
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(0.1 * i)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    ends = log.end_offsets("t")
    for part, end in ends.items():
        events, dead = read(log, "t", part, 0, end)
        assert dead == []
        assert events.column("_offset").to_pylist() == list(range(end))
    log.append([Append("t", 0, rows(0, 1))])
    assert log.end_offsets("t")[0] == ends[0] + 1


def test_commit_applies_retention_to_what_every_group_has_consumed(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = open_log(url, retention_ms=3_600_000)
    log.ensure_topic("t", 2)
    log.append([Append("t", 0, rows(0, 3)), Append("t", 1, rows(0, 4))])
    log.append([Append("t", 0, rows(3, 2))])
    log.commit("bronze", "t", {0: 4, 1: 4})
    assert read(log, "t", 0, 0, 5)[0].num_rows == 5  # younger than the retention
    time.sleep(0.01)
    eager = open_log(url + "?retention_ms=0")
    eager.commit("other", "t", {0: 5})
    # Partition 0: the first record (offsets 0-2) is below both groups; the second (3-4) is
    # not below bronze's 4. Partition 1: "other" has not committed there, so min is bronze's 4.
    assert read(log, "t", 0, 0, 5)[0].column("_offset").to_pylist() == [3, 4]
    assert read(log, "t", 1, 0, 4)[0].num_rows == 0
    assert log.end_offsets("t") == {0: 5, 1: 4}  # offsets are never reused
    eager.close()


def test_a_log_no_group_has_consumed_keeps_everything(tmp_path):
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}", retention_ms=0)
    log.ensure_topic("t", 1), log.ensure_topic("u", 1)
    log.append([Append("t", 0, rows(0, 3))])
    time.sleep(0.01)
    log.commit("g", "u", {0: 0})
    assert read(log, "t", 0, 0, 3)[0].num_rows == 3


def test_background_checkpoint_moves_the_wal_into_the_database(tmp_path):
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}", background_checkpoint_s=0.1)
    log.ensure_topic("t", 1)
    payload = pa.table({"v": [b"x" * 100_000]})
    for _ in range(50):
        log.append([Append("t", 0, payload)])
    deadline = time.monotonic() + 10
    while (tmp_path / "log.db").stat().st_size < 5_000_000:  # appends live in the WAL until checkpointed
        assert time.monotonic() < deadline, "no checkpoint within 10 s"
        time.sleep(0.1)
    assert sum(log.end_offsets("t").values()) == 50


def test_urls_choose_the_backend_and_name_the_setting(tmp_path):
    log = open_log(f"sqlite:////{tmp_path / 'a.db'}?background_checkpoint_s=5")  # SQLAlchemy's four slashes
    assert isinstance(log, SqliteLog) and log.path == tmp_path / "a.db"
    for url, message in [
        ("nats://broker:4222", "unknown event log scheme nats:; known: sqlite://, kafka://"),
        (str(tmp_path / "log.db"), r"unknown event log scheme \(none\)"),
        ("sqlite://host/log.db", "expected sqlite:///<absolute path"),
        ("sqlite:///", "expected sqlite:///<absolute path"),
        (f"sqlite:///{tmp_path / 'b.db'}?nope=1", "unknown sqlite option 'nope'"),
        (f"sqlite:///{tmp_path / 'b.db'}?retention_ms=soon", "option retention_ms must be a int"),
    ]:
        with pytest.raises(InvalidInputError, match=message) as e:
            open_log(url)
        assert e.value.field == "log.url"


def test_sqlite_errors_become_headwater_errors(tmp_path):
    (tmp_path / "not-a-log.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(InvalidInputError, match="not a usable SQLite event log") as e:
        open_log(f"sqlite:///{tmp_path / 'not-a-log.db'}")
    assert isinstance(e.value.__cause__, sqlite3.DatabaseError)
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    log.ensure_topic("t", 1)
    holder = sqlite3.connect(tmp_path / "log.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock past the busy timeout
    log._conn().execute("PRAGMA busy_timeout = 50")
    with pytest.raises(TransientError, match="database is locked") as e:
        log.append([Append("t", 0, rows(0, 1))])
    assert isinstance(e.value.__cause__, sqlite3.OperationalError)
    holder.execute("ROLLBACK")
    log.append([Append("t", 0, rows(0, 1))])
    assert log.end_offsets("t") == {0: 1}


def test_background_checkpoint_thread_survives_errors_and_reports_them(tmp_path, monkeypatch):
    """Any error of a checkpoint round (here: a full disk, then a file that is no database)
    is logged and shown in ``problems`` / ``healthy()``; the thread goes on and recovers."""
    import headwater.log.sqlite as module

    connect = sqlite3.connect
    failure: list[Exception] = []

    def flaky_connect(*args, **kwargs):
        if threading.current_thread().name == "log-checkpoint" and failure:
            raise failure[0]
        return connect(*args, **kwargs)

    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    failure.append(full)
    monkeypatch.setattr(module.sqlite3, "connect", flaky_connect)
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}", background_checkpoint_s=0.05)
    log.ensure_topic("t", 1)

    def wait_for(condition):
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline
            time.sleep(0.02)

    wait_for(lambda: not log.healthy())
    assert "disk full (ENOSPC)" in log.problems[0]
    failure[0] = sqlite3.DatabaseError("file is not a database")  # not an OperationalError: it used to kill the thread
    wait_for(lambda: "file is not a database" in " ".join(log.problems))
    log.append([Append("t", 0, rows(0, 3))])  # appends never depended on the checkpoint
    failure.clear()
    wait_for(log.healthy)
    assert log._checkpoint_thread.is_alive() and log.problems == []
    assert log.end_offsets("t") == {0: 3}


class _FailingConnection:
    """A connection whose statements in ``fail`` raise a disk I/O error (the others run)."""

    def __init__(self, conn: sqlite3.Connection, fail: set[str]):
        self.conn, self.fail = conn, fail

    def execute(self, sql, *args):
        if sql in self.fail:
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.conn, name)


@pytest.mark.parametrize("fail", [{"COMMIT"}, {"COMMIT", "ROLLBACK"}], ids=["commit", "commit-and-rollback"])
def test_commit_rolls_back_on_failure_and_the_retry_works(log, tmp_path, fail):
    """A failing consumer-offset commit changes no offset, never leaves the write lock held
    (even when the ROLLBACK fails too: the connection is then replaced), and retrying works."""
    log.commit("g", "t", {0: 1, 1: 1})
    log._local.conn = _FailingConnection(log._conn(), fail)
    with pytest.raises(TransientError, match="disk I/O error"):
        log.commit("g", "t", {0: 5, 1: 7})
    assert log.committed("g", "t") == {0: 1, 1: 1}
    other = sqlite3.connect(tmp_path / "log.db", timeout=0.5, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the write lock is free
    other.execute("ROLLBACK")
    other.close()
    if len(fail) == 1:
        log._local.conn = log._local.conn.conn
    log.commit("g", "t", {0: 5, 1: 7})
    assert log.committed("g", "t") == {0: 5, 1: 7}
