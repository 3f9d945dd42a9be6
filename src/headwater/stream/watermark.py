"""Event-time watermarks per log partition, and the global watermark (Flink's idleness rule).

Per partition ``p``: ``wm(p) = max(event time seen in p) − delay``. The global watermark is
``min(wm(p))`` over partitions that have seen events and are *active*: a partition that
received no record for ``idle_timeout`` of processing time is idle and does not hold the
global watermark back (Flink's ``withIdleness``; Spark takes one max over all input
instead). The global watermark never decreases: when a partition comes back from idleness
behind it, its events are simply late.

Processing time here is the batch timestamp recorded in the offset log (``offsets/N``
metadata, like Spark's ``batchTimestampMs``), so a replayed batch decides idleness exactly
as the first run did. Batch N uses the watermark as of the end of batch N−1 for its
lateness decisions (Spark's rule); :meth:`WatermarkTracker.advance` then folds batch N in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headwater.stream.pipeline import Watermark, us


@dataclass
class PartitionClock:
    """``max_event_us``: newest event time seen (µs, ``None`` before any event);
    ``active_ms``: batch timestamp (ms) of the last batch that read a record of it."""

    max_event_us: int | None = None
    active_ms: int | None = None


@dataclass
class WatermarkTracker:
    """Per-partition clocks (keyed ``"<topic>/<partition>"``) and the global watermark (µs)."""

    spec: Watermark
    partitions: dict[str, PartitionClock] = field(default_factory=dict)
    global_us: int | None = None

    def idle(self, clock: PartitionClock, now_ms: int) -> bool:
        return clock.active_ms is None or now_ms - clock.active_ms > self.spec.idle_timeout.total_seconds() * 1000

    def partition_us(self, clock: PartitionClock) -> int | None:
        return None if clock.max_event_us is None else clock.max_event_us - us(self.spec.delay)

    def advance(self, read: set[str], max_event_us: dict[str, int], now_ms: int) -> int | None:
        """Fold in a batch at processing time ``now_ms`` that read records from partitions
        ``read`` whose newest event times are ``max_event_us``; return the new global watermark."""
        for key in read:
            clock = self.partitions.setdefault(key, PartitionClock())
            clock.active_ms = now_ms
        for key, ts in max_event_us.items():
            clock = self.partitions.setdefault(key, PartitionClock())
            clock.max_event_us = ts if clock.max_event_us is None else max(clock.max_event_us, ts)
        candidates = [
            self.partition_us(c) for c in self.partitions.values() if c.max_event_us is not None and not self.idle(c, now_ms)
        ]
        if candidates:
            low = min(candidates)
            self.global_us = low if self.global_us is None else max(self.global_us, low)
        return self.global_us

    def to_dict(self) -> dict[str, Any]:
        return {
            "global_us": self.global_us,
            "partitions": {k: [c.max_event_us, c.active_ms] for k, c in self.partitions.items()},
        }

    @classmethod
    def from_dict(cls, spec: Watermark, d: dict[str, Any] | None) -> "WatermarkTracker":
        if not d:
            return cls(spec)
        parts = {k: PartitionClock(v[0], v[1]) for k, v in d["partitions"].items()}
        return cls(spec, parts, d["global_us"])
