"""Mapped rows (:mod:`.mapping`) → canonical events + bad rows → the event log or bronze.

:class:`Canonicalizer` is the step every non-HTTP source shares with the collector, over the
ingest core: ids become HMAC tokens (:meth:`headwater.ingest.tokens.Tokenizer.column`, one
HMAC per distinct id, or tokens the caller joined in already), events are built by
:func:`headwater.ingest.canonical.build_events` from Arrow columns, checked against their
contracts (:func:`headwater.registry.validate.apply`, as the collector does: on the values as
sent, before the PII policy), properties go through the source's PII policy
(:mod:`headwater.ingest.pii`), and bad rows are typed :class:`~headwater.ingest.badrows.BadRow`
with their payload redacted. Its output goes to one of two sinks:

- :class:`LogSink` (the live path): events split by identity key into log partitions
  (:mod:`headwater.ingest.partitioning`) and appended, with the batch's bad rows, in ONE log
  transaction — a batch is stored whole or not at all. On a log without
  ``atomic_multi_topic_append`` the events and the bad rows are two appends, each atomic: a
  failure between them raises with the events stored, and a rerun stores them again
  (deduplicated by ``event_id`` downstream, never twice in bronze) and the bad rows once.
- :mod:`.bulk` (history): straight into ``bronze.events`` / ``bronze.bad_rows``, one Delta
  commit per chunk.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from headwater.config import Home, PiiPolicy
from headwater.events import BAD_ROWS_TOPIC, ENVELOPE_VIOLATION, EVENT_SCHEMA, EVENTS_TOPIC, TS
from headwater.ingest.badrows import BadRow, bad_rows_append, redact
from headwater.ingest.canonical import EVENT_TIME_RANGE, Built, EventColumns, Normalized, build_events, time_violation_reason
from headwater.ingest.partitioning import event_appends
from headwater.ingest.pii import PiiScrubber, scrubber
from headwater.ingest.tokens import Tokenizer
from headwater.log import Append, EventLog, open_log
from headwater.registry import validate as contracts
from headwater.registry.registry import Registry

_encode = msgspec.json.Encoder().encode

#: Optional columns of a mapped batch: the HMAC tokens of ``user_raw`` / ``anon_raw``, when the
#: caller tokenised the distinct ids of its whole input at once (:func:`with_tokens`).
TOKEN_COLUMNS = {"user_raw": "user_token", "anon_raw": "anon_token"}


def with_tokens(batch: pa.RecordBatch | pa.Table, tokens: pa.Array) -> pa.Table:
    """``batch`` of :func:`.files.indexed` rows with :data:`TOKEN_COLUMNS` taken from
    ``tokens`` (the tokens of its ``ids``) instead of ``user_idx`` / ``anon_idx``."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    for raw, idx in (("user_raw", "user_idx"), ("anon_raw", "anon_idx")):
        table = table.append_column(TOKEN_COLUMNS[raw], pc.take(tokens, table.column(idx)))
    return table.drop_columns(["user_idx", "anon_idx"])


@dataclass
class Counts:
    """What a source run did: ``rows`` read (good + bad), ``accepted`` events stored,
    ``rejected`` bad rows by error type, ``duplicates`` rows dropped because their
    ``(source, event_id)`` was in bronze already or earlier in the same file (bulk import
    only: the live path leaves that to the stream's dedup)."""

    rows: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    duplicates: int = 0

    def add(self, other: "Counts") -> None:
        self.rows += other.rows
        self.accepted += other.accepted
        self.rejected.update(other.rejected)
        self.duplicates += other.duplicates

    def as_dict(self) -> dict:
        return {"rows": self.rows, "accepted": self.accepted, "rejected": sum(self.rejected.values()),
                "rejected_by_type": dict(self.rejected), "duplicates": self.duplicates}


@dataclass
class Prepared:
    """One mapped batch after :meth:`Canonicalizer.prepare`: ``events`` (``EVENT_SCHEMA``,
    PII policy applied), ``bad_rows`` (payloads redacted; :func:`bad_rows_append` scrubs
    them with the source's policy) and the batch's ``counts``."""

    events: pa.Table
    bad_rows: list[BadRow]
    counts: Counts


