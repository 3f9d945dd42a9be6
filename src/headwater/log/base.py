"""The event log interface: topics of partitions of offsets, like a Kafka topic.

A *record* is what one append stores for one partition: ``count`` events encoded together
in one ``payload`` (see :mod:`headwater.log.codec`), numbered ``offset .. offset+count-1``
— the shape of a Kafka record batch (base offset + record count). Offsets therefore count
events, so lag is in events. Consumer groups commit the next offset to read.

Implementations: :class:`headwater.log.sqlite.SqliteLog` (embedded default). A Kafka
implementation maps one record to one Kafka message batch keyed by partition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Append:
    """One partition's share of an append: ``count`` events encoded in ``payload``."""

    topic: str
    partition: int
    count: int
    payload: bytes


@dataclass(frozen=True)
class Record:
    """A stored record: events ``offset .. offset+count-1`` of ``topic``/``partition``.

    ``appended_ms`` is the log's wall-clock time of the append (ms since epoch, UTC)."""

    topic: str
    partition: int
    offset: int
    count: int
    payload: bytes
    appended_ms: int


class EventLog(ABC):
    """A durable, partitioned, offset-addressed log shared by processes."""

    @abstractmethod
    def ensure_topic(self, topic: str, partitions: int) -> int:
        """Create ``topic`` with ``partitions`` partitions unless it exists; return its
        partition count (an existing topic keeps its own)."""

    @abstractmethod
    def partitions(self, topic: str) -> int:
        """Partition count of ``topic``; ``KeyError`` if it does not exist."""

    @abstractmethod
    def append(self, appends: Sequence[Append]) -> None:
        """Store all ``appends`` in one atomic, durable step: when this returns they
        survive a kill -9 or power loss; if it raises, none of them was stored."""

    @abstractmethod
    def read(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        """Records overlapping offsets ``[start, end)`` in offset order (the first and last
        may extend beyond the range; :func:`headwater.log.codec.decode` slices them)."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended event will get."""

    @abstractmethod
    def commit(self, group: str, topic: str, offsets: dict[int, int]) -> None:
        """Record consumer group ``group``'s next offsets to read (for lag and status)."""

    @abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, the offsets ``group`` committed (0 where it committed none)."""

    @abstractmethod
    def enforce_retention(self, retention_ms: int) -> int:
        """Delete records appended more than ``retention_ms`` ago (Kafka's ``retention.ms``)
        that every consumer group has committed past; return how many events were deleted.
        Unlike Kafka, a record no group has consumed is kept however old: nothing accepted
        is lost to retention."""

    def close(self) -> None:  # pragma: no cover - trivial default
        """Release connections."""
