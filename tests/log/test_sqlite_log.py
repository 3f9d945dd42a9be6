import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pytest

from headwater.log.base import Append
from headwater.log.codec import decode, encode
from headwater.log.group_commit import GroupCommitWriter
from headwater.log.sqlite import SqliteLog


def rows(start: int, n: int) -> bytes:
    return encode(pa.table({"v": list(range(start, start + n))}))


@pytest.fixture
def log(tmp_path):
    log = SqliteLog(tmp_path / "log.db")
    log.ensure_topic("t", 2)
    yield log
    log.close()


def test_offsets_count_events_and_reads_slice_records(log):
    log.append([Append("t", 0, 3, rows(0, 3)), Append("t", 1, 2, rows(100, 2))])
    log.append([Append("t", 0, 4, rows(3, 4))])
    assert log.end_offsets("t") == {0: 7, 1: 2}
    table, bad = decode(log.read("t", 0, 2, 5), 2, 5)
    assert bad == []
    assert table.column("v").to_pylist() == [2, 3, 4]
    assert table.column("_offset").to_pylist() == [2, 3, 4]
    assert table.column("_partition").to_pylist() == [0, 0, 0]
    assert log.read("t", 0, 7, 10) == []


def test_topics_keep_their_partition_count(log):
    assert log.ensure_topic("t", 8) == 2
    with pytest.raises(KeyError, match="topic 'nope' does not exist"):
        log.partitions("nope")


def test_consumer_group_offsets(log):
    assert log.committed("g", "t") == {0: 0, 1: 0}
    log.commit("g", "t", {1: 5})
    log.commit("g", "t", {0: 2, 1: 6})
    assert log.committed("g", "t") == {0: 2, 1: 6}
    assert log.committed("other", "t") == {0: 0, 1: 0}


def test_undecodable_payload_is_reported_not_raised(log):
    log.append([Append("t", 0, 2, b"garbage"), Append("t", 0, 1, rows(0, 1)), Append("t", 0, 5, rows(0, 4))])
    table, bad = decode(log.read("t", 0, 0, 8), 0, 8)
    assert table.num_rows == 1
    assert [(b.record.offset, b.record.count) for b in bad] == [(0, 2), (3, 5)]
    assert "ArrowInvalid" in bad[0].error
    assert "payload has 4 rows, record header says 5" in bad[1].error


def test_failed_append_stores_nothing(log):
    with pytest.raises(Exception):
        log.append([Append("t", 0, 1, rows(0, 1)), Append("t", 0, 1, object())])
    assert log.end_offsets("t") == {0: 0, 1: 0}


def test_group_commit_shares_transactions_and_reports_failures(log):
    writer = GroupCommitWriter(log)
    futures = []
    threads = [
        threading.Thread(target=lambda i=i: futures.append(writer.submit([Append("t", i % 2, 10, rows(0, 10))])))
        for i in range(40)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in futures:
        assert f.result(timeout=10) is None
    assert sum(log.end_offsets("t").values()) == 400
    bad = writer.submit([Append("t", 0, 1, object())])
    with pytest.raises(Exception):
        bad.result(timeout=10)
    writer.close()
    assert sum(log.end_offsets("t").values()) == 400


WRITER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from headwater.log.base import Append
    from headwater.log.codec import encode
    from headwater.log.sqlite import SqliteLog
    log = SqliteLog(sys.argv[1])
    log.ensure_topic("t", 2)
    i = 0
    while True:
        n = 1 + i % 7
        log.append([Append("t", i % 2, n, encode(pa.table({"v": [i] * n})))])
        i += 1
        if i == int(sys.argv[2]):
            break
    """
)


def test_concurrent_writer_processes_get_dense_offsets(tmp_path):
    path = tmp_path / "log.db"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), "150"]) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    log = SqliteLog(path)
    for part in (0, 1):
        records = log.read("t", part, 0, log.end_offsets("t")[part])
        offsets = [r.offset for r in records]
        assert offsets == sorted(offsets)
        assert all(a.offset + a.count == b.offset for a, b in zip(records, records[1:]))
    assert sum(log.end_offsets("t").values()) == 2 * sum(1 + i % 7 for i in range(150))


def test_writer_killed_mid_append_leaves_a_consistent_log(tmp_path):
    path = tmp_path / "log.db"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "-1"])
        time.sleep(1.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    log = SqliteLog(path)
    ends = log.end_offsets("t")
    assert sum(ends.values()) > 0
    for part, end in ends.items():
        table, bad = decode(log.read("t", part, 0, end), 0, end)
        assert bad == []
        assert table.column("_offset").to_pylist() == list(range(end))
    log.append([Append("t", 0, 1, rows(0, 1))])
    assert log.end_offsets("t")[0] == ends[0] + 1


def test_retention_deletes_only_old_records_every_group_has_consumed(log):
    log.append([Append("t", 0, 3, rows(0, 3)), Append("t", 0, 2, rows(3, 2)), Append("t", 1, 4, rows(0, 4))])
    assert log.enforce_retention(0) == 0  # no group has consumed anything
    log.commit("bronze", "t", {0: 4, 1: 4})
    log.commit("other", "t", {0: 5})
    time.sleep(0.01)
    assert log.enforce_retention(3_600_000) == 0  # younger than the retention
    # partition 0: first record (offsets 0-2) is below both groups; the second (3-4) is not
    # below bronze's 4. Partition 1: "other" has not committed there, so min is bronze's 4.
    assert log.enforce_retention(0) == 3 + 4
    assert [r.offset for r in log.read("t", 0, 0, 5)] == [3]
    assert log.read("t", 1, 0, 4) == []
    assert log.end_offsets("t") == {0: 5, 1: 4}  # offsets are never reused


def test_append_to_a_missing_partition_stores_nothing(log):
    with pytest.raises(KeyError, match="topic 't' has no partition 2"):
        log.append([Append("t", 0, 1, rows(0, 1)), Append("t", 2, 1, rows(0, 1))])
    assert log.end_offsets("t") == {0: 0, 1: 0}


def test_background_checkpoint_moves_the_wal_into_the_database(tmp_path):
    log = SqliteLog(tmp_path / "log.db", background_checkpoint_s=0.1)
    log.ensure_topic("t", 1)
    payload = encode(pa.table({"v": [b"x" * 100_000]}))
    for _ in range(50):
        log.append([Append("t", 0, 1, payload)])
    deadline = time.monotonic() + 10
    while (tmp_path / "log.db").stat().st_size < 5_000_000:  # appends live in the WAL until checkpointed
        assert time.monotonic() < deadline, "no checkpoint within 10 s"
        time.sleep(0.1)
    assert sum(log.end_offsets("t").values()) == 50
