"""The embedded event log: one SQLite database in WAL mode, shared by processes.

Why it is safe against kill -9 of a writer or reader: every append is one SQLite
transaction (``BEGIN IMMEDIATE`` takes the single write lock, the next offset is read
and the records inserted under it), and with ``synchronous=FULL`` the WAL is fsynced
before ``COMMIT`` returns. A writer killed mid-transaction leaves nothing behind (its WAL
frames have no commit record); readers see only committed snapshots and never block the
writer. Offsets are therefore dense and never reused.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from headwater.log.base import Append, EventLog, Record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    topic TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL
);
-- The next offset of each partition, kept apart from the records so that retention can
-- delete every record of a partition without offsets ever being reused.
CREATE TABLE IF NOT EXISTS partition_ends (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    appended_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (topic, partition, base_offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consumer_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
"""


class SqliteLog(EventLog):
    """:class:`EventLog` on a SQLite file; one connection per thread, any number of processes.

    ``background_checkpoint_s``: for the writing process (the collector). SQLite copies the
    WAL back into the database (a checkpoint) inside whichever ``COMMIT`` crosses the
    auto-checkpoint size, stalling that append by tens of ms. With this set, the process's
    connections never auto-checkpoint and a daemon thread runs a ``PASSIVE`` checkpoint
    (never blocks writers or readers) every that many seconds instead."""

    def __init__(self, path: Path, background_checkpoint_s: float | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._auto_checkpoint = background_checkpoint_s is None
        with self._conn() as conn:
            conn.executescript(_SCHEMA)
        if background_checkpoint_s is not None:
            threading.Thread(
                target=self._checkpoint_loop, args=(background_checkpoint_s,), name="log-checkpoint", daemon=True
            ).start()

    def _checkpoint_loop(self, interval_s: float) -> None:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        while True:
            time.sleep(interval_s)
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            _enable_wal(conn)
            conn.execute("PRAGMA synchronous=FULL")
            if not self._auto_checkpoint:
                conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.conn = conn
        return conn

    def ensure_topic(self, topic: str, partitions: int) -> int:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("INSERT OR IGNORE INTO topics VALUES (?, ?)", (topic, partitions)).rowcount:
                conn.executemany("INSERT INTO partition_ends VALUES (?, ?, 0)", [(topic, p) for p in range(partitions)])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return self.partitions(topic)

    def partitions(self, topic: str) -> int:
        row = self._conn().execute("SELECT partitions FROM topics WHERE topic = ?", (topic,)).fetchone()
        if row is None:
            raise KeyError(f"topic {topic!r} does not exist")
        return row[0]

    def append(self, appends: Sequence[Append]) -> None:
        if not appends:
            return
        conn = self._conn()
        now = int(time.time() * 1000)
        conn.execute("BEGIN IMMEDIATE")
        try:
            ends: dict[tuple[str, int], int] = {}
            rows = []
            for a in appends:
                key = (a.topic, a.partition)
                if key not in ends:
                    ends[key] = self._end_offset(conn, a.topic, a.partition)
                rows.append((a.topic, a.partition, ends[key], a.count, now, a.payload))
                ends[key] += a.count
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.executemany(
                "UPDATE partition_ends SET end_offset = ? WHERE topic = ? AND partition = ?",
                [(end, topic, p) for (topic, p), end in ends.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _end_offset(conn: sqlite3.Connection, topic: str, partition: int) -> int:
        row = conn.execute(
            "SELECT end_offset FROM partition_ends WHERE topic = ? AND partition = ?", (topic, partition)
        ).fetchone()
        if row is None:
            raise KeyError(f"topic {topic!r} has no partition {partition}")
        return row[0]

    def read(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        conn = self._conn()
        # The record holding `start` may begin before it: find its base offset first.
        first = conn.execute(
            "SELECT base_offset FROM records WHERE topic = ? AND partition = ? AND base_offset <= ? "
            "ORDER BY base_offset DESC LIMIT 1",
            (topic, partition, start),
        ).fetchone()
        lo = first[0] if first else start
        rows = conn.execute(
            "SELECT base_offset, count, payload, appended_ms FROM records "
            "WHERE topic = ? AND partition = ? AND base_offset >= ? AND base_offset < ? ORDER BY base_offset",
            (topic, partition, lo, end),
        ).fetchall()
        return [Record(topic, partition, o, c, p, ms) for o, c, p, ms in rows if o + c > start]

    def end_offsets(self, topic: str) -> dict[int, int]:
        self.partitions(topic)  # KeyError for an unknown topic
        return dict(self._conn().execute("SELECT partition, end_offset FROM partition_ends WHERE topic = ?", (topic,)))

    def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        now = int(time.time() * 1000)
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT OR REPLACE INTO consumer_offsets VALUES (?, ?, ?, ?, ?)",
            [(group, topic, p, o, now) for p, o in offsets.items()],
        )
        conn.execute("COMMIT")

    def committed(self, group: str, topic: str) -> dict[int, int]:
        got = dict(
            self._conn().execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ?",
                (group, topic),
            )
        )
        return {p: got.get(p, 0) for p in range(self.partitions(topic))}

    def enforce_retention(self, retention_ms: int) -> int:
        cutoff = int(time.time() * 1000) - retention_ms
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Per partition, the smallest offset committed by any group; partitions no group
            # has committed for do not appear and so keep everything.
            deleted = conn.execute(
                """
                DELETE FROM records
                WHERE appended_ms < ?
                  AND base_offset + count <= (
                      SELECT min(c.next_offset) FROM consumer_offsets c
                      WHERE c.topic = records.topic AND c.partition = records.partition)
                RETURNING count
                """,
                (cutoff,),
            ).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return sum(c for (c,) in deleted)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _enable_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Switch ``conn``'s database to WAL mode.

    Two processes opening a *new* log at once can both try the switch; it needs an exclusive
    lock, and SQLite answers ``database is locked`` at once rather than calling the busy
    handler when waiting could deadlock (https://www.sqlite.org/c3ref/busy_handler.html).
    The switch is idempotent, so it is retried until ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
