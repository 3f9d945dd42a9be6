"""Event-time watermarks per log partition, and the global watermark (Flink's idleness rule),
bounded by processing time.

Per partition ``p``: ``wm(p) = max(min(event time, now + tolerance) seen in p) − delay``.
The global watermark is ``min(wm(p))`` over partitions that have seen events and are
*active*: a partition that received no record for ``idle_timeout`` of processing time is
idle and does not hold the global watermark back (Flink's ``withIdleness``; Spark takes one
max over all input instead). The global watermark never decreases: when a partition comes
back from idleness behind it, its events are simply late.

**The cap: the watermark never runs ahead of processing time plus ``tolerance``**
(``stream.watermark_tolerance_s``, 60 s). Both reference designs derive the watermark from
event times alone — Flink's ``BoundedOutOfOrdernessWatermarks`` emits ``max timestamp −
out-of-orderness bound`` (https://nightlies.apache.org/flink/flink-docs-stable/docs/dev/datastream/event-time/generating_watermarks/),
Spark's ``withWatermark`` "max event time seen − delay threshold"
(https://spark.apache.org/docs/latest/structured-streaming-programming-guide.html#handling-late-data-and-watermarking)
— so one event stamped 2100 (a broken device clock, or an event logged before the
collector clamped such times) would move the watermark to 2100 for good: every later event
late, every realtime window closed, the live tables frozen. An event time can only be ahead
of the moment it is processed by clock error, so each event time is capped at ``now +
tolerance`` before it enters the per-partition max. The event itself is processed as sent
(its window, its bronze row); it just cannot drag the watermark past the present. With the
cap ``wm ≤ now + tolerance − delay``, and the ``delay`` keeps its meaning for ordinary
out-of-order events. A state saved before the cap (a clock or global watermark past it) is
brought back under it on the next batch — the one time the watermark moves back.

Processing time here is the batch timestamp recorded in the offset log (``offsets/N``
metadata, like Spark's ``batchTimestampMs``), so a replayed batch decides idleness and the
cap exactly as the first run did. Batch N uses the watermark as of the end of batch N−1 for
its lateness decisions (Spark's rule); :meth:`WatermarkTracker.advance` then folds batch N in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from headwater.stream.pipeline import Watermark, us

#: Default of ``stream.watermark_tolerance_s`` (µs): how far ahead of processing time the watermark may run.
TOLERANCE_US = 60_000_000


@dataclass
class PartitionClock:
    """``max_event_us``: newest event time seen, capped at processing time + tolerance (µs,
    ``None`` before any event); ``active_ms``: batch timestamp (ms) of the last batch that
    read a record of it."""

    max_event_us: int | None = None
    active_ms: int | None = None


@dataclass
class WatermarkTracker:
    """Per-partition clocks (keyed ``"<topic>/<partition>"``) and the global watermark (µs);
    ``tolerance_us``: how far ahead of processing time the watermark may run (µs, the cap in
    the module doc; configuration, not state)."""

    spec: Watermark
    partitions: dict[str, PartitionClock] = field(default_factory=dict)
    global_us: int | None = None
    tolerance_us: int = TOLERANCE_US

    def idle(self, clock: PartitionClock, now_ms: int) -> bool:
        return clock.active_ms is None or now_ms - clock.active_ms > self.spec.idle_timeout.total_seconds() * 1000

    def partition_us(self, clock: PartitionClock) -> int | None:
        return None if clock.max_event_us is None else clock.max_event_us - us(self.spec.delay)

    def advance(self, read: set[str], max_event_us: dict[str, int], now_ms: int) -> int | None:
        """Fold in a batch at processing time ``now_ms`` that read records from partitions
        ``read`` whose newest event times are ``max_event_us``; return the new global
        watermark, never more than ``now_ms`` + tolerance (module doc)."""
        cap = now_ms * 1000 + self.tolerance_us
        for key in read:
            clock = self.partitions.setdefault(key, PartitionClock())
            clock.active_ms = now_ms
        for key, ts in max_event_us.items():
            clock = self.partitions.setdefault(key, PartitionClock())
            ts = min(ts, cap)
            clock.max_event_us = ts if clock.max_event_us is None else max(clock.max_event_us, ts)
        for clock in self.partitions.values():  # only a state saved before the cap can exceed it
            if clock.max_event_us is not None and clock.max_event_us > cap:
                clock.max_event_us = cap
        if self.global_us is not None and self.global_us > cap:
            self.global_us = None  # likewise: recomputed from the capped clocks below
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
    def from_dict(cls, spec: Watermark, d: dict[str, Any] | None, tolerance_us: int = TOLERANCE_US) -> "WatermarkTracker":
        if not d:
            return cls(spec, tolerance_us=tolerance_us)
        parts = {k: PartitionClock(v[0], v[1]) for k, v in d["partitions"].items()}
        return cls(spec, parts, d["global_us"], tolerance_us)
