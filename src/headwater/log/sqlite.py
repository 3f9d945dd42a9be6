"""The embedded event log: one SQLite database in WAL mode, shared by processes.

URL: ``sqlite:///<absolute path>`` (``sqlite:////<path>`` too), with options as query
parameters (``?background_checkpoint_s=1&retention_ms=604800000``) or keywords of
:func:`headwater.log.open_log`, which win.

Storage: one row of ``records`` per partition per :meth:`~SqliteLog.append` call — a
*record* of ``count`` events, ``base_offset .. base_offset+count-1``, as ONE Arrow IPC
stream (the shape of a Kafka record batch); the appends of one call to the same
partition (a group commit's requests) are stored as one record, their rows in call order,
when their schemas match. Columns travel as they are: an append and a read cost one
(de)serialisation per record, not per event, which is what makes this log fast. Records are
this module's business: :meth:`SqliteLog.read` slices them to the requested offsets.

Why it is safe against kill -9 of a writer or reader: every append is one SQLite
transaction (``BEGIN IMMEDIATE`` takes the single write lock, the next offset is read
and the records inserted under it), and with ``synchronous=FULL`` the WAL is fsynced
before ``COMMIT`` returns. A writer killed mid-transaction leaves nothing behind (its WAL
frames have no commit record); readers see only committed snapshots and never block the
writer. Offsets are therefore dense and never reused. Appends to several topics share the
transaction: :attr:`SqliteLog.atomic_multi_topic_append` is true.

Several writing processes (the collector's workers, each with its own group-commit thread,
beside the stream committing its offsets): the write lock makes their transactions take
turns, and since each reads a partition's end offset under it, offsets stay dense, unique
and in commit order per partition whoever appends. Before ``BEGIN IMMEDIATE`` a writer also
takes an exclusive ``flock`` on ``<log>-lock`` (one descriptor per thread), held to the end
of the transaction. SQLite alone makes a waiting writer poll (its busy handler sleeps 1, 2,
5, 10, 15, 20, 25 … ms between tries), so under a steady load the writer that just committed
takes the lock again before a sleeping one wakes: waits of tens of milliseconds, and an
occasional writer (the stream's offset commit) can wait through many of their turns. The
kernel instead wakes a waiter as soon as the lock is released, so turns alternate (two
processes, each a group-commit writer fed by four closed-loop submitters, five runs each on
the shared, busy 2-core machine: p99 of a durable append 29–68 ms, median 50, against 67–237
ms, median 89, without it; worst 52–191 ms against 188–841 ms; the same appends per second).
The flock is only about waiting well: SQLite's own lock still guards the data, a writer that
does not take the flock (another SQLite client) stays correct, and a killed holder's flock
is released by the kernel with its descriptors.

Retention (``retention_ms``): :meth:`SqliteLog.commit` deletes, in its own transaction, the
records appended more than ``retention_ms`` ago that every consumer group has committed past
— at most every ``min(retention_ms / 10, 60 s)`` per handle, since the delete scans the table.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from headwater.errors import InvalidInputError, NotFoundError, TransientError
from headwater.log.base import Append, DeadLetter, EventLog, ReadResult, read_schema
from headwater.log.schema import conform

log = logging.getLogger("headwater.log")

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

# URL query parameters: name -> type.
_OPTIONS = {"background_checkpoint_s": float, "retention_ms": int}
_RETENTION_CHECK_MAX_MS = 60_000


def _errors(method):
    """Raise ``sqlite3`` errors as :mod:`headwater.errors`: a failing store (locked, busy,
    disk I/O, disk full, cannot open) is transient — a full disk says so, naming ENOSPC; a
    file that is not a log database is the setting's fault."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.OperationalError, OSError) as e:
            if _disk_full(e):
                raise TransientError(
                    f"event log {self.path}: disk full (ENOSPC), nothing was stored; free space and retry ({e})",
                    field="log.url", retry_after_s=5.0,
                ) from e
            raise TransientError(f"event log {self.path}: {e}", field="log.url", retry_after_s=1.0) from e
        except sqlite3.DatabaseError as e:
            raise InvalidInputError(f"log.url: {self.path} is not a usable SQLite event log ({e})", field="log.url") from e

    return wrapper


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` is the filesystem being full: SQLite's ``SQLITE_FULL`` ("database or
    disk is full", what a WAL write meeting ENOSPC reports), or an OS error ``ENOSPC``."""
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    code = getattr(e, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "disk is full" in str(e)


class SqliteLog(EventLog):
    """:class:`EventLog` on a SQLite file; one connection per thread, any number of processes.

    ``retention_ms``: see the module doc (``None``: keep every record).
    ``background_checkpoint_s``: for the writing process (the collector). SQLite copies the
    WAL back into the database (a checkpoint) inside whichever ``COMMIT`` crosses the
    auto-checkpoint size, stalling that append by tens of ms. With this set, the process's
    connections never auto-checkpoint and a daemon thread runs a ``PASSIVE`` checkpoint
    (never blocks writers or readers) every that many seconds instead. The thread never
    dies of an error: it logs it, keeps it in :attr:`problems` until a round succeeds, and
    tries again (:meth:`healthy` is what the collector's ``/health`` reads)."""

    atomic_multi_topic_append = True

    @classmethod
    def from_url(cls, url: str, **options) -> SqliteLog:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "sqlite" or parts.netloc or parts.path.strip("/") == "" or parts.fragment:
            raise InvalidInputError(f"log.url: expected sqlite:///<absolute path of the log file>, got {url!r}", field="log.url")
        given = {}
        for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if name not in _OPTIONS:
                raise InvalidInputError(f"log.url: unknown sqlite option {name!r} (known: {', '.join(_OPTIONS)})", field="log.url")
            try:
                given[name] = _OPTIONS[name](value)
            except ValueError:
                raise InvalidInputError(f"log.url: option {name} must be a {_OPTIONS[name].__name__}, got {value!r}", field="log.url") from None
        # "sqlite:///abs" and SQLAlchemy's "sqlite:////abs" both name /abs.
        return cls(Path("/" + parts.path.lstrip("/")), **{**given, **options})

    def __init__(self, path: Path, *, retention_ms: int | None = None, background_checkpoint_s: float | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_ms = retention_ms
        self._retention_every_ms = min(retention_ms // 10, _RETENTION_CHECK_MAX_MS) if retention_ms is not None else None
        self._retention_checked_ms = 0
        self._local = threading.local()
        self._checkpoint_error: str | None = None
        self._checkpoint_thread: threading.Thread | None = None
        self._auto_checkpoint = background_checkpoint_s is None
        self._create()
        if background_checkpoint_s is not None:
            self._checkpoint_thread = threading.Thread(
                target=self._checkpoint_loop, args=(background_checkpoint_s,), name="log-checkpoint", daemon=True
            )
            self._checkpoint_thread.start()

    @_errors
    def _create(self) -> None:
        self._conn().executescript(_SCHEMA)

    @property
    def problems(self) -> list[str]:
        """What is wrong with this handle's background work now, one sentence each (empty
        when all is well): the checkpoint thread's last error until a round succeeds, or its
        death (which the loop below never allows, but a health check must not assume)."""
        found = []
        if self._checkpoint_thread is not None and not self._checkpoint_thread.is_alive():
            found.append(f"event log {self.path}: the background checkpoint thread has stopped")
        if self._checkpoint_error is not None:
            found.append(self._checkpoint_error)
        return found

    def healthy(self) -> bool:
        """Whether :attr:`problems` is empty."""
        return not self.problems

    def _checkpoint_loop(self, interval_s: float) -> None:
        conn = None
        while True:
            time.sleep(interval_s)
            # Any error (disk full, I/O, a vanished file) is logged and kept in `problems`;
            # the next round tries again on a fresh connection. Appends are unaffected: the
            # WAL merely grows until a checkpoint succeeds.
            try:
                conn = conn or sqlite3.connect(self.path, timeout=30, isolation_level=None)
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception as e:
                full = " disk full (ENOSPC):" if _disk_full(e) else ""
                self._checkpoint_error = f"event log {self.path}: background checkpoint failed:{full} {type(e).__name__}: {e}"
                log.warning("%s", self._checkpoint_error)
                with contextlib.suppress(Exception):
                    conn.close()
                conn = None
            else:
                self._checkpoint_error = None

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

    def _writers_lock(self) -> int:
        """This thread's descriptor of ``<log>-lock``, which write transactions ``flock`` (module doc)."""
        fd = getattr(self._local, "lock_fd", None)
        if fd is None:
            fd = self._local.lock_fd = os.open(f"{self.path}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return fd

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: the write lock at once, after this thread's
        turn on the writers' ``flock``: module doc), committed on exit, rolled back if the block
        or the ``COMMIT`` raises; the original error is raised either way.

        A connection left inside a transaction would hold the database's single write lock
        for good, wedging every writer: if the ``ROLLBACK`` itself fails (SQLite may already
        have rolled back after a full disk, or the file is gone), the connection is closed
        (which rolls back) and the thread opens a fresh one next time."""
        lock = self._writers_lock()
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except Exception as e:
                    log.warning("event log %s: rollback failed, reopening the connection: %s", self.path, e)
                    self._close_connection()
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    @_errors
    def ensure_topic(self, topic: str, partitions: int) -> int:
        with self._transaction() as conn:
            if conn.execute("INSERT OR IGNORE INTO topics VALUES (?, ?)", (topic, partitions)).rowcount:
                conn.executemany("INSERT INTO partition_ends VALUES (?, ?, 0)", [(topic, p) for p in range(partitions)])
        return self.partitions(topic)

    @_errors
    def partitions(self, topic: str) -> int:
        row = self._conn().execute("SELECT partitions FROM topics WHERE topic = ?", (topic,)).fetchone()
        if row is None:
            raise NotFoundError(f"topic {topic!r} does not exist", field="topic")
        return row[0]

    def _append(self, appends: Sequence[Append]) -> None:
        # One record per partition (a run of tables per schema change): a group commit of many
        # requests otherwise stores and later reads one small IPC stream per request and partition.
        runs: dict[tuple[str, int], list[list[pa.Table]]] = {}
        for a in appends:
            if a.events.num_rows:
                partition = runs.setdefault((a.topic, a.partition), [])
                if partition and partition[-1][0].schema.equals(a.events.schema):
                    partition[-1].append(a.events)
                else:
                    partition.append([a.events])
        # Encoded before the transaction: the write lock is held only for the inserts.
        self._insert([(topic, p, sum(t.num_rows for t in run), _encode(run[0] if len(run) == 1 else pa.concat_tables(run)))
                      for (topic, p), partition in runs.items() for run in partition])

    @_errors
    def _insert(self, records: Sequence[tuple[str, int, int, bytes]]) -> None:
        """Store ``(topic, partition, count, payload)`` records in one transaction."""
        if not records:
            return
        now = int(time.time() * 1000)
        with self._transaction() as conn:
            ends: dict[tuple[str, int], int] = {}
            rows = []
            for topic, partition, count, payload in records:
                key = (topic, partition)
                if key not in ends:
                    ends[key] = self._end_offset(conn, topic, partition)
                rows.append((topic, partition, ends[key], count, now, payload))
                ends[key] += count
            conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)", rows)
            conn.executemany(
                "UPDATE partition_ends SET end_offset = ? WHERE topic = ? AND partition = ?",
                [(end, topic, p) for (topic, p), end in ends.items()],
            )

    @staticmethod
    def _end_offset(conn: sqlite3.Connection, topic: str, partition: int) -> int:
        row = conn.execute(
            "SELECT end_offset FROM partition_ends WHERE topic = ? AND partition = ?", (topic, partition)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"topic {topic!r} has no partition {partition}", field="partition")
        return row[0]

    @_errors
    def read(self, topic: str, partition: int, start: int, end: int, schema: pa.Schema) -> ReadResult:
        conn = self._conn()
        self._end_offset(conn, topic, partition)  # NotFoundError for an unknown topic or partition
        # The record holding `start` may begin before it: find its base offset first.
        first = conn.execute(
            "SELECT base_offset FROM records WHERE topic = ? AND partition = ? AND base_offset <= ? "
            "ORDER BY base_offset DESC LIMIT 1",
            (topic, partition, start),
        ).fetchone()
        rows = conn.execute(
            "SELECT base_offset, count, payload, appended_ms FROM records "
            "WHERE topic = ? AND partition = ? AND base_offset >= ? AND base_offset < ? ORDER BY base_offset",
            (topic, partition, first[0] if first else start, end),
        ).fetchall()
        return _decode(topic, partition, [r for r in rows if r[0] + r[1] > start], start, end, schema)

    @_errors
    def appended_ms(self, topic: str, partition: int, offset: int) -> int | None:
        # The record's column: no payload is decoded (a reader that only wants the wait of the
        # oldest uncommitted event, e.g. `headwater up`'s heartbeat, converts nothing to Arrow).
        conn = self._conn()
        self._end_offset(conn, topic, partition)  # NotFoundError for an unknown topic or partition
        row = conn.execute(
            "SELECT appended_ms FROM records WHERE topic = ? AND partition = ? AND base_offset <= ? AND base_offset + count > ? "
            "ORDER BY base_offset DESC LIMIT 1",
            (topic, partition, offset, offset),
        ).fetchone()
        return row[0] if row else None

    @_errors
    def end_within_bytes(self, topic: str, partition: int, start: int, end: int, max_bytes: int) -> int:
        if end <= start:
            return start
        # From the unit holding `start` (as read() does); length() of a BLOB reads no payload.
        rows = self._conn().execute(
            "SELECT base_offset + count, length(payload) FROM records WHERE topic = ?1 AND partition = ?2 "
            "AND base_offset >= coalesce((SELECT max(base_offset) FROM records WHERE topic = ?1 AND partition = ?2 "
            "AND base_offset <= ?3), ?3) AND base_offset < ?4 ORDER BY base_offset",
            (topic, partition, start, end),
        )
        total, last = 0, start
        for unit_end, size in rows:
            if unit_end <= start:
                continue
            total += size
            if total > max_bytes and last > start:
                break
            last = unit_end
        return min(last, end) if last > start else end

    @_errors
    def end_offsets(self, topic: str) -> dict[int, int]:
        self.partitions(topic)  # NotFoundError for an unknown topic
        return dict(self._conn().execute("SELECT partition, end_offset FROM partition_ends WHERE topic = ?", (topic,)))

    @_errors
    def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        now = int(time.time() * 1000)
        with self._transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO consumer_offsets VALUES (?, ?, ?, ?, ?)",
                [(group, topic, p, o, now) for p, o in offsets.items()],
            )
        if self.retention_ms is not None and now - self._retention_checked_ms >= self._retention_every_ms:
            self._retention_checked_ms = now
            try:
                deleted = self._delete_expired(now - self.retention_ms)
            except sqlite3.OperationalError as e:  # opportunistic: the offsets are committed, the next check retries
                log.warning("event log %s: retention failed: %s", self.path, e)
            else:
                if deleted:
                    log.info("event log %s: retention deleted %d events", self.path, deleted)

    def _delete_expired(self, cutoff_ms: int) -> int:
        """Delete records appended before ``cutoff_ms`` that every group has committed past;
        return how many events they held. Unlike Kafka, a record no group has consumed is
        kept however old: nothing accepted is lost to retention."""
        with self._transaction() as conn:
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
                (cutoff_ms,),
            ).fetchall()
        return sum(c for (c,) in deleted)

    @_errors
    def committed(self, group: str, topic: str) -> dict[int, int]:
        got = dict(
            self._conn().execute(
                "SELECT partition, next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ?",
                (group, topic),
            )
        )
        return {p: got.get(p, 0) for p in range(self.partitions(topic))}

    def close(self) -> None:
        self._close_connection()
        fd = getattr(self._local, "lock_fd", None)
        if fd is not None:
            self._local.lock_fd = None
            os.close(fd)

    def _close_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()


def _encode(table: pa.Table | pa.RecordBatch) -> bytes:
    """``table`` as Arrow IPC stream bytes (one record's payload)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write(table)
    return sink.getvalue().to_pybytes()


def _decode(
    topic: str, partition: int, records: list[tuple[int, int, bytes, int]], start: int, end: int, schema: pa.Schema
) -> ReadResult:
    """The events of ``records`` (``(base_offset, count, payload, appended_ms)`` overlapping
    ``[start, end)``, in offset order) within that range, conformed to ``schema``, and the
    records that are bad and begin in the range as dead letters."""
    dead: list[DeadLetter] = []
    good: list[tuple[tuple[int, int, bytes, int], int, pa.Table]] = []  # (record, first offset kept, rows kept)

    def bury(rec: tuple[int, int, bytes, int], error: str) -> None:
        if rec[0] >= start:  # a record straddling `start` was reported by the read before
            dead.append(DeadLetter(topic, partition, rec[0], rec[1], error, rec[2], rec[3]))

    for rec in records:
        base, count, payload, _ = rec
        try:
            t = pa.ipc.open_stream(payload).read_all()
            if t.num_rows != count:
                raise ValueError(f"payload has {t.num_rows} rows, record header says {count}")
        except (pa.ArrowException, ValueError) as e:
            bury(rec, f"{type(e).__name__}: {e}")
            continue
        lo, hi = max(start - base, 0), min(end - base, count)
        if hi > lo:
            good.append((rec, base + lo, t.slice(lo, hi - lo) if (lo, hi) != (0, count) else t))
    try:  # fast path: every record's rows conform together
        events = conform(pa.concat_tables([t for _, _, t in good], promote_options="default"), schema) if good else None
    except (pa.ArrowException, InvalidInputError):
        # One record is invalid or their schemas clash: sort it out record by record.
        kept = []
        for rec, first, t in good:
            try:
                kept.append((rec, first, conform(t, schema)))
            except InvalidInputError as e:
                bury(rec, f"invalid record: {e}")
        good = kept
        events = pa.concat_tables([t for _, _, t in good]) if good else None
    if events is None:
        return ReadResult(read_schema(schema).empty_table(), dead)
    # _partition/_offset/_appended_ms for all rows at once: row j of kept slice i has offset first_i + j.
    counts = np.asarray([t.num_rows for _, _, t in good], dtype=np.int64)
    row_start = np.cumsum(counts) - counts
    firsts = np.asarray([first for _, first, _ in good], dtype=np.int64)
    offsets = np.arange(int(counts.sum()), dtype=np.int64) + np.repeat(firsts - row_start, counts)
    appended = np.repeat(np.asarray([rec[3] for rec, _, _ in good], dtype=np.int64), counts)
    columns = [*events.columns, pa.array(np.full(len(offsets), partition, np.int32)), pa.array(offsets), pa.array(appended)]
    return ReadResult(pa.Table.from_arrays(columns, schema=read_schema(schema)), dead)


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
