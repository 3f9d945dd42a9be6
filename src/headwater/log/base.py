"""The event log interface: topics of partitions of offsets, one offset per event, as in Kafka.

Contract of every backend (:func:`headwater.log.open_log` picks one by URL):

- **Offsets.** Each event appended to a partition gets the next offset of that partition;
  offsets are never reused, even after retention deleted the events. In the SQLite backend
  they are dense (0, 1, 2, …); in Kafka, transaction markers take offsets too, so a range
  ``[start, end)`` may hold fewer than ``end - start`` events: plan by offsets, never count
  events by subtracting them (lag = end − committed is an upper bound there).
- **Ordering.** Within a partition, events are read in offset order, which is append order;
  the rows of one :class:`Append` keep their order and get consecutive offsets. There is no
  order across partitions (the producer picks the partition by identity key, so one user's
  events are ordered).
- **Atomicity.** :meth:`EventLog.append` stores the appends of ONE topic (any partitions)
  all or nothing, durably before it returns (SQLite: one transaction, WAL fsynced; Kafka: one
  producer transaction, ``acks=all``). Appends to several topics in one call are atomic only
  where the backend declares :attr:`EventLog.atomic_multi_topic_append` (SQLite does; a Kafka
  backend would declare it only if it spans topics with one transaction); elsewhere such a
  call is refused and callers split it with :meth:`EventLog.atomic_groups`, accepting that a
  failure between the groups leaves the earlier ones stored.
- **Reading.** :meth:`EventLog.read` returns exactly the events with offsets in
  ``[start, end)``, conformed to the reader's schema (Kafka: the value deserializer), plus
  the stored units that could not be read as events — undecodable bytes, or columns that
  break the schema — as :class:`DeadLetter` entries; bad input never raises and never blocks
  the reader. A unit is a SQLite append of one partition (many events) or a Kafka message
  (one event); a unit straddling two consecutive reads is reported by the one whose range
  holds its first offset, so reading a partition in adjacent ranges reports each bad unit once.
- **Retention** is the backend's own business, configured by the ``retention_ms`` option of
  :func:`~headwater.log.open_log` (setting ``log.retention_ms``). SQLite deletes events older
  than that from :meth:`~EventLog.commit`, but only those every consumer group has committed
  past: nothing accepted is lost to retention. Kafka's broker applies its ``retention.ms``
  whatever the consumers did. Reading offsets already deleted returns fewer events, no error.
- **Commit.** A consumer group commits the next offset to read per partition (Kafka's
  committed offsets in ``__consumer_offsets``). It is informational — lag, status, the
  retention floor — and the consumer's own checkpoint stays the source of truth for where it
  resumes (as with Spark's Kafka source).

Errors: unknown topic or partition → :class:`~headwater.errors.NotFoundError`; a failing
store (locked, disk I/O, broker down) → :class:`~headwater.errors.TransientError`; a bad URL
or option → :class:`~headwater.errors.InvalidInputError` naming ``log.url``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import pyarrow as pa

from headwater.errors import InvalidInputError, NotFoundError

# Columns every read adds after the schema's: the event's log partition and offset, and the
# backend's append time of the unit that holds it (ms since epoch, UTC; Kafka: the message
# timestamp).
READ_COLUMNS = (
    pa.field("_partition", pa.int32(), nullable=False),
    pa.field("_offset", pa.int64(), nullable=False),
    pa.field("_appended_ms", pa.int64(), nullable=False),
)


def read_schema(schema: pa.Schema) -> pa.Schema:
    """Schema of :attr:`ReadResult.events` for a read with ``schema``: its fields, then
    :data:`READ_COLUMNS`."""
    return pa.schema([*schema, *READ_COLUMNS])


@dataclass(frozen=True)
class Append:
    """Events for one partition of a topic: ``events`` rows get consecutive offsets in order."""

    topic: str
    partition: int
    events: pa.Table


@dataclass(frozen=True)
class DeadLetter:
    """A stored unit of ``topic``/``partition`` that could not be read as events.

    ``offset``: its first offset; ``count``: the offsets it covers (the events it claimed to
    hold); ``error``: why (``ArrowInvalid: …``, ``invalid record: column event_ts: …``);
    ``payload``: its stored bytes, as they are; ``appended_ms``: its append time (ms since
    epoch, UTC)."""

    topic: str
    partition: int
    offset: int
    count: int
    error: str
    payload: bytes
    appended_ms: int


class ReadResult(NamedTuple):
    """What :meth:`EventLog.read` returns: ``events`` (schema :func:`read_schema`, possibly
    empty) and the ``dead_letters`` this read reports."""

    events: pa.Table
    dead_letters: list[DeadLetter]


class EventLog(ABC):
    """A durable, partitioned, offset-addressed log shared by processes (contract: module doc)."""

    #: Whether one :meth:`append` call spanning several topics is atomic.
    atomic_multi_topic_append: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def from_url(cls, url: str, **options) -> EventLog:
        """Open the log at ``url`` (this backend's scheme); ``options`` override the URL's
        query parameters. :class:`InvalidInputError` (field ``log.url``) for a malformed URL
        or an unknown option."""

    @abstractmethod
    def ensure_topic(self, topic: str, partitions: int) -> int:
        """Create ``topic`` with ``partitions`` partitions unless it exists; return its
        partition count (an existing topic keeps its own)."""

    @abstractmethod
    def partitions(self, topic: str) -> int:
        """Partition count of ``topic``; :class:`NotFoundError` if it does not exist."""

    def append(self, appends: Sequence[Append]) -> None:
        """Store ``appends`` durably and atomically (see the module doc): when this returns
        they survive a kill -9 or power loss; if it raises, none of them was stored.

        Raises :class:`InvalidInputError` for several topics in one call without
        :attr:`atomic_multi_topic_append`, :class:`NotFoundError` for an unknown topic or
        partition, :class:`TransientError` when the store fails."""
        if not self.atomic_multi_topic_append and len({a.topic for a in appends}) > 1:
            raise InvalidInputError(
                f"appends: this log stores one topic per atomic append, got {sorted({a.topic for a in appends})}; "
                "split them with atomic_groups()",
                field="appends",
            )
        self._append(appends)

    @abstractmethod
    def _append(self, appends: Sequence[Append]) -> None:
        """:meth:`append` after the topic check."""

    def atomic_groups(self, appends: Sequence[Append]) -> list[list[Append]]:
        """``appends`` split into the :meth:`append` calls this backend stores atomically:
        one call, or one per topic (topics in order of first appearance); no empty group."""
        if not appends:
            return []
        if self.atomic_multi_topic_append:
            return [list(appends)]
        groups: dict[str, list[Append]] = {}
        for a in appends:
            groups.setdefault(a.topic, []).append(a)
        return list(groups.values())

    @abstractmethod
    def read(self, topic: str, partition: int, start: int, end: int, schema: pa.Schema) -> ReadResult:
        """The events of ``topic``/``partition`` with offsets in ``[start, end)``, in offset
        order, cast to ``schema`` (:func:`headwater.log.schema.conform`) with
        :data:`READ_COLUMNS` added, and the dead letters this read reports (module doc).
        :class:`NotFoundError` for an unknown topic or partition."""

    def end_within_bytes(self, topic: str, partition: int, start: int, end: int, max_bytes: int) -> int:
        """The largest ``e`` in ``(start, end]`` such that the stored units holding offsets
        ``[start, e)`` take at most ``max_bytes`` (at least the first unit, so a reader always
        progresses; ``start`` when ``start == end``). For bounding a read in bytes. The
        default knows no sizes and returns ``end``."""
        return end

    def appended_ms(self, topic: str, partition: int, offset: int) -> int | None:
        """The append time (ms since epoch, UTC; the ``_appended_ms`` a read gives) of the unit
        holding ``offset``, ``None`` if there is no readable event there (not appended yet,
        deleted by retention). The default reads the event with no columns; a backend may look
        it up without decoding events. :class:`NotFoundError` for an unknown topic or partition."""
        got = self.read(topic, partition, offset, offset + 1, pa.schema([])).events.column("_appended_ms")
        return got[0].as_py() if len(got) else None

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended event will get."""

    @abstractmethod
    def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Record consumer group ``group``'s next offsets to read (module doc: Commit)."""

    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, the offsets ``group`` committed (0 where it committed none)."""

    def close(self) -> None:  # pragma: no cover - trivial default
        """Release connections."""


def oldest_unconsumed_ms(log: EventLog, group: str, topic: str) -> int | None:
    """Append time (ms, :meth:`EventLog.appended_ms`) of the oldest event of ``topic`` that
    consumer group ``group`` has not committed, over every partition; ``None`` if the group is
    caught up or the topic does not exist yet."""
    try:
        ends = log.end_offsets(topic)
    except NotFoundError:
        return None
    done = log.committed(group, topic)
    waiting = [log.appended_ms(topic, p, done.get(p, 0)) for p, end in ends.items() if done.get(p, 0) < end]
    return min((ms for ms in waiting if ms is not None), default=None)
