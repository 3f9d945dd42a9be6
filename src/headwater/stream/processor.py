"""The streaming query: event log → bronze + real-time aggregates, exactly once, in micro-batches.

headwater's own micro-batch engine, following Spark Structured Streaming's design
(write-ahead offset log, commit log, versioned state store, idempotent sinks), vectorised
with Arrow / Polars / DuckDB: no per-event Python on the hot path.

Per micro-batch N (recovery protocol in :mod:`headwater.stream.checkpoint`):

1. **plan**: per partition of the ``events`` and ``bad_rows`` topics, up to
   ``max_records_per_partition`` events past the previous batch's end, at most
   ``max_records_per_batch`` in all and at most ``max_batch_bytes`` of stored log records
   (backpressure: memory is bounded by the batch);
   ``offsets/N`` records the ranges and the batch timestamp (processing time);
2. **read**: the planned events of each topic, conformed to its schema; what the log
   cannot read as events goes to ``bronze.dead_letter`` (:mod:`headwater.stream.records`);
3. **dedup** on ``(source, <pipeline's key>)`` within the batch and against the TTL state
   (:mod:`dedup`): one source's message id never drops another source's event;
4. **lateness**: with the watermark as of the end of batch N−1, events too late for an
   aggregate are left out of it and written to ``bronze.late_events`` (:mod:`late`);
5. **watermark**: fold the batch's per-partition max event time in (:mod:`watermark`);
6. **aggregate**: every :class:`~headwater.stream.pipeline.Aggregate` updates its open
   windows and closes those behind the new watermark (:mod:`aggregate`);
7. **sinks**: ``bronze.events`` (all deduped events, late ones too), ``bronze.bad_rows``,
   ``bronze.dead_letter``, ``bronze.late_events`` and ``realtime.<aggregate>`` (append, or
   a MERGE upsert in update mode), each commit carrying Delta txn ``(app_id, N)``; on a
   replay a table already holding txn N is skipped;
8. **state**: store the batch's dedup ids and the window-operator snapshot (version N), then
   write ``commits/N`` with the batch's metrics, then commit the consumer-group offsets
   (informational, for lag and the log's retention; the checkpoint is the source of truth).

Concurrency inside a batch (all of it joins before ``commits/N``): the sinks of step 7 commit
on a small thread pool while the operators of step 6 run side by side, and the state of step 8
is written meanwhile (it only counts once ``commits/N`` exists); with ``available_now`` batch
N+1 is planned (step 1, whose byte bound scans the log's index) and read on a reader thread
while batch N computes, and runs as planned: its plan is recorded in ``offsets/N+1`` before it
runs, like any other. Each table's commit carries its own txn, so the order of the commits
within a batch never matters for exactly-once.

A kill -9 anywhere leaves at most batch N half done; its replay reads the same offsets at the
same batch timestamp on top of the state of N−1, so it computes the same rows, and each
table receives them once. Readers of the Delta tables never block the writer: each query
reads the snapshot it opened.

Switching engines (:mod:`headwater.stream.handover`): at start, if the consumer group's
committed offsets are past this checkpoint and the group's last committer was the Spark
engine (it ran since this query stopped), the query starts where the group stands, with its
open windows dropped; the batch that starts there records the take-over in its ``offsets/N``
metadata (``"handover"``), so a replay of it does the same. A batch interrupted before Spark
took over (an unclean stop) is committed as superseded instead of re-run: Spark wrote its
offsets. The query records itself as the group's committer before its first group commit.

Faults (docs/faults.md): one process at a time runs the query (the checkpoint's writer lock,
released by the kernel even on SIGKILL). A batch that raises is counted in the checkpoint;
``quarantine_after`` failures in a row with the same error quarantine it, and the query then
refuses to start before it (:class:`~headwater.stream.checkpoint.BatchQuarantinedError`)
until an operator runs ``headwater quarantine retry N`` (the cause is fixed) or ``headwater
quarantine skip N`` (:func:`skip_quarantined`). Batches are bounded in bytes of stored log
records as well as in events.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed, wait
from dataclasses import dataclass, field
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.events import BAD_ROW_SCHEMA, BAD_ROWS_TOPIC, EVENT_SCHEMA, EVENTS_TOPIC, STREAM_GROUP
from headwater.lake.maintenance import FileCounter, Policy
from headwater.lake.store import CommitConflictError, Lake
from headwater.log import EventLog, open_log
from headwater.stream import handover, late
from headwater.stream.aggregate import WindowOperator
from headwater.stream.checkpoint import RETAIN, Checkpoint
from headwater.stream.dedup import DedupState
from headwater.stream.pipeline import DEFAULT_PIPELINE, Pipeline
from headwater.stream.records import DEAD_LETTER_SCHEMA, dead_letter_table, read_topic
from headwater.stream.state import StateStore
from headwater.stream.watermark import WatermarkTracker

__all__ = ["BronzeStream", "StreamConfig", "BatchResult", "DEAD_LETTER_SCHEMA", "QUERY", "EVENTS", "BAD_ROWS", "skip_quarantined"]

log = logging.getLogger("headwater.stream")

EVENTS, BAD_ROWS = EVENTS_TOPIC, BAD_ROWS_TOPIC
QUERY = STREAM_GROUP  # checkpoint name, consumer group and Delta txn app id

DEDUP_KEY = "_dedup_key"  # (source, pipeline key) as one string: see _scoped
SINK_THREADS = 2  # Delta commits of one batch in flight at once (they are mostly I/O and Rust)
WINDOW_THREADS = 2  # window operators updated at once (more only adds memory on a 2-core box)
# A sink commit that lost the race to a concurrent rewrite of the files its MERGE read
# (`headwater maintain` compacting or expiring a realtime table) is re-run on the new
# snapshot: nothing was committed, and the txn keeps the retry exactly once.
CONFLICT_RETRIES = 3


def _scoped(key: str) -> pl.Expr:
    """``(source, key)`` as one string, ``"<bytes of source>:<source>:<key>"``: the length
    prefix makes it unambiguous whatever either part contains. Null key: null (as before)."""
    source = pl.col("source").fill_null("")
    return pl.concat_str([source.str.len_bytes().cast(pl.String), pl.lit(":"), source, pl.lit(":"), pl.col(key).cast(pl.String)])


@dataclass
class StreamConfig:
    """Trigger, backpressure and state settings of the query.

    ``trigger_interval_s``: processing-time trigger (Spark's ``Trigger.ProcessingTime``): a
    batch starts at most every this many seconds, at once if the previous one took longer;
    the log is polled at this interval when it has nothing new. ``run(available_now=True)``
    runs batches back to back;
    ``max_records_per_partition`` / ``max_records_per_batch`` (``None``: no total cap): the
    bound of one micro-batch (backpressure); a total cap is shared among partitions in
    proportion to their backlog (Spark's ``maxOffsetsPerTrigger``);
    ``max_batch_bytes`` (``None``: no bound): the stored log records one batch reads, shared
    equally among the partitions with a backlog; a partition always gets at least one stored
    unit (an append), so a batch exceeds it only by units larger than a share;
    ``quarantine_after``: failures in a row with the same error that quarantine a batch;
    ``compact_every``: every this many batches, each partition of a table the query
    appended to since the last check that holds ``lake.compact_min_files`` small files is
    compacted (:class:`~headwater.lake.maintenance.FileCounter`; 0: never);
    ``retain_batches``: offset/commit log entries kept (Spark's ``minBatchesToRetain``)."""

    trigger_interval_s: float = 0.5
    max_records_per_partition: int = 50_000
    max_records_per_batch: int | None = None
    compact_every: int = 1
    retain_batches: int = RETAIN
    max_batch_bytes: int | None = 64 * 1024 * 1024
    quarantine_after: int = 3


@dataclass
class BatchResult:
    batch_id: int
    input_events: int = 0
    written_events: int = 0
    duplicates: int = 0
    bad_rows: int = 0
    dead_letters: int = 0
    late_events: int = 0
    window_rows: int = 0
    totals: dict[str, int] = field(default_factory=dict)


COUNTERS = ("input_events", "written_events", "duplicates", "bad_rows", "dead_letters", "late_events", "window_rows")


class BronzeStream:
    """The streaming query from the event log into bronze and the real-time aggregates.

    ``pipeline`` defines dedup, watermark and aggregates (default
    :data:`~headwater.stream.pipeline.DEFAULT_PIPELINE`); ``clock`` returns processing time
    in ms since epoch (tests pass a fake one)."""

    # Test hook: called with the number of Delta sink commits this query made so far, right
    # after each one (crash tests SIGKILL the process from it, between the commits of a batch).
    on_commit: Callable[[int], None] | None = None

    def __init__(
        self,
        home: Home,
        config: StreamConfig | None = None,
        event_log: EventLog | None = None,
        pipeline: Pipeline = DEFAULT_PIPELINE,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
    ):
        self.home = home
        self.config = config or StreamConfig()
        self.pipeline = pipeline
        self.clock = clock
        # This query commits the consumer offsets, so its handle applies the log's retention.
        self.log = event_log or open_log(home.settings.log_url, retention_ms=home.settings.log.retention_ms)
        self.log.ensure_topic(EVENTS, home.settings.log.partitions)
        self.log.ensure_topic(BAD_ROWS, 1)
        self.checkpoint = Checkpoint(home.checkpoint_dir(QUERY), retain=self.config.retain_batches)
        self._writer = contextlib.ExitStack()
        self._writer.enter_context(self.checkpoint.lock())  # WriterLockedError: another process runs it
        self.dedup = DedupState(self.checkpoint.state_dir / "dedup", pipeline.dedup.ttl, DEDUP_KEY)
        self.store = StateStore(self.checkpoint.state_dir / "windows")
        self.lake = Lake.of(home, keep_open=True)  # a commit a second per table: refresh its handle, do not reopen it
        # sink name -> table: the two topics, the side outputs and one table per aggregate
        self.tables = {
            EVENTS: "bronze.events",
            BAD_ROWS: "bronze.bad_rows",
            "dead_letter": "bronze.dead_letter",
            "late_events": "bronze.late_events",
            **{a.table: a.table for a in pipeline.aggregates},
        }
        self._sql = duckdb.connect(":memory:")
        # pyarrow's first conversion from numpy imports pandas where it can (~0.9 s here; the
        # headwater program keeps it out, headwater.spark.defer_pandas): pay it at start-up,
        # not inside the first micro-batch, whose events would wait for it.
        pa.array(np.zeros(1, np.int64))
        self._commits = 0
        self._commit_lock = threading.Lock()
        self._sinks = ThreadPoolExecutor(max_workers=SINK_THREADS, thread_name_prefix="headwater-sink")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headwater-read-ahead")
        self._read_ahead = False
        self._prefetch: Any = None  # future of _plan_and_read from where the running batch ends
        self._ops = ThreadPoolExecutor(max_workers=WINDOW_THREADS, thread_name_prefix="headwater-window")
        self._op_seconds = [0.0] * len(pipeline.aggregates)  # each operator's last update: the costliest starts first
        self._state = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headwater-state")  # the dedup delta of step 8
        self._next: dict[str, dict[int, int]] = {}
        self._next_batch = 0
        self._handover: dict[str, Any] = {}  # offsets metadata of the first batch after a take-over
        self._recorded = False  # whether this process recorded itself as the group's committer
        self._totals: dict[str, int] = {}
        self.files = FileCounter(self.lake, Policy.of(home.settings.lake))  # small files per partition written
        self._recover()

    # -- recovery ---------------------------------------------------------------------
    def _recover(self) -> None:
        replay, committed = self.checkpoint.recover()
        self.dedup.load(committed)
        self._load_state(committed)
        self._totals = self.checkpoint.read_commit(committed)["totals"] if committed is not None else {}
        self._next = {t: {p: 0 for p in range(self.log.partitions(t))} for t in (EVENTS, BAD_ROWS)}
        if committed is not None:
            self._advance(committed)
        ahead = self._group_ahead()  # where this query last committed the group vs where it stands
        if replay is not None and ahead:
            self._supersede(replay)
            committed, replay = replay, None
        if replay is not None:
            self._advance(replay)
            self.checkpoint.check_quarantine(replay)
            log.info("recovering: re-running batch %d", replay)
            meta = self.checkpoint.read_metadata(replay)
            if "handover" in meta:
                self._drop_windows()
            self._attempt(replay, self.checkpoint.read_offsets(replay), meta.get("batch_timestamp_ms", self.clock()), replay=True)
        else:
            self._next_batch = 0 if committed is None else committed + 1
            if ahead:
                self._take_over(ahead)

    def _advance(self, batch_id: int) -> None:
        """Set where the query stands to batch ``batch_id``'s ends."""
        for topic, parts in self.checkpoint.read_offsets(batch_id).items():
            for p, (_, end) in parts.items():
                self._next[topic][p] = end

    def _group_ahead(self) -> dict[str, dict[int, int]]:
        """``{topic: {partition: group offset}}`` where the consumer group is past this query's
        last committed batch and the group's last committer was the Spark engine (an engine
        switch: :mod:`headwater.stream.handover`); ``{}`` otherwise. A group ahead for any other
        reason is logged, never adopted."""
        group = {t: self.log.committed(QUERY, t) for t in (EVENTS, BAD_ROWS)}
        ahead = {t: parts for t in group if (parts := handover.ahead(group[t], self._next[t]))}
        if not ahead:
            return {}
        committer = handover.last_committer(self.home)
        if committer != handover.SPARK:
            log.warning("consumer group %s committed past this checkpoint (%s) but its last committer is %s, not the Spark engine: "
                        "not adopting its offsets", QUERY, ahead, committer or "unrecorded")
            return {}
        return ahead

    def _take_over(self, ahead: dict[str, dict[int, int]]) -> None:
        """Start at the group's offsets ``ahead`` (Spark consumed that far), open windows dropped."""
        log.info("taking over from the Spark engine: starting at consumer group %s's offsets %s, past this checkpoint's %s; %s",
                 QUERY, ahead, {t: {p: self._next[t][p] for p in parts} for t, parts in ahead.items()}, handover.NOT_CARRIED)
        for topic, parts in ahead.items():
            self._next[topic].update(parts)
        self._drop_windows()
        self._handover = {"handover": {"from": handover.SPARK, "group": {t: {str(p): o for p, o in parts.items()} for t, parts in ahead.items()}}}

    def _drop_windows(self) -> None:
        """Fresh window operators (the other engine emitted the windows of its time)."""
        self.operators = [WindowOperator(a, None) for a in self.pipeline.aggregates]

    def _supersede(self, batch_id: int) -> None:
        """Commit interrupted batch ``batch_id`` as superseded instead of re-running it: Spark
        took over from the group's offsets before it, so Spark wrote its range. Its state is that
        of batch N−1 without open windows. Rows its sinks committed before the interruption may
        be in their tables twice (logged, with the tables): an engine switch needs a clean stop."""
        tables = sorted(t for t in set(self.tables.values()) if (c := self.lake.committed_batch(t, QUERY)) is not None and c >= batch_id)
        self._drop_windows()
        self.store.save(batch_id, {}, {"watermark": self.watermark.to_dict()})
        offsets = self.checkpoint.read_offsets(batch_id)
        self.checkpoint.write_commit(batch_id, {"batch_id": batch_id, "committed_ms": int(time.time() * 1000), "batch": {}, "totals": self._totals,
                                                "superseded": {"by": handover.SPARK, "offsets": offsets, "tables_with_batch": tables}})
        self.checkpoint.clear_failure(batch_id)
        log.warning("batch %d was interrupted before the Spark engine took over: committed as superseded, not re-run; "
                    "tables holding part of it (possibly twice, with Spark's rows): %s", batch_id, tables or "none")

    def close(self) -> None:
        """Release the writer lock (the process's exit releases it too)."""
        self._writer.close()

    def _load_state(self, version: int | None) -> None:
        snapshot, meta = self.store.load(version)
        self.watermark = WatermarkTracker.from_dict(self.pipeline.watermark, meta.get("watermark"),
                                                    int(self.home.settings.stream.watermark_tolerance_s * 1_000_000))
        self.operators = [WindowOperator(a, snapshot.get(a.name)) for a in self.pipeline.aggregates]

    # -- planning ---------------------------------------------------------------------
    def _plan(self, start: dict[str, dict[int, int]] | None = None) -> dict[str, dict[int, tuple[int, int]]] | None:
        """The next batch's ranges from ``start`` (default: where the query stands)."""
        nxt = start or self._next
        cap = self.config.max_records_per_partition
        avail = {t: {p: min(end, nxt[t][p] + cap) - nxt[t][p] for p, end in self.log.end_offsets(t).items()} for t in (EVENTS, BAD_ROWS)}
        total = sum(n for parts in avail.values() for n in parts.values())
        if total == 0:
            return None
        limit = self.config.max_records_per_batch
        if limit is not None and total > limit:
            # Share the cap in proportion to each partition's backlog (at least 1 where there
            # is one, so no partition starves).
            avail = {t: {p: min(n, max(1 if n else 0, n * limit // total)) for p, n in parts.items()} for t, parts in avail.items()}
        if self.config.max_batch_bytes is not None:
            # An equal byte share per partition with a backlog: simple, and no partition starves.
            share = self.config.max_batch_bytes // sum(1 for parts in avail.values() for n in parts.values() if n)
            avail = {
                t: {p: self.log.end_within_bytes(t, p, nxt[t][p], nxt[t][p] + n, share) - nxt[t][p] if n else 0 for p, n in parts.items()}
                for t, parts in avail.items()
            }
        return {t: {p: (nxt[t][p], nxt[t][p] + n) for p, n in parts.items()} for t, parts in avail.items()}

    def run_once(
        self, plan: dict[str, dict[int, tuple[int, int]]] | None = None, batch_timestamp_ms: int | None = None
    ) -> BatchResult | None:
        """Plan and run one micro-batch; ``None`` when the log has nothing new.

        ``plan`` (``{topic: {partition: (start, end)}}``) and ``batch_timestamp_ms`` re-run a
        batch recorded by another query's offset log (:meth:`Checkpoint.read_offsets` /
        :meth:`~Checkpoint.read_metadata`): same input, same batch boundaries, same
        processing time, hence the same output. ``ValueError`` if the plan does not start
        where this query stands."""
        ahead, self._prefetch = self._prefetch, None
        read = None
        if plan is None:
            # The batch planned and read ahead from where this query now stands is used as is:
            # any bounded range from here is a valid plan, and it is recorded in offsets/N below
            # before the batch runs, like any other.
            got = None
            if ahead is not None:
                try:
                    got = ahead.result()
                except Exception as e:  # planned and read again by the batch, where a failure counts
                    log.info("reading ahead failed, reading again: %s", e)
            if got is not None and all(self._next[t][p] == start for t, parts in got[0].items() for p, (start, _) in parts.items()):
                plan, read = got
            else:
                plan = self._plan()
            if plan is None:
                return None
        else:
            for topic, parts in plan.items():
                for p, (start, _) in parts.items():
                    if self._next[topic][p] != start:
                        raise InvalidInputError(f"plan: {topic}/{p} starts at {start}, this query is at {self._next[topic][p]}")
        batch_id = self._next_batch
        now = self.clock() if batch_timestamp_ms is None else batch_timestamp_ms
        self.checkpoint.write_offsets(batch_id, plan, {"batch_timestamp_ms": now, **self._handover})
        self._handover = {}
        return self._attempt(batch_id, plan, now, replay=False, read=read)

    def run(self, stop: threading.Event | None = None, available_now: bool = False) -> None:
        """Run micro-batches until ``stop`` is set; with ``available_now`` stop once the
        data present at the start has been processed (Spark's ``Trigger.AvailableNow``)."""
        stop = stop or threading.Event()
        targets = {t: self.log.end_offsets(t) for t in (EVENTS, BAD_ROWS)} if available_now else None
        self._read_ahead = available_now  # catch-up: batches are full, so the next plan is known
        try:
            self._loop(stop, targets)
        finally:
            self._read_ahead = False
            self._prefetch = None

    def _loop(self, stop: threading.Event, targets: dict[str, dict[int, int]] | None) -> None:
        while not stop.is_set():
            if targets is not None and all(
                self._next[t][p] >= end for t, ends in targets.items() for p, end in ends.items()
            ):
                return
            started = time.monotonic()
            result = self.run_once()
            if result is None:
                stop.wait(self.config.trigger_interval_s)
                continue
            log.info(
                "batch %d: %d in, %d written, %d duplicates, %d late in %.0f ms",
                result.batch_id,
                result.input_events,
                result.written_events,
                result.duplicates,
                result.late_events,
                (time.monotonic() - started) * 1000,
            )
            if targets is None:  # processing-time trigger: at most one batch per interval
                stop.wait(max(0.0, started + self.config.trigger_interval_s - time.monotonic()))

    # -- one batch --------------------------------------------------------------------
    def _attempt(self, batch_id: int, plan: dict[str, dict[int, tuple[int, int]]], now_ms: int, replay: bool, read: tuple | None = None) -> BatchResult:
        """:meth:`_run`, counting its failures in the checkpoint (they survive restarts: the
        supervisor restarting a crashed processor is what repeats them); the failure that
        reaches ``quarantine_after`` raises :class:`BatchQuarantinedError` instead."""
        try:
            result = self._run(batch_id, plan, now_ms, replay, read)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            rec = self.checkpoint.record_failure(batch_id, error, self.config.quarantine_after)
            log.error("batch %d failed (%d in a row with this error): %s", batch_id, rec["count"], error)
            self.checkpoint.check_quarantine(batch_id)
            raise
        self.checkpoint.clear_failure(batch_id)
        return result

    def _sink(self, name: str, data: pa.Table | None, batch_id: int, replay: bool, keys: tuple[str, ...] | None = None) -> None:
        """Commit ``data`` to table ``name`` with txn ``(QUERY, batch_id)``: an append, or with
        ``keys`` an upsert (update mode). Skipped when empty or already committed."""
        if data is None or data.num_rows == 0:
            return
        table = self.tables[name]
        committed = self.lake.committed_batch(table, QUERY) if replay else None
        if committed is not None and committed >= batch_id:
            return  # this batch's commit already reached the table before the crash
        for attempt in range(CONFLICT_RETRIES + 1):
            try:
                if keys is not None:
                    since = ("window_start", pc.min(data.column("window_start")).as_py())
                    self.lake.upsert_once(table, data, keys, app_id=QUERY, batch_id=batch_id, since=since)
                elif name.startswith("realtime."):
                    self.lake.append_once(table, data.drop_columns(["_delete"]), app_id=QUERY, batch_id=batch_id)
                else:
                    self.lake.append_once(table, data, app_id=QUERY, batch_id=batch_id)
                break
            except CommitConflictError as e:
                if attempt == CONFLICT_RETRIES:
                    raise
                log.info("batch %d: %s; retrying", batch_id, e)
        self.files.appended(table, data)
        with self._commit_lock:
            self._commits += 1
            if self.on_commit is not None:
                self.on_commit(self._commits)

    def _sink_bronze(self, events: pa.Table, rows: pa.Array, batch_id: int, replay: bool) -> None:
        """``bronze.events``: the ``rows`` (indices) of ``events`` that passed dedup."""
        self._sink(EVENTS, events.take(rows).select(EVENT_SCHEMA.names), batch_id, replay)

    @staticmethod
    def _aggregate(op: WindowOperator, events: pl.DataFrame, late: str, watermark_us: int | None) -> tuple[pa.Table, int, float]:
        """``op``'s sink rows for this batch (from the ``events`` whose boolean column ``late``
        is false), the number of windows it emitted and the seconds it took."""
        started = time.perf_counter()
        emit, deleted = op.update(events.filter(~pl.col(late)), watermark_us)
        return op.output(emit, deleted), emit.height, time.perf_counter() - started

    def _frame(self, events: pa.Table) -> pl.DataFrame:
        """The columns the operators need, as Polars: ``_row`` (index into ``events``),
        ``_ts`` (event time, int64 µs), the dedup key, ``received_at``, ``_partition``,
        ``ds``, the derived columns (DuckDB over the Arrow batch) and the group/measure
        columns. Wide payload columns (``properties``, ``context``) stay in Arrow: bronze
        takes its rows from ``events`` by ``_row``."""
        p = self.pipeline
        derived = {c.name for c in p.columns}
        used = {g for a in p.aggregates for g in a.group_by} | {m.column for a in p.aggregates for m in a.measures if m.column}
        base = [p.dedup.key, "source", p.watermark.column, "received_at", "_partition", "ds", *sorted(used - derived)]
        df = pl.from_arrow(events.select(list(dict.fromkeys(base))))
        if p.columns:
            exprs = ", ".join(f'{c.expr} AS "{c.name}"' for c in p.columns)
            df = pl.concat([df, pl.from_arrow(self._sql.from_arrow(events).project(exprs).to_arrow_table())], how="horizontal")
        return df.with_row_index("_row").with_columns(_ts=pl.col(p.watermark.column).dt.epoch("us"), **{DEDUP_KEY: _scoped(p.dedup.key)})

    def _read(self, plan: dict[str, dict[int, tuple[int, int]]]) -> tuple[pa.Table, list, pa.Table, list]:
        """Events (one chunk per column: the log's many small records would make every
        take/convert slow), their dead letters, bad rows and theirs, of ``plan``."""
        events, dead_ev = read_topic(self.log, EVENTS, plan[EVENTS], EVENT_SCHEMA)
        bad, dead_bad = read_topic(self.log, BAD_ROWS, plan[BAD_ROWS], BAD_ROW_SCHEMA)
        return events.combine_chunks(), dead_ev, bad, dead_bad

    def _plan_and_read(self, start: dict[str, dict[int, int]]) -> tuple[dict[str, dict[int, tuple[int, int]]], tuple] | None:
        """The plan of the batch starting at ``start`` and its :meth:`_read` (``None``: nothing
        to read); reading ahead, on the reader thread. Free of side effects."""
        plan = self._plan(start)
        return None if plan is None else (plan, self._read(plan))

    def _run(self, batch_id: int, plan: dict[str, dict[int, tuple[int, int]]], now_ms: int, replay: bool, read: tuple | None = None) -> BatchResult:
        started = time.time()
        result = BatchResult(batch_id)
        events, dead_ev, bad, dead_bad = read if read is not None else self._read(plan)
        if self._read_ahead:  # plan and read batch N+1 while batch N computes and commits
            after = {t: {**self._next[t], **{p: e for p, (_, e) in plan[t].items()}} for t in (EVENTS, BAD_ROWS)}
            self._prefetch = self._reader.submit(self._plan_and_read, after)

        df = self._frame(events)
        fresh = self.dedup.filter_new(df)
        result.input_events, result.written_events = df.height, fresh.height
        result.duplicates = df.height - fresh.height

        # Lateness is decided with the watermark as of the end of the previous batch.
        wm_before = self.watermark.global_us
        fresh, late_rows = late.split(fresh, events, self.pipeline.aggregates, wm_before)
        result.late_events = late_rows.num_rows if late_rows is not None else 0
        maxima = df.group_by("_partition").agg(pl.col("_ts").max()).iter_rows()
        read = {f"{EVENTS}/{p}" for p, (s, e) in plan[EVENTS].items() if e > s}
        wm_after = self.watermark.advance(read, {f"{EVENTS}/{p}": ts for p, ts in maxima}, now_ms)

        # The sinks run on a small thread pool while the operators compute (delta-rs and
        # Polars release the GIL): the bronze write overlaps the aggregation, and the
        # independent Delta commits overlap each other. Each table's commit carries its own
        # txn (QUERY, N), so their order inside the batch does not matter for exactly-once:
        # all of them finish (or the batch raises) before the state and commits/N are written.
        pending = [self._sinks.submit(self._sink_bronze, events, fresh.get_column("_row").to_arrow(), batch_id, replay)]
        try:
            if bad.num_rows:
                result.bad_rows = bad.num_rows
                pending.append(self._sinks.submit(self._sink, BAD_ROWS, bad.select(BAD_ROW_SCHEMA.names), batch_id, replay))
            dead = dead_ev + dead_bad
            result.dead_letters = len(dead)
            pending.append(self._sinks.submit(self._sink, "dead_letter", dead_letter_table(dead), batch_id, replay))
            pending.append(self._sinks.submit(self._sink, "late_events", late_rows, batch_id, replay))
            # The operators are independent of each other: they run side by side too, the
            # costliest (in the previous batch) first, so that the last to finish is a short one;
            # each one's sink is submitted as soon as it is done.
            order = sorted(range(len(self.operators)), key=lambda i: -self._op_seconds[i])
            updates = {self._ops.submit(self._aggregate, self.operators[i], fresh, f"_late_{i}", wm_after): i for i in order}
            # State version N (dedup delta, window snapshot) is keyed by N and only counts once
            # commits/N exists, so it is written while the operators and sinks run.
            delta = [self._state.submit(self.dedup.add, batch_id, fresh.get_column(DEDUP_KEY),
                                      int(df.get_column("received_at").dt.epoch("us").max()), now_ms * 1000)] if df.height else []
            try:
                for update in as_completed(updates):
                    i = updates[update]
                    op = self.operators[i]
                    out, emitted, self._op_seconds[i] = update.result()
                    result.window_rows += emitted
                    keys = op.merge_keys if op.spec.output_mode == "update" else None
                    pending.append(self._sinks.submit(self._sink, op.spec.table, out, batch_id, replay, keys))
            finally:
                wait([*updates, *delta])
            for f in delta:
                f.result()
            self.store.save(
                batch_id, {op.spec.name: op.snapshot() for op in self.operators}, {"watermark": self.watermark.to_dict()}
            )
        finally:
            wait(pending)  # all of them, even if something failed: none may still run after the batch
        for f in pending:
            f.result()  # re-raises a sink's error: the batch then fails before commits/N
        for key in COUNTERS:
            self._totals[key] = self._totals.get(key, 0) + getattr(result, key)
        result.totals = dict(self._totals)
        info: dict[str, Any] = {
            "batch_id": batch_id,
            "committed_ms": int(time.time() * 1000),
            "batch": {k: getattr(result, k) for k in COUNTERS},
            "totals": result.totals,
            "metrics": self._metrics(plan, started, now_ms, result),
        }
        self.checkpoint.write_commit(batch_id, info)
        if not self._recorded:
            handover.record(self.home, handover.EMBEDDED)
            self._recorded = True
        for topic in (EVENTS, BAD_ROWS):
            ends = {p: end for p, (_, end) in plan[topic].items()}
            self._next[topic].update(ends)
            self.log.commit(QUERY, topic, ends)
        self._next_batch = batch_id + 1
        if self.config.compact_every and (batch_id + 1) % self.config.compact_every == 0:
            self._compact_due()
        return result

    def _metrics(self, plan, started: float, now_ms: int, result: BatchResult) -> dict[str, Any]:
        """``info["metrics"]`` of the commit log (contract with ``/metrics`` and ``headwater
        status``): times in ms since epoch (UTC); ``records_out`` = rows written to bronze."""
        to_ms = lambda v: None if v is None else v // 1000  # noqa: E731
        parts = {}
        for topic, ranges in plan.items():
            for p, (s, e) in ranges.items():
                clock = self.watermark.partitions.get(f"{topic}/{p}")
                parts[f"{topic}/{p}"] = {
                    "start": s,
                    "end": e,
                    "max_event_ms": to_ms(clock.max_event_us) if clock else None,
                    "watermark_ms": to_ms(self.watermark.partition_us(clock)) if clock else None,
                    "idle": self.watermark.idle(clock, now_ms) if clock else topic == EVENTS,
                }
        return {
            "started_ms": int(started * 1000),
            "duration_ms": int((time.time() - started) * 1000),
            "batch_timestamp_ms": now_ms,
            "records_in": result.input_events + result.bad_rows,
            "records_out": result.written_events + result.bad_rows,
            "watermark_ms": to_ms(self.watermark.global_us),
            "partitions": parts,
            "state_rows": {op.spec.name: len(op) for op in self.operators} | {"dedup": len(self.dedup)},
        }

    def compact(self, min_files: int = 2) -> None:
        """Compact each partition of a table this query appended to (bronze.events,
        bad_rows, dead_letter, late_events, the realtime tables) that holds at least
        ``min_files`` small files (after a batch: ``lake.compact_min_files``): delta-rs OPTIMIZE, a
        commit of its own outside the batch protocol (a crash during it leaves only
        unreferenced files). A partition whose compaction fails stays a candidate.

        Only this query writes these tables; ``headwater maintain`` may rewrite them too,
        which fails one of the two commits (:class:`CommitConflictError`), never the data."""
        for table, keys in self.files.due(min_files).items():
            self.files.compact(table, keys)

    def _compact_due(self) -> None:
        """:meth:`compact` after a batch: the batch is committed, so a failure (a conflict, a
        full disk) is logged, not raised; the next check retries it."""
        try:
            self.compact(self.files.policy.min_files)
        except Exception as e:
            log.warning("compaction after batch %d failed, retried at the next check: %s", self._next_batch - 1, e)


def skip_quarantined(home: Home, batch_id: int, pipeline: Pipeline = DEFAULT_PIPELINE) -> dict[str, Any]:
    """Commit quarantined batch ``batch_id`` of the bronze query as skipped, for an operator
    (``headwater quarantine skip``); returns its quarantine record.

    Never silent: ``commits/N`` and ``quarantine/N.json`` record the skipped offsets, the error,
    the tables that already hold the batch's commit (a batch may fail after some sinks
    committed: those rows stay) and ``export``: a Parquet file per topic under
    ``quarantine/`` holding the batch's events (the log keeps them too, until its retention).
    The batch's partial state (dedup keys, window snapshot) is reset to that of batch N−1,
    so the query resumes at N+1 as if N had held nothing. Holds the writer lock:
    :class:`~headwater.stream.checkpoint.WriterLockedError` while a processor runs;
    :class:`~headwater.errors.ConflictError` unless N is the quarantined batch the query stands at."""
    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    with checkpoint.lock(timeout_s=10):
        checkpoint.awaiting_decision(batch_id)  # before anything is changed
        offsets = checkpoint.read_offsets(batch_id)
        export: dict[str, Any] = {}
        event_log = open_log(home.settings.log_url)
        try:
            for topic, schema in ((EVENTS, EVENT_SCHEMA), (BAD_ROWS, BAD_ROW_SCHEMA)):
                path = checkpoint.quarantine_dir / f"{batch_id}.{topic}.parquet"
                try:
                    table, dead = read_topic(event_log, topic, offsets.get(topic, {}), schema)
                    pq.write_table(table, path)
                    export[topic] = {"path": str(path), "rows": table.num_rows, "dead_letters": len(dead)}
                except Exception as e:  # an unreadable batch is still skipped: its offsets are recorded
                    export[topic] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            event_log.close()
        lake = Lake.of(home)
        tables = ["bronze.events", "bronze.bad_rows", "bronze.dead_letter", "bronze.late_events", *(a.table for a in pipeline.aggregates)]
        committed = [t for t in tables if lake.exists(t) and (c := lake.committed_batch(t, QUERY)) is not None and c >= batch_id]
        # State version N := version N-1 (load deletes the newer files the failed runs left).
        previous = batch_id - 1 if batch_id else None
        DedupState(checkpoint.state_dir / "dedup", pipeline.dedup.ttl, DEDUP_KEY).load(previous)
        store = StateStore(checkpoint.state_dir / "windows")
        snapshot, meta = store.load(previous)
        store.save(batch_id, snapshot, meta)
        rec = checkpoint.skip(batch_id, {"export": export, "tables_with_batch": committed})
        log.warning("stream batch %d skipped by an operator: offsets %s, error %s", batch_id, rec["offsets"], rec["error"])
        return rec
