"""Mapped rows (:mod:`.mapping`) → canonical events + bad rows → the event log.

The last step every non-HTTP source shares with the collector: ids become HMAC tokens
(:meth:`headwater.collector.tokens.Tokenizer.column`, one HMAC per distinct id), properties
go through the source's PII policy (:mod:`headwater.collector.pii`), events are split by
identity key into log partitions (:mod:`headwater.collector.partitioning`) and appended,
with the batch's bad rows, in ONE log transaction — a batch is stored whole or not at all.
"""

from __future__ import annotations

import functools
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from headwater.collector.partitioning import event_appends
from headwater.collector.pii import PiiScrubber, scrubber
from headwater.collector.segment import bad_row, bad_rows_table
from headwater.collector.tokens import Tokenizer
from headwater.config import Home, PiiPolicy, partitions_from_env
from headwater.events import BAD_ROWS_TOPIC, EVENT_SCHEMA, EVENTS_TOPIC, TS
from headwater.log.base import Append, EventLog
from headwater.log.codec import encode
from headwater.log.sqlite import SqliteLog

MAX_PAYLOAD_CHARS = 32 * 1024  # a bad row keeps at most this much of the input row

_decode = msgspec.json.Decoder().decode
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
    identifiers, tokenised in bad-row payloads."""

    def __init__(self, home: Home, source: str, *, protocol: str, context: dict, id_columns: tuple[str, ...],
                 surface: str = "server", platform: str = "server", log: EventLog | None = None):
        self.home, self.source, self.protocol = home, source, protocol
        self.log = log or SqliteLog(home.log_path)
        self.partitions = self.log.ensure_topic(EVENTS_TOPIC, partitions_from_env())
        self.log.ensure_topic(BAD_ROWS_TOPIC, 1)
        # A large cache: an export's ids repeat across batches; 1M ids ≈ 150 MB at most.
        self.tokenizer = Tokenizer(home.hmac_key(), cache_size=1 << 20)
        policy = next((s.pii for s in home.sources() if s.name == source), PiiPolicy())
        self.scrubber: PiiScrubber = scrubber(policy, self.tokenizer)
        self.context = _encode(context).decode()
        self.surface, self.platform = surface, platform
        self.id_columns = id_columns

    def write(self, mapped: pa.Table | pa.RecordBatch) -> Counts:
        """Append one batch of :data:`~headwater.sources.mapping.MAPPED_COLUMNS` rows: good rows
        as events, the rest as bad rows, in one log transaction. Returns its counts."""
        appends, counts = self.prepare(mapped)
        self.log.append(appends)
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
                pending = pool.submit(self.log.append, appends)
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
        events = self.events(good, received_us) if good.num_rows else EVENT_SCHEMA.empty_table()
        appends = event_appends(events, self.partitions, EVENTS_TOPIC)
        counts = Counts(rows=mapped.num_rows, accepted=events.num_rows)
        if bad.num_rows:
            rows = [
                bad_row(received_us, self.source, t, reason, self._payload(p), protocol=self.protocol)
                for t, reason, p in zip(*(bad.column(c).to_pylist() for c in ("_error_type", "_error", "_payload")))
            ]
            counts.rejected.update(r["error_type"] for r in rows)
            appends.append(Append(BAD_ROWS_TOPIC, 0, len(rows), encode(bad_rows_table(rows))))
        return appends, counts

    def events(self, good: pa.Table, received_us: int) -> pa.Table:
        """``EVENT_SCHEMA`` table of mapped rows that passed every rule."""
        n = good.num_rows
        ts = good.column("event_ts").cast(TS)
        events = pa.Table.from_arrays(
            [
                good.column("event_id"),
                good.column("event_type"),
                good.column("event_name"),
                self.tokenizer.column(good.column("anon_raw")),
                self.tokenizer.column(good.column("user_raw")),
                ts,
                pa.repeat(pa.scalar(received_us, TS), n),
                pa.repeat(pa.scalar(self.source), n),
                pa.repeat(pa.scalar(self.surface), n),
                pc.fill_null(good.column("platform"), self.platform),
                good.column("properties"),
                pa.repeat(pa.scalar(self.context), n),
                pa.nulls(n, pa.string()),
                pc.cast(ts, pa.date32()),
            ],
            schema=EVENT_SCHEMA,
        )
        return self.scrubber.apply(events, ("properties",))

    def _payload(self, text: str | None) -> str | None:
        """The input row for a bad row: identifier columns tokenised, PII policy applied."""
        if text is None:
            return None
        try:
            obj = _decode(text)
        except msgspec.DecodeError:
            obj = None
        if isinstance(obj, dict):
            for c in self.id_columns:
                v = obj.get(c)
                if v is not None and v != "" and not isinstance(v, (dict, list)):
                    obj[c] = self.tokenizer(str(v))
            return self.scrubber.scrub_json(_encode(obj).decode())[:MAX_PAYLOAD_CHARS]
        # Not a JSON object (a key=value line, a malformed line): tokenise `id=value` and
        # `"id": "value"` pairs of the identifier columns textually, then the policy's text rules.
        for c in self.id_columns:
            for pattern in _id_patterns(c):
                text = pattern.sub(lambda m: m[1] + self.tokenizer(m[2]) + m[3], text)
        return self.scrubber.scrub_text(text)[:MAX_PAYLOAD_CHARS]


@functools.lru_cache(maxsize=64)
def _id_patterns(key: str) -> tuple[re.Pattern, ...]:
    k = re.escape(key)
    return (
        re.compile(r"((?:^|[|\s])" + k + r"\s*=\s*)([^|\s]+)()"),
        re.compile(r'("' + k + r'"\s*:\s*")((?:[^"\\]|\\.)*)(")'),
    )
