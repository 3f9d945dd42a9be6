"""Bulk import: a file's canonical events straight into bronze, chunk by chunk, exactly once.

History does not belong in the live log: replayed through the stream, months of old events
are almost all "late", the watermark jumps, and every micro-batch leaves small files. The
bulk path writes ``bronze.events`` and ``bronze.bad_rows`` directly, with the same
:class:`~headwater.sources.canonical.Canonicalizer` as the live path (tokens, event-time
rules, contracts, PII policy, bad rows), then the caller restates the affected days
(``headwater import`` runs the model DAG from the first imported day on).

**Chunks.** The mapped rows (:func:`headwater.sources.files.load`) are ordered by event day,
then by position in the file (``_part``, ``_row``) — a total order that depends on the file
alone — and cut into chunks of ``chunk_rows`` rows (by default :func:`chunk_size` of the
file's row count), so chunk ``k`` holds the same rows on every run. Ordering by day keeps
a chunk's files few (one per day it covers) even for an export ordered by customer.

**Exactly once.** Chunk ``k`` is committed to ``bronze.bad_rows`` and then to
``bronze.events``, each commit carrying Delta txn ``(app_id, k)`` (protocol "Transaction
Identifiers"; ``app_id`` = ``import-`` + :func:`import_id`). A rerun reads both versions back
(:meth:`~headwater.lake.store.Lake.committed_batch`): every chunk up to the version in
``bronze.events`` is skipped without being canonicalised (its bad rows were committed before
its events), and a later chunk's bad-rows commit is skipped when that table holds it. A
SIGKILL anywhere therefore loses and doubles nothing (tests/faults/test_kill_import.py).

**Throughput.** :data:`WORKERS` threads canonicalise chunks and write their Parquet files
(pyarrow, in delta-rs' layout, through :mod:`headwater.spark_delta`) side by side — Arrow
compute and the Parquet writer run without the GIL — while the calling thread reads the
next chunk from DuckDB and commits finished chunks, strictly in chunk order, each with one
``create_write_transaction`` of its files' add actions
(:meth:`~headwater.lake.store.Lake.commit_files`). Files written for a chunk whose commit
never happened (a kill, an error) are referenced by no Delta version and go with a vacuum.

**Dedup**, on ``(source, event_id)`` as on the live path: a good row whose event id bronze
already holds for this source (on the days the file covers) or that an earlier row of the
file carries (with an event id column; derived ids are unique within a file) is dropped and
counted in ``duplicates``. Chunk membership is fixed before dedup, so it does not depend on
what bronze holds: a resumed run cuts the same chunks, and the rows of committed chunks that
later chunks repeat are duplicates within the file either way.

**What the live path does and this one does not**: no ``bronze.late_events`` (history is not
late data for a backfill), no ``realtime.*`` windows (live figures), no stream dedup state
(``silver.events`` deduplicates over the whole of bronze anyway).

**Record.** ``<home>/sources/imports/<id>.json`` notes a finished import (chunks, days, and
whether its restatement ran): a rerun of a finished and restated import commits and
restates nothing. One process at a time runs an import id (a file lock beside the record).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import duckdb
import filelock
import pyarrow as pa
import pyarrow.compute as pc
from deltalake.transaction import AddAction

from headwater import spark_delta
from headwater.config import Home
from headwater.errors import ConflictError
from headwater.files import write_atomic
from headwater.events import BAD_ROW_SCHEMA, EVENT_SCHEMA, TS
from headwater.ingest.badrows import bad_rows_append
from headwater.ingest.canonical import MAX_EVENT_US, MIN_EVENT_US
from headwater.lake.store import Lake
from headwater.sources.canonical import Canonicalizer, Counts, with_tokens
from headwater.sources.mapping import Mapping

EVENTS, BAD_ROWS = "bronze.events", "bronze.bad_rows"
CHUNK_ROWS = 500_000  # rows per chunk at most by default (one Delta commit per table); ~0.3 GB of Arrow data
MIN_CHUNK_ROWS = 20_000  # a smaller file is one chunk
WORKERS = 2  # chunks canonicalised and written at once (each holds its chunk in memory)
HEAD_BYTES = 1 << 20  # bytes at each end of the file hashed into its import id

#: Test hook: called with the number of Delta commits this process made so far, right after
#: each one (the kill suite SIGKILLs the process from it, between the commits of a chunk).
on_commit: Callable[[int], None] | None = None


@dataclass
class Imported(Counts):
    """What an import did: the :class:`Counts`, the ``path`` taken (``bulk`` / ``live``) and,
    for the bulk path, its ``import_id``, ``chunks`` (in the file), ``resumed`` (chunks a
    previous run had committed, skipped), ``first_day`` / ``last_day`` (``ds`` range of the
    file's events) and ``restate`` (whether the affected days still need their restatement)."""

    path: str = "live"
    import_id: str | None = None
    chunks: int = 0
    resumed: int = 0
    first_day: dt.date | None = None
    last_day: dt.date | None = None
    restate: bool = False

    def as_dict(self) -> dict:
        out = {**super().as_dict(), "path": self.path}
        if self.path == "bulk":
            days = [d.isoformat() if d else None for d in (self.first_day, self.last_day)]
            out.update(import_id=self.import_id, chunks=self.chunks, resumed=self.resumed, first_day=days[0], last_day=days[1])
        return out


def chunk_size(rows: int) -> int:
    """The default rows per chunk of a file of ``rows`` rows: chunks of at most
    :data:`CHUNK_ROWS` rows, as many as a multiple of :data:`WORKERS` and of equal size, so
    every worker has a chunk to the end (a 200k-row file: two of 100k, not one) — and none
    under :data:`MIN_CHUNK_ROWS`. A function of the file alone, like the chunks themselves."""
    chunks = WORKERS * -(-rows // (WORKERS * CHUNK_ROWS))
    return max(-(-rows // max(chunks, 1)), MIN_CHUNK_ROWS)


def import_id(path: Path, fmt: str, source: str, mapping: Mapping, chunk_rows: int) -> str:
    """The id of importing ``path`` this way: a hash of the file's identity (size,
    modification time, its first and last :data:`HEAD_BYTES`) and of everything that decides the
    rows and their chunks (format, source, mapping, chunk size). The same file imported
    again the same way resumes; a changed file or mapping is another import (whose rows
    bronze already holds are then dropped as duplicates)."""
    st = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(HEAD_BYTES))
        f.seek(max(HEAD_BYTES, st.st_size - HEAD_BYTES))
        digest.update(f.read(HEAD_BYTES))
    how = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "format": fmt, "source": source, "mapping": asdict(mapping), "chunk_rows": chunk_rows}
    digest.update(json.dumps(how, sort_keys=True).encode())
    return digest.hexdigest()[:24]


def record_path(home: Home, import_id: str) -> Path:
    return home.root / "sources" / "imports" / f"{import_id}.json"


def record(home: Home, import_id: str) -> dict | None:
    """The record of finished import ``import_id`` (module doc), None if it never finished."""
    path = record_path(home, import_id)
    return json.loads(path.read_text()) if path.exists() else None


def mark_restated(home: Home, import_id: str) -> None:
    """Note that the affected days of finished import ``import_id`` were restated."""
    rec = record(home, import_id)
    if rec is not None:
        write_atomic(record_path(home, import_id), json.dumps({**rec, "restated": True}).encode())


def write(home: Home, con: duckdb.DuckDBPyConnection, rows: str, canon: Canonicalizer, ids: pa.Array, *, import_id: str,
          chunk_rows: int = CHUNK_ROWS, explicit_ids: bool = False) -> Imported:
    """Write the rows of DuckDB query ``rows`` (:func:`headwater.sources.files.indexed` over
    table ``hw_import``: ``_part``, the mapped columns, the positions of their ids in ``ids``) to bronze,
    chunk by chunk (module doc); ``ids`` are tokenised while DuckDB orders the rows. ``explicit_ids``:
    the event ids come from a column (deduplicated within the file too). Raises
    :class:`ConflictError` while another process runs the same import, and whatever the
    lake raises (the chunks before are committed: rerun to resume)."""
    lake = Lake.of(home)
    lock = filelock.FileLock(str(record_path(home, import_id)) + ".lock")
    record_path(home, import_id).parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise ConflictError(f"import {import_id} of this file is running in another process", field="path") from None
    try:
        return _Writer(lake, canon, f"import-{import_id}").run(home, con, rows, ids, import_id, chunk_rows, explicit_ids)
    finally:
        lock.release()


class _Writer:
    def __init__(self, lake: Lake, canon: Canonicalizer, app_id: str):
        self.lake, self.canon, self.app_id = lake, canon, app_id
        self.done = {t: _committed(lake, t, app_id) for t in (EVENTS, BAD_ROWS)}
        self.commits = 0
        self.local = threading.local()

    def run(self, home: Home, con: duckdb.DuckDBPyConnection, rows: str, ids: pa.Array, import_id: str, chunk_rows: int,
            explicit_ids: bool) -> Imported:
        out = Imported(path="bulk", import_id=import_id)
        days: list[dt.date] = []
        # DuckDB orders the rows (on its own threads, without the GIL) while this thread tokenises.
        with ThreadPoolExecutor(1, thread_name_prefix="bulk-order") as pool:
            ordering = pool.submit(self._ordered, con, rows, chunk_rows, explicit_ids)
            tokens = self.canon.tokenizer.column(ids, cache=False)  # each id once: no cache to fill
            reader = ordering.result()
        # WORKERS chunks are canonicalised and written as Parquet at once (Arrow compute and
        # the Parquet writer release the GIL); this thread reads the chunks and commits them, in order.
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="bulk-chunk") as pool:
            pending: deque[tuple[int, Future]] = deque()
            for k, chunk in enumerate(_chunks(reader, chunk_rows)):
                out.chunks += 1
                if k <= self.done[EVENTS]:  # committed whole by an earlier run (module doc)
                    out.resumed += 1
                    days += _days(_good_times(chunk))
                    continue
                if len(pending) == WORKERS:
                    days += self._commit(*pending.popleft(), out)
                pending.append((k, pool.submit(self._write, k, chunk, tokens)))
            while pending:
                days += self._commit(*pending.popleft(), out)
        out.first_day, out.last_day = (min(days), max(days)) if days else (None, None)
        self._finish(home, out)
        return out

    def _ordered(self, con: duckdb.DuckDBPyConnection, rows: str, chunk_rows: int, explicit_ids: bool) -> pa.RecordBatchReader:
        """``rows`` in chunk order, with their ``_dup`` flag (module doc)."""
        first, last = con.execute(f"SELECT min(CAST(event_ts AS DATE)), max(CAST(event_ts AS DATE)) FROM hw_import WHERE _error IS NULL "
                                  f"AND epoch_us(event_ts) >= {MIN_EVENT_US} AND epoch_us(event_ts) < {MAX_EVENT_US}").fetchall()[0]
        con.register("hw_bronze", self._bronze_ids(first, last))
        # Dedup flags are columns, not filters: chunk k must hold the same rows whatever bronze holds.
        repeated = "OR row_number() OVER (PARTITION BY event_id, _error IS NULL ORDER BY _part, _row) > 1" if explicit_ids else ""
        ordered = (f"SELECT *, _error IS NULL AND (event_id IN (SELECT event_id FROM hw_bronze) {repeated}) AS _dup "
                   f"FROM ({rows}) ORDER BY CAST(event_ts AS DATE) NULLS FIRST, _part, _row")
        return con.sql(ordered).to_arrow_reader(min(chunk_rows, 100_000))

    def _finish(self, home: Home, out: Imported) -> None:
        """Decide ``out.restate`` and write the import's record (module doc)."""
        rec = record(home, out.import_id)
        fresh = out.resumed < out.chunks  # this run canonicalised chunks (it may have committed some)
        out.restate = out.first_day is not None and (fresh or rec is None or not rec.get("restated"))
        if rec is None or fresh:
            write_atomic(record_path(home, out.import_id), json.dumps({
                "import_id": out.import_id, "source": self.canon.source, "chunks": out.chunks, "restated": False,
                "first_day": out.first_day and out.first_day.isoformat(), "last_day": out.last_day and out.last_day.isoformat(),
                "finished_ms": time.time_ns() // 1_000_000,
            }).encode())

    def _bronze_ids(self, first: dt.date | None, last: dt.date | None) -> pa.Table:
        """Event ids bronze holds for this source on the file's days (± a day: a time zone's
        worth of slack for ids sent with another clock)."""
        empty = pa.table({"event_id": pa.array([], pa.string())})
        if first is None or not self.lake.exists(EVENTS):
            return empty
        ds, source = pc.field("ds"), pc.field("source")
        where = (ds >= first - dt.timedelta(days=1)) & (ds <= last + dt.timedelta(days=1)) & (source == self.canon.source)
        return self.lake.dataset(EVENTS).to_table(columns=["event_id"], filter=where)

    def _write(self, k: int, chunk: pa.Table, tokens: pa.Array) -> _Written:
        """Chunk ``k`` (rows of :meth:`_ordered`) canonicalised, duplicates dropped first, and
        its events and bad rows (when not committed yet) written as files — nothing committed."""
        chunk = chunk.combine_chunks()
        dup = chunk.column("_dup")
        duplicates = pc.sum(dup).as_py() or 0
        mapped = with_tokens(chunk.filter(pc.invert(dup)) if duplicates else chunk, tokens)
        canon = getattr(self.local, "canon", None)
        if canon is None:  # one per worker thread (a contract validator is not thread-safe)
            canon = self.local.canon = self.canon.fork()
        prepared = canon.prepare(mapped.drop_columns(["_dup", "_part"]))
        prepared.counts.rows += duplicates
        prepared.counts.duplicates += duplicates
        files = {}
        if prepared.bad_rows and self.done[BAD_ROWS] < k:
            files[BAD_ROWS] = self._files(BAD_ROWS, bad_rows_append(prepared.bad_rows, self.canon.policy, self.canon.tokenizer).events)
        if prepared.events.num_rows:
            files[EVENTS] = self._files(EVENTS, prepared.events)
        return _Written(prepared.counts, _days(prepared.events.column("ds")), files)

    def _files(self, table: str, data: pa.Table) -> list[AddAction]:
        """``data`` written as new Parquet files of ``table`` (one per day), uncommitted. With
        pyarrow, not delta-rs' writer (half the CPU for the same Parquet), in delta-rs' layout
        and with its statistics (:mod:`headwater.spark_delta`); files whose commit never
        happens (a kill) stay unreferenced, as those of a failed delta-rs write would."""
        schema = EVENT_SCHEMA if table == EVENTS else BAD_ROW_SCHEMA
        target = spark_delta.Target.of(self.lake, table, schema, parquet=BULK_PARQUET[table])
        rows = [r for batch in spark_delta.write_files(iter([data]), [target]) for r in batch.to_pylist()]
        return spark_delta.add_actions(rows, 1)[0]

    def _commit(self, k: int, written: Future, out: Imported) -> list[dt.date]:
        """Commit chunk ``k``'s files: bad rows, then events (module doc), each with txn
        ``(app_id, k)``; count it into ``out``. Returns its first and last event day."""
        w: _Written = written.result()
        out.add(w.counts)
        for table in (BAD_ROWS, EVENTS):
            if table in w.files:
                self.lake.commit_files(table, w.files[table], EVENT_SCHEMA if table == EVENTS else BAD_ROW_SCHEMA,
                                       app_id=self.app_id, batch_id=k)
                self.commits += 1
                if on_commit is not None:
                    on_commit(self.commits)
        return w.days


# Parquet of a bulk chunk: ZSTD level -3 (a "fast" level: the level only tunes the encoder,
# every ZSTD reader decodes it); no dictionary for the near-unique columns of events,
# where a dictionary only costs time before Parquet falls back to plain encoding; no row-group
# statistics for the near-unique text columns, whose min / max prune nothing (~10 % of the
# write). A 500k-row chunk with pyarrow: 0.25 CPU-s, 58 MB (ZSTD-1: 0.32 CPU-s, 36 MB; Snappy,
# what delta-rs writes for the rest of bronze: 0.31 CPU-s, 61 MB; delta-rs' writer, ZSTD-1: 0.47 CPU-s).
_NEAR_UNIQUE = ("event_id", "user_id", "anonymous_id", "properties", "event_ts")
BULK_PARQUET = {
    EVENTS: {"compression": "zstd", "compression_level": -3, "use_dictionary": [c for c in EVENT_SCHEMA.names if c not in _NEAR_UNIQUE],
             "write_statistics": [c for c in EVENT_SCHEMA.names if c not in _NEAR_UNIQUE or c == "event_ts"]},
    BAD_ROWS: {"compression": "zstd", "compression_level": 1},
}


@dataclass
class _Written:
    """A chunk canonicalised and written, not committed: its ``counts``, ``days`` (first and
    last event day, [] if none) and the add actions of its ``files`` per table."""

    counts: Counts
    days: list[dt.date]
    files: dict[str, list[AddAction]]


def _committed(lake: Lake, table: str, app_id: str) -> int:
    v = lake.committed_batch(table, app_id)
    return -1 if v is None else v


def _chunks(reader: pa.RecordBatchReader, size: int) -> Iterator[pa.Table]:
    """The rows of ``reader`` as tables of exactly ``size`` rows (the last one may be short):
    DuckDB's record batches do not come in a fixed size. Each is its batches as they came
    (zero-copy slices): the worker that takes it makes its columns contiguous, off the
    reading thread (0.16 s per 1M rows)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for batch in reader:
        held.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(held)
            yield table.slice(0, size)
            rest = table.slice(size)
            held, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(held)


def _good_times(chunk: pa.Table) -> pa.ChunkedArray:
    """Event times of the chunk's rows that may have become events (no error, within the
    event-time range): what a committed chunk holds, as far as the mapped rows tell. Its
    ``_dup`` flags say nothing here: bronze holds the chunk's own rows now."""
    ts = chunk.column("event_ts")
    keep = pc.and_(pc.is_null(chunk.column("_error")),
                   pc.and_(pc.greater_equal(ts, pa.scalar(MIN_EVENT_US, TS)), pc.less(ts, pa.scalar(MAX_EVENT_US, TS))))
    return ts.filter(keep)


def _days(column: pa.ChunkedArray) -> list[dt.date]:
    """The first and last UTC day of a timestamp or date column ([] if it has no value)."""
    lo, hi = pc.min_max(column.cast(pa.date32()) if not pa.types.is_date32(column.type) else column).values()
    return [] if lo.as_py() is None else [lo.as_py(), hi.as_py()]