class Canonicalizer:
    """Turns mapped batches of one source into canonical events and bad rows.

    ``source``: the ``source`` column value (its PII policy and ``unregistered_events`` are
    the configured source's of that name, else the defaults); ``surface`` / ``platform``:
    constant columns; ``context``: JSON object stored in every event's ``context``;
    ``protocol``: the bad rows' ``protocol`` (``import``, ``serverlog``); ``id_columns``:
    input columns holding identifiers, tokenised in bad-row payloads; ``where`` (``row`` /
    ``line``) and ``timestamp_column`` name the row and column in bad-row reasons."""

    def __init__(self, home: Home, source: str, *, protocol: str, context: dict, id_columns: tuple[str, ...],
                 surface: str = "server", platform: str = "server", where: str = "row", timestamp_column: str = "timestamp"):
        self.source, self.protocol = source, protocol
        # A large cache: an export's ids repeat across batches; 1M ids ≈ 150 MB at most.
        self.tokenizer = Tokenizer(home.hmac_key(), cache_size=1 << 20)
        config = next((s for s in home.sources() if s.name == source), None)
        self.policy = config.pii if config is not None else PiiPolicy()
        self.reject_unregistered = config is not None and config.unregistered_events == "reject"
        self.validator = contracts.ContractValidator(Registry.from_home(home))
        self.scrubber: PiiScrubber = scrubber(self.policy, self.tokenizer)
        self.context = _encode(context).decode()
        self.surface, self.platform = surface, platform
        self.id_columns = id_columns
        self.where, self.timestamp_column = where, timestamp_column
        self.future_tolerance_us = int(home.settings.collector.future_tolerance_h * 3_600_000_000)

    def fork(self) -> Canonicalizer:
        """A copy for another thread: the same source, policy and tokenizer (thread-safe),
        its own contract validator (one per thread)."""
        other = copy.copy(self)
        other.validator = contracts.ContractValidator(self.validator.registry)
        return other

    def prepare(self, mapped: pa.Table | pa.RecordBatch) -> Prepared:
        """Events and bad rows of one batch of :data:`~headwater.sources.mapping.MAPPED_COLUMNS`
        rows (and, optionally, :data:`TOKEN_COLUMNS`), received now."""
        if isinstance(mapped, pa.RecordBatch):
            mapped = pa.Table.from_batches([mapped])
        received_us = time.time_ns() // 1000
        failed = pc.is_valid(mapped.column("_error"))
        if pc.any(failed).as_py():
            bad, good = mapped.filter(failed), mapped.filter(pc.invert(failed))
        else:  # the common case: no copy of the batch
            bad, good = mapped.slice(0, 0), mapped
        events, rows = self.events(good, received_us) if good.num_rows else (EVENT_SCHEMA.empty_table(), [])
        # Payloads: identifier columns tokenised here, the source's PII policy by bad_rows_append.
        rows = [
            BadRow(t, reason, self.source, received_us, redact(p, self.tokenizer, self.id_columns) if p is not None else None, self.protocol)
            for t, reason, p in zip(*(bad.column(c).to_pylist() for c in ("_error_type", "_error", "_payload")))
        ] + rows
        counts = Counts(rows=mapped.num_rows, accepted=events.num_rows)
        counts.rejected.update(r.error_type for r in rows)
        return Prepared(events, rows, counts)

    def events(self, good: pa.Table, received_us: int) -> tuple[pa.Table, list[BadRow]]:
        """``EVENT_SCHEMA`` table of mapped rows that passed every mapping rule (event time as
        mapped: no client clock to correct; the event-time range and future tolerance of
        :func:`~headwater.ingest.canonical.event_time` applied), checked against their
        contracts, ``properties`` scrubbed with the source's PII policy; plus the bad rows of
        the rows the range rule or a contract refused."""
        n = good.num_rows
        columns = EventColumns(
            event_ids=good.column("event_id"),
            event_types=good.column("event_type"),
            event_names=good.column("event_name"),
            anonymous_ids=self._tokens(good, "anon_raw"),
            user_ids=self._tokens(good, "user_raw"),
            timestamps=good.column("event_ts"),
            original_timestamps=pa.nulls(n, TS),
            sent_ats=pa.nulls(n, TS),
            surfaces=pa.repeat(pa.scalar(self.surface), n),
            platforms=pc.fill_null(good.column("platform"), self.platform),
            properties=good.column("properties"),
            contexts=pa.repeat(pa.scalar(self.context), n),
        )
        built = build_events(columns, source=self.source, received_at_us=received_us, future_tolerance_us=self.future_tolerance_us)
        bad = [self._time_bad_row(good, v.row, received_us) for v in built.violations]
        norm = self._contracts(good, built, received_us)
        return self.scrubber.apply(norm.events, ("properties",)), bad + norm.bad_rows

    def _tokens(self, good: pa.Table, raw: str) -> pa.Array | pa.ChunkedArray:
        token = TOKEN_COLUMNS[raw]
        return good.column(token) if token in good.column_names else self.tokenizer.column(good.column(raw))

    def _contracts(self, good: pa.Table, built: Built, received_us: int) -> Normalized:
        """``built``'s events checked against their contracts (the collector's rule, module
        doc of :mod:`headwater.registry.validate`); a refused event's bad row names its row."""
        row = lambda i: i  # noqa: E731 (event i is mapped row i, unless the range rule left rows out)
        if built.violations:
            out = {v.row for v in built.violations}
            row = [i for i in range(good.num_rows) if i not in out].__getitem__
        return contracts.apply(
            Normalized(built.events), self.validator, messages=_Payloads(self, good, row, built.events.num_rows),
            at=lambda i: f"{self.where} {good.column('_row')[row(i)].as_py()}",
            reject_unregistered=self.reject_unregistered, redact=lambda raw: raw.decode(),
            source=self.source, received_at_us=received_us, protocol=self.protocol,
        )

    def _time_bad_row(self, good: pa.Table, row: int, received_us: int) -> BadRow:
        """The bad row of mapped row ``row``, whose event time broke the range rule."""
        where = f"{self.where} {good.column('_row')[row].as_py()}: column \"{self.timestamp_column}\" (timestamp)"
        return BadRow(ENVELOPE_VIOLATION, time_violation_reason(where), self.source, received_us,
                      self.payload(good, row).decode(), self.protocol, self.timestamp_column, EVENT_TIME_RANGE)

    def payload(self, good: pa.Table, row: int) -> bytes:
        """Bad-row payload of mapped row ``row``: its mapped values as JSON, ids as tokens,
        the event time as text (it may not fit a ``datetime``)."""
        r = good.slice(row, 1)
        get = lambda c: r.column(c)[0].as_py()  # noqa: E731
        return _encode({
            "event_id": get("event_id"), "event_type": get("event_type"), "event_name": get("event_name"),
            "user_id": self.tokenizer.token(u) if (u := get("user_raw")) else None,
            "anonymous_id": self.tokenizer.token(a) if (a := get("anon_raw")) else None,
            "event_ts": pc.cast(r.column("event_ts"), pa.string())[0].as_py(), "properties": get("properties"),
        })


