"""The group-commit writer under a slow log: a bounded queue, cancelled and timed-out waiters.

The log is a real SQLite log made slow by holding its write lock (``BEGIN IMMEDIATE``) from
another connection: the writer then blocks inside its transaction, as behind a slow disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import contextmanager

import pyarrow as pa
import pytest

from headwater.log import Append, open_log
from headwater.log.group_commit import GroupCommitWriter, QueueFull

V = pa.schema([pa.field("v", pa.int64(), nullable=False)])


@pytest.fixture
def log(tmp_path):
    log = open_log(f"sqlite:///{tmp_path / 'log.db'}")
    log.ensure_topic("t", 1)
    yield log
    log.close()


@contextmanager
def write_locked(log):
    """Hold the log's SQLite write lock from another connection until the block ends."""
    conn = sqlite3.connect(log.path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def one(v: int) -> list[Append]:
    return [Append("t", 0, pa.table({"v": [v]}))]


def stored(log) -> list[int]:
    end = log.end_offsets("t")[0]
    return sorted(log.read("t", 0, 0, end, V).events.column("v").to_pylist())


def wait_until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_the_writer_keeps_committing_after_cancelled_waiters(log):
    writer = GroupCommitWriter(log)
    with write_locked(log):
        taken = writer.submit(one(1))
        wait_until(lambda: taken.running())  # the writer holds it, blocked on the lock
        queued = [writer.submit(one(v)) for v in (2, 3)]
        assert not taken.cancel()  # claimed by the writer: no longer cancellable
        assert all(f.cancel() for f in queued)  # still queued: cancelled, never stored
    assert taken.result(timeout=10) is None
    after = writer.submit(one(4))
    assert after.result(timeout=10) is None
    assert writer.alive
    assert stored(log) == [1, 4]
    writer.close()
    assert not writer.alive


def test_a_timed_out_waiter_does_not_stop_the_writer(log):
    """The collector's path: ``asyncio.wait_for`` over the writer's future."""
    writer = GroupCommitWriter(log)

    async def submit(v: int, timeout: float) -> None:
        await asyncio.wait_for(asyncio.wrap_future(writer.submit(one(v))), timeout)

    async def main():
        with write_locked(log):
            results = await asyncio.gather(*(submit(v, 0.2) for v in range(10)), return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in results), results
        await submit(100, 10)

    asyncio.run(main())
    assert writer.alive
    # The submissions the writer had taken (one group) when their waiters gave up were
    # committed anyway (a retry re-sends them; events are deduplicated by event_id
    # downstream); the cancelled ones still queued were not.
    values = stored(log)
    assert values[-1] == 100 and set(values) <= {*range(10), 100} and len(set(values)) == len(values)
    writer.close()


def test_the_queue_is_bounded_and_a_full_queue_refuses_at_once(log):
    writer = GroupCommitWriter(log, max_queue=2)
    with write_locked(log):
        taken = writer.submit(one(0))
        wait_until(lambda: taken.running())
        waiting = [writer.submit(one(v)) for v in (1, 2)]
        assert writer.waiting == 2
        started = time.monotonic()
        with pytest.raises(QueueFull) as refused:
            writer.submit(one(3))
        assert time.monotonic() - started < 0.5 and refused.value.retry_after_s == 1.0
    for f in [taken, *waiting]:
        assert f.result(timeout=10) is None
    assert writer.submit(one(4)).result(timeout=10) is None  # room again
    writer.close()
    assert stored(log) == [0, 1, 2, 4]


def test_max_queue_counts_the_weight_of_waiting_submissions(log):
    writer = GroupCommitWriter(log, max_queue=4)
    with write_locked(log):
        taken = writer.submit(one(0), weight=3)
        wait_until(lambda: taken.running())  # taken by the writer: no longer waiting
        batch = writer.submit(one(1), weight=3)  # a batch of 3 requests
        assert writer.waiting == 3 and writer.room() == 1
        with pytest.raises(QueueFull):
            writer.submit(one(2), weight=2)
        alone = writer.submit(one(3))
        assert writer.room() == 0
    for f in (taken, batch, alone):
        assert f.result(timeout=10) is None
    assert writer.waiting == 0 and writer.room() == 4
    writer.close()
    assert stored(log) == [0, 1, 3]


def test_close_commits_a_full_queue(log):
    writer = GroupCommitWriter(log, max_queue=3)
    with write_locked(log):
        futures = [writer.submit(one(0))]
        wait_until(lambda: futures[0].running())
        futures += [writer.submit(one(v)) for v in (1, 2, 3)]
    writer.close()
    assert all(f.result(timeout=0) is None for f in futures)
    assert stored(log) == [0, 1, 2, 3]
