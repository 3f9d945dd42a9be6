"""The bronze streaming query: event log → ``bronze.events`` exactly once, in micro-batches.

Per micro-batch N (recovery protocol in :mod:`headwater.stream.checkpoint`):

1. plan: for each partition of the ``events`` and ``bad_rows`` topics, read up to
   ``max_records_per_partition`` events past the previous batch's end; write ``offsets/N``;
2. read + decode the Arrow records; undecodable ones go to ``bronze.dead_letter``;
3. dedup ``event_id`` within the batch and against the TTL state (:mod:`dedup`);
4. append to ``bronze.events`` / ``bronze.bad_rows`` / ``bronze.dead_letter``, each commit
   carrying Delta txn ``(app_id, N)``; on a replay a table already holding txn N is skipped;
5. store the batch's dedup state, write ``commits/N``, commit the consumer-group offsets
   (these last are informational, for lag; the checkpoint is the source of truth).

A kill -9 anywhere leaves at most batch N half done, and its replay reads the same
offsets on top of the same state, so it writes the same rows, once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl
import pyarrow as pa
from deltalake import DeltaTable

from headwater.config import Home, partitions_from_env
from headwater.events import BAD_ROW_SCHEMA, BAD_ROWS_TOPIC, EVENT_SCHEMA, EVENTS_TOPIC, TS
from headwater.lake import tables
from headwater.log.base import EventLog
from headwater.log.codec import Undecodable, decode
from headwater.log.sqlite import SqliteLog
from headwater.stream.checkpoint import Checkpoint
from headwater.stream.dedup import DedupState

log = logging.getLogger("headwater.stream")

EVENTS, BAD_ROWS = EVENTS_TOPIC, BAD_ROWS_TOPIC
QUERY = "bronze"  # checkpoint name, consumer group and Delta txn app id

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),  # first offset of the record
        pa.field("count", pa.int64(), nullable=False),  # events the record claimed to hold
        pa.field("error", pa.string(), nullable=False),
        pa.field("payload", pa.binary()),
        pa.field("appended_at", TS, nullable=False),  # log append time
        pa.field("ds", pa.date32(), nullable=False),  # UTC date of appended_at
    ]
)


@dataclass
class StreamConfig:
    """Trigger and state settings of the bronze query.

    ``trigger_interval_s``: processing-time trigger (seconds between polls when idle);
    ``max_records_per_partition``: bound of one micro-batch per partition (backpressure);
    ``dedup_ttl``: how long an event_id is remembered (processing time);
    ``compact_every``: every this many batches, the ``ds`` partitions of ``bronze.events``
    written since the last compaction are compacted and log retention is applied (0: never);
    ``log_retention``: log records older than this, once consumed, are deleted."""

    trigger_interval_s: float = 0.5
    max_records_per_partition: int = 50_000
    dedup_ttl: dt.timedelta = dt.timedelta(hours=24)
    compact_every: int = 50
    log_retention: dt.timedelta = dt.timedelta(days=7)


@dataclass
class BatchResult:
    batch_id: int
    input_events: int = 0
    written_events: int = 0
    duplicates: int = 0
    bad_rows: int = 0
    dead_letters: int = 0
    totals: dict[str, int] = field(default_factory=dict)


class BronzeStream:
    """The streaming query from the event log into the bronze Delta tables."""

    def __init__(self, home: Home, config: StreamConfig | None = None, event_log: EventLog | None = None):
        self.home = home
        self.config = config or StreamConfig()
        self.log = event_log or SqliteLog(home.log_path)
        self.log.ensure_topic(EVENTS, partitions_from_env())
        self.log.ensure_topic(BAD_ROWS, 1)
        self.checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
        self.dedup = DedupState(self.checkpoint.state_dir / "dedup", self.config.dedup_ttl)
        self.paths = {
            EVENTS: home.table_path("bronze", "events"),
            BAD_ROWS: home.table_path("bronze", "bad_rows"),
            "dead_letter": home.table_path("bronze", "dead_letter"),
        }
        self._next: dict[str, dict[int, int]] = {}
        self._next_batch = 0
        self._totals: dict[str, int] = {}
        self._touched: set[dt.date] = set()  # ds partitions appended since the last compaction
        self._recover()

    # -- recovery ---------------------------------------------------------------------
    def _recover(self) -> None:
        replay, committed = self.checkpoint.recover()
        self.dedup.load(committed)
        self._totals = self.checkpoint.read_commit(committed)["totals"] if committed is not None else {}
        last = replay if replay is not None else committed
        self._next = {t: {p: 0 for p in range(self.log.partitions(t))} for t in (EVENTS, BAD_ROWS)}
        if last is not None:
            for topic, parts in self.checkpoint.read_offsets(last).items():
                for p, (_, end) in parts.items():
                    self._next[topic][p] = end
        if replay is not None:
            log.info("recovering: re-running batch %d", replay)
            self._run(replay, self.checkpoint.read_offsets(replay), replay=True)
        else:
            self._next_batch = 0 if committed is None else committed + 1

    # -- planning ---------------------------------------------------------------------
    def _plan(self) -> dict[str, dict[int, tuple[int, int]]] | None:
        cap = self.config.max_records_per_partition
        plan, any_new = {}, False
        for topic in (EVENTS, BAD_ROWS):
            ends = self.log.end_offsets(topic)
            plan[topic] = {}
            for p, end in ends.items():
                start = self._next[topic][p]
                stop = min(end, start + cap)
                plan[topic][p] = (start, stop)
                any_new |= stop > start
        return plan if any_new else None

    def run_once(self) -> BatchResult | None:
        """Plan and run one micro-batch; ``None`` when the log has nothing new."""
        plan = self._plan()
        if plan is None:
            return None
        batch_id = self._next_batch
        self.checkpoint.write_offsets(batch_id, plan)
        return self._run(batch_id, plan, replay=False)

    def run(self, stop: threading.Event | None = None, available_now: bool = False) -> None:
        """Run micro-batches until ``stop`` is set; with ``available_now`` stop once the
        data present at the start has been processed (Spark's ``Trigger.AvailableNow``)."""
        stop = stop or threading.Event()
        targets = {t: self.log.end_offsets(t) for t in (EVENTS, BAD_ROWS)} if available_now else None
        while not stop.is_set():
            if targets is not None and all(
                self._next[t][p] >= end for t, ends in targets.items() for p, end in ends.items()
            ):
                return
            started = time.monotonic()
            result = self.run_once()
            if result is None:
                stop.wait(self.config.trigger_interval_s)
            else:
                log.info(
                    "batch %d: %d in, %d written, %d duplicates in %.0f ms",
                    result.batch_id,
                    result.input_events,
                    result.written_events,
                    result.duplicates,
                    (time.monotonic() - started) * 1000,
                )

    # -- one batch --------------------------------------------------------------------
    def _read(self, topic: str, plan: dict[int, tuple[int, int]]) -> tuple[pa.Table | None, list[Undecodable]]:
        parts, dead = [], []
        for p, (start, end) in sorted(plan.items()):
            if end > start:
                t, bad = decode(self.log.read(topic, p, start, end), start, end)
                dead += bad
                if t is not None:
                    parts.append(t)
        return (pa.concat_tables(parts) if parts else None), dead

    def _sink(self, name: str, data: pa.Table | None, batch_id: int, replay: bool) -> None:
        if data is None or data.num_rows == 0:
            return
        path = self.paths[name]
        committed = tables.committed_batch(path, QUERY) if replay else None
        if committed is not None and committed >= batch_id:
            return  # this batch's commit already reached the table before the crash
        tables.append_once(path, data, app_id=QUERY, batch_id=batch_id)

    def _run(self, batch_id: int, plan: dict[str, dict[int, tuple[int, int]]], replay: bool) -> BatchResult:
        result = BatchResult(batch_id)
        events, dead_ev = self._read(EVENTS, plan[EVENTS])
        bad, dead_bad = self._read(BAD_ROWS, plan[BAD_ROWS])

        new_ids = pl.Series("event_id", [], pl.String)
        max_received = 0
        if events is not None:
            result.input_events = events.num_rows
            df = pl.from_arrow(events)
            fresh = self.dedup.filter_new(df)
            result.duplicates = events.num_rows - fresh.height
            result.written_events = fresh.height
            new_ids = fresh.get_column("event_id")
            max_received = int(df.get_column("received_at").dt.epoch("us").max())
            self._sink(EVENTS, fresh.select(EVENT_SCHEMA.names).to_arrow().cast(EVENT_SCHEMA), batch_id, replay)
        if bad is not None:
            result.bad_rows = bad.num_rows
            self._sink(BAD_ROWS, bad.select(BAD_ROW_SCHEMA.names).cast(BAD_ROW_SCHEMA), batch_id, replay)
        dead = [(EVENTS, d) for d in dead_ev] + [(BAD_ROWS, d) for d in dead_bad]
        result.dead_letters = len(dead)
        self._sink("dead_letter", _dead_letter_table(dead), batch_id, replay)

        if events is not None:
            self.dedup.add(batch_id, new_ids, max_received)
        for key in ("input_events", "written_events", "duplicates", "bad_rows", "dead_letters"):
            self._totals[key] = self._totals.get(key, 0) + getattr(result, key)
        result.totals = dict(self._totals)
        info: dict[str, Any] = {
            "batch_id": batch_id,
            "committed_ms": int(time.time() * 1000),
            "batch": {k: getattr(result, k) for k in ("input_events", "written_events", "duplicates", "bad_rows", "dead_letters")},
            "totals": result.totals,
        }
        self.checkpoint.write_commit(batch_id, info)
        for topic in (EVENTS, BAD_ROWS):
            ends = {p: end for p, (_, end) in plan[topic].items()}
            self._next[topic].update(ends)
            self.log.commit(QUERY, topic, ends)
        self._next_batch = batch_id + 1
        if events is not None and result.written_events:
            self._touched.update(fresh.get_column("ds").unique().to_list())
        if self.config.compact_every and (batch_id + 1) % self.config.compact_every == 0:
            self.compact()
            self.log.enforce_retention(int(self.config.log_retention.total_seconds() * 1000))
        return result

    def compact(self) -> None:
        """Rewrite the small files that micro-batches left in recently written ``ds``
        partitions of ``bronze.events`` into larger ones (delta-rs OPTIMIZE; a commit of its
        own, outside the batch protocol: a crash during it leaves only unreferenced files).

        Only the stream appends to bronze, so the compaction never conflicts with a writer."""
        if not self._touched or not tables.exists(self.paths[EVENTS]):
            return
        days = sorted(d.isoformat() for d in self._touched)
        DeltaTable(str(self.paths[EVENTS])).optimize.compact(partition_filters=[("ds", "in", days)])
        self._touched.clear()


def _dead_letter_table(dead: list[tuple[str, Undecodable]]) -> pa.Table | None:
    if not dead:
        return None
    appended = [dt.datetime.fromtimestamp(d.record.appended_ms / 1000, dt.timezone.utc) for _, d in dead]
    return pa.table(
        {
            "topic": [t for t, _ in dead],
            "partition": [d.record.partition for _, d in dead],
            "offset": [d.record.offset for _, d in dead],
            "count": [d.record.count for _, d in dead],
            "error": [d.error for _, d in dead],
            "payload": [d.record.payload for _, d in dead],
            "appended_at": appended,
            "ds": [a.date() for a in appended],
        },
        schema=DEAD_LETTER_SCHEMA,
    )