class _Payloads(Sequence):
    """The payloads of a batch's events for :func:`contracts.apply`, built only for the
    events it refuses (``row(i)``: the mapped row of event ``i``)."""

    def __init__(self, canon: Canonicalizer, good: pa.Table, row, n: int):
        self.canon, self.good, self.row, self.n = canon, good, row, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        return self.canon.payload(self.good, self.row(i))


class LogSink:
    """Writes mapped batches of one source, canonicalised by ``canon``, to the event log (the
    live path); ``log``: the event log (default: the home's)."""

    def __init__(self, home: Home, canon: Canonicalizer, log: EventLog | None = None):
        self.canon, self.source = canon, canon.source
        self.log = log or open_log(home.settings.log_url)
        self.partitions = self.log.ensure_topic(EVENTS_TOPIC, home.settings.log.partitions)
        self.log.ensure_topic(BAD_ROWS_TOPIC, 1)

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
        p = self.canon.prepare(mapped)
        appends = event_appends(p.events, self.partitions, EVENTS_TOPIC)
        if p.bad_rows:
            appends.append(bad_rows_append(p.bad_rows, self.canon.policy, self.canon.tokenizer))
        return appends, p.counts

    def _append(self, appends: list[Append]) -> None:
        """One batch's appends: one log transaction, or one per topic, events first (module doc)."""
        for group in self.log.atomic_groups(appends):
            self.log.append(group)
