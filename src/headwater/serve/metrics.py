"""Prometheus metrics of the log and the stream processor (``GET /metrics``).

The figures are those of :mod:`headwater.serve.progress`, read at scrape time from durable
state other processes write: per-partition end offset, committed offset and lag (events);
per stream query the last batch, batch duration, records/s in and out, and the global and
per-partition watermark with its delay behind the wall clock.

Metric names follow the Prometheus naming guide (base units: seconds, events; ``_total``
only for counters). Exposition: the Prometheus text format as ``prometheus_client`` writes it
(:data:`CONTENT_TYPE`), rendered by :func:`render`.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from headwater.config import Home
from headwater.serve.progress import RATE_WINDOW_S, log_offsets, query_metrics
from headwater.events import STREAM_GROUP as QUERY  # not stream.processor: a collector worker stays light

CONTENT_TYPE = CONTENT_TYPE_LATEST


class StreamCollector:
    """``prometheus_client`` custom collector: yields the families listed in :func:`render`
    from the log and the commit logs of ``home`` on every scrape."""

    def __init__(self, home: Home):
        self.home = home

    def collect(self):
        offsets = log_offsets(self.home)
        end = GaugeMetricFamily("headwater_log_end_offset", "Offset the next event appended to the partition gets.", labels=["topic", "partition"])
        committed = GaugeMetricFamily(
            "headwater_log_committed_offset", "Next offset the consumer group will read (committed after each batch).", labels=["group", "topic", "partition"]
        )
        lag = GaugeMetricFamily("headwater_log_lag_events", "Events in the partition not yet committed by the consumer group.", labels=["group", "topic", "partition"])
        for topic, t in offsets.items():
            for p, v in t["partitions"].items():
                end.add_metric([topic, str(p)], v["end_offset"])
                committed.add_metric([QUERY, topic, str(p)], v["committed_offset"])
                lag.add_metric([QUERY, topic, str(p)], v["lag"])
        yield from (end, committed, lag)

        now_ms = int(time.time() * 1000)
        q = query_metrics(self.home, now_ms)
        fams = {
            "last_batch_id": GaugeMetricFamily("headwater_stream_last_batch_id", "Id of the last committed micro-batch.", labels=["query"]),
            "last_batch_end_ms": GaugeMetricFamily(
                "headwater_stream_last_batch_end_timestamp_seconds", "When the last micro-batch finished (unix time).", labels=["query"]
            ),
            "batch_duration_s": GaugeMetricFamily("headwater_stream_batch_duration_seconds", "Duration of the last micro-batch.", labels=["query"]),
            "records_in_per_s": GaugeMetricFamily(
                "headwater_stream_records_in_per_second", f"Records read per second over the last {RATE_WINDOW_S:.0f} s.", labels=["query"]
            ),
            "records_out_per_s": GaugeMetricFamily(
                "headwater_stream_records_out_per_second", f"Records written to bronze per second over the last {RATE_WINDOW_S:.0f} s.", labels=["query"]
            ),
            "watermark_ms": GaugeMetricFamily("headwater_stream_watermark_seconds", "Global event-time watermark (unix time).", labels=["query"]),
            "watermark_delay_s": GaugeMetricFamily(
                "headwater_stream_watermark_delay_seconds", "Wall clock minus the global watermark.", labels=["query"]
            ),
        }
        part_wm = GaugeMetricFamily(
            "headwater_stream_partition_watermark_seconds", "Event-time watermark of one log partition (unix time).", labels=["query", "partition"]
        )
        part_idle = GaugeMetricFamily(
            "headwater_stream_partition_idle", "1 if the partition is idle (does not hold the global watermark back).", labels=["query", "partition"]
        )
        for name, m in q.items():
            for key, fam in fams.items():
                v = m[key]
                if v is not None:
                    fam.add_metric([name], v / 1000 if key in ("watermark_ms", "last_batch_end_ms") else v)
            for part, p in m["partitions"].items():
                if p["watermark_ms"] is not None:
                    part_wm.add_metric([name, part], p["watermark_ms"] / 1000)
                part_idle.add_metric([name, part], 1.0 if p["idle"] else 0.0)
        yield from fams.values()
        yield from (part_wm, part_idle)


def render(home: Home) -> bytes:
    """The Prometheus text exposition of :class:`StreamCollector` for ``home``.

    Families: ``headwater_log_end_offset{topic,partition}``,
    ``headwater_log_committed_offset{group,topic,partition}``,
    ``headwater_log_lag_events{group,topic,partition}``, and per query
    ``headwater_stream_{last_batch_id, last_batch_end_timestamp_seconds,
    batch_duration_seconds, records_in_per_second, records_out_per_second,
    watermark_seconds, watermark_delay_seconds}{query}``,
    ``headwater_stream_partition_watermark_seconds{query,partition}``,
    ``headwater_stream_partition_idle{query,partition}``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StreamCollector(home))
    return generate_latest(registry)
