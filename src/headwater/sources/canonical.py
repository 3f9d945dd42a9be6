"""Mapped rows (:mod:`.mapping`) → canonical events + bad rows → the event log.

The last step every non-HTTP source shares with the collector, over the ingest core: ids
become HMAC tokens (:meth:`headwater.ingest.tokens.Tokenizer.column`, one HMAC per distinct
id), events are built by :func:`headwater.ingest.canonical.build_events` from Arrow columns,
properties go through the source's PII policy (:mod:`headwater.ingest.pii`), bad rows are
typed :class:`~headwater.ingest.badrows.BadRow` with their payload redacted, events are split by
identity key into log partitions (:mod:`headwater.ingest.partitioning`) and appended,
with the batch's bad rows, in ONE log transaction — a batch is stored whole or not at all.
On a log without ``atomic_multi_topic_append`` the events and the bad rows are two appends,
each atomic: a failure between them raises with the events stored, and a rerun stores them
again (deduplicated by ``event_id`` downstream, never twice in bronze) and the bad rows once.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from headwater.config import Home, PiiPolicy
from headwater.events import BAD_ROWS_TOPIC, ENVELOPE_VIOLATION, EVENT_SCHEMA, EVENTS_TOPIC, TS
from headwater.ingest.badrows import BadRow, bad_rows_append, redact
from headwater.ingest.canonical import EVENT_TIME_RANGE, Built, EventColumns, build_events, time_violation_reason
from headwater.ingest.partitioning import event_appends
from headwater.ingest.pii import PiiScrubber, scrubber
from headwater.ingest.tokens import Tokenizer
from headwater.log import Append, EventLog, open_log

_encode = msgspec.json.Encoder().encode


@dataclass
class Counts:
    """What a source run did: ``rows`` read (good + bad), ``accepted`` events appended,
    ``rejected`` bad rows by error type."""

    rows: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)

    def add(self, other: "Counts") -> None:
        self.rows += other.rows
        self.accepted += other.accepted
        self.rejected.update(other.rejected)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "accepted": self.accepted, "rejected": sum(self.rejected.values()), "rejected_by_type": dict(self.rejected)}


class LogSink:
    """Writes mapped batches of one source to the event log as canonical events.

    ``source``: the ``source`` column value (its PII policy is the configured source's of
    that name, else the default policy); ``surface`` / ``platform``: constant columns;
    ``context``: JSON object text stored in every event's ``context``; ``protocol``: the
    bad rows' ``protocol`` (``import``, ``serverlog``); ``id_columns``: input columns holding
    identifiers, tokenised in bad-row payloads; ``where`` (``row`` / ``line``) and
    ``timestamp_column`` name an event-time violation in its bad row's reason."""

    def __init__(self, home: Home, source: str, *, protocol: str, context: dict, id_columns: tuple[str, ...],
                 surface: str = "server", platform: str = "server", log: EventLog | None = None,
                 where: str = "row", timestamp_column: str = "timestamp"):
        self.home, self.source, self.protocol = home, source, protocol
        self.log = log or open_log(home.settings.log_url)
        self.partitions = self.log.ensure_topic(EVENTS_TOPIC, home.settings.log.partitions)
        self.log.ensure_topic(BAD_ROWS_TOPIC, 1)
        # A large cache: an export's ids repeat across batches; 1M ids ≈ 150 MB at most.
        self.tokenizer = Tokenizer(home.hmac_key(), cache_size=1 << 20)
        self.policy = next((s.pii for s in home.sources() if s.name == source), PiiPolicy())
        self.scrubber: PiiScrubber = scrubber(self.policy, self.tokenizer)
        self.context = _encode(context).decode()
        self.surface, self.platform = surface, platform
        self.id_columns = id_columns
        self.where, self.timestamp_column = where, timestamp_column
        self.future_tolerance_us = int(home.settings.collector.future_tolerance_h * 3_600_000_000)

    def write(self, mapped: pa.Table | pa.RecordBatch) -> Counts:
        """Append one batch of :data:`~headwater.sources.mapping.MAPPED_COLUMNS` rows: good rows
        as events, the rest as bad rows, in one log transaction. Returns its counts."""
        appends, counts = self.prepare(mapped)
        self._append(appends)
        return counts

    def write_all(self, batches) -> Counts:
        """:meth:`write` every batch of the iterable ``batches``, in order, each batch's log
        append overlapping the preparation of the next one (SQLite releases the GIL while it
        writes). At most one append is in flight; an append error is raised at once, and the
        batches before it are stored. Returns the total counts."""
        total = Counts()
        with ThreadPoolExecutor(1, thread_name_prefix="log-append") as pool:
            pending = None
            for batch in batches:
                appends, counts = self.prepare(batch)
                if pending is not None:
                    pending.result()
                pending = pool.submit(self._append, appends)
                total.add(counts)
            if pending is not None:
                pending.result()
        return total

    def prepare(self, mapped: pa.Table | pa.RecordBatch) -> tuple[list[Append], Counts]:
        """The log appends of one batch (events by partition, then its bad rows) and its counts."""
        if isinstance(mapped, pa.RecordBatch):
            mapped = pa.Table.from_batches([mapped])
        received_us = time.time_ns() // 1000
        failed = pc.is_valid(mapped.column("_error"))
        bad = mapped.filter(failed)
        good = mapped.filter(pc.invert(failed))
        built = self.events(good, received_us) if good.num_rows else Built(EVENT_SCHEMA.empty_table(), [])
        events = built.events
        appends = event_appends(events, self.partitions, EVENTS_TOPIC)
        counts = Counts(rows=mapped.num_rows, accepted=events.num_rows)
        # Payloads: identifier columns tokenised here, the source's PII policy by bad_rows_append.
        rows = [
            BadRow(t, reason, self.source, received_us, redact(p, self.tokenizer, self.id_columns) if p is not None else None, self.protocol)
            for t, reason, p in zip(*(bad.column(c).to_pylist() for c in ("_error_type", "_error", "_payload")))
        ] + self._time_bad_rows(good, built, received_us)
        if rows:
            counts.rejected.update(r.error_type for r in rows)
            appends.append(bad_rows_append(rows, self.policy, self.tokenizer))
        return appends, counts

    def _append(self, appends: list[Append]) -> None:
        """One batch's appends: one log transaction, or one per topic, events first (module doc)."""
        for group in self.log.atomic_groups(appends):
            self.log.append(group)

    def _time_bad_rows(self, good: pa.Table, built: Built, received_us: int) -> list[BadRow]:
        """Bad rows of the mapped rows whose event time broke the range rule; the payload is
        the mapped row (ids as tokens, event time as text: it may not fit a ``datetime``)."""
        out = []
        for v in built.violations:
            r = good.slice(v.row, 1)
            get = lambda c: r.column(c)[0].as_py()  # noqa: E731
            where = f"{self.where} {get('_row')}: column \"{self.timestamp_column}\" (timestamp)"
            payload = {
                "event_id": get("event_id"), "event_type": get("event_type"), "event_name": get("event_name"),
                "user_id": self.tokenizer.token(u) if (u := get("user_raw")) else None,
                "anonymous_id": self.tokenizer.token(a) if (a := get("anon_raw")) else None,
                "event_ts": pc.cast(r.column("event_ts"), pa.string())[0].as_py(), "properties": get("properties"),
            }
            out.append(BadRow(ENVELOPE_VIOLATION, time_violation_reason(where), self.source, received_us,
                              _encode(payload).decode(), self.protocol, self.timestamp_column, EVENT_TIME_RANGE))
        return out

    def events(self, good: pa.Table, received_us: int) -> Built:
        """``EVENT_SCHEMA`` table of mapped rows that passed every rule (event time as mapped:
        no client clock to correct; the event-time range and future tolerance of
        :func:`~headwater.ingest.canonical.event_time` applied), ``properties`` scrubbed with
        the source's PII policy; plus the rows the range rule left out."""
        n = good.num_rows
        columns = EventColumns(
            event_ids=good.column("event_id"),
            event_types=good.column("event_type"),
            event_names=good.column("event_name"),
            anonymous_ids=self.tokenizer.column(good.column("anon_raw")),
            user_ids=self.tokenizer.column(good.column("user_raw")),
            timestamps=good.column("event_ts"),
            original_timestamps=pa.nulls(n, TS),
            sent_ats=pa.nulls(n, TS),
            surfaces=pa.repeat(pa.scalar(self.surface), n),
            platforms=pc.fill_null(good.column("platform"), self.platform),
            properties=good.column("properties"),
            contexts=pa.repeat(pa.scalar(self.context), n),
        )
        built = build_events(columns, source=self.source, received_at_us=received_us, future_tolerance_us=self.future_tolerance_us)
        return Built(self.scrubber.apply(built.events, ("properties",)), built.violations)
