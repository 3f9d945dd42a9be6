"""Observability of the log and the stream processor: Prometheus metrics and their JSON twin.

Everything is read, at scrape time, from durable state other processes write — nothing is
kept in the serving process, so any process (the collector, ``headwater status``) can
serve it, and it stays right across restarts of the stream processor:

- the log's end offsets and the consumer group's committed offsets
  (:func:`headwater.serve.status.log_offsets`) → per-partition end offset, committed
  offset and lag (events);
- the commit log of each stream query (``checkpoints/<query>/commits/N``, written by
  :mod:`headwater.stream.processor`; ``info["metrics"]`` as agreed in
  /work/notes/stream_contract.md) → last batch, batch duration, records/s in and out,
  global and per-partition watermark and its delay behind the wall clock.

Rates are computed like Prometheus' ``rate()`` over a window: the records of the batches
that ended in the last :data:`RATE_WINDOW_S` seconds, divided by the time from the start of
the first of them (at most the window) to now — so an idle query's rate decays to 0.

Metric names follow the Prometheus naming guide (base units: seconds, events; ``_total``
only for counters). Exposition: the Prometheus text format as ``prometheus_client`` writes it
(:data:`CONTENT_TYPE`), rendered by :func:`render`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from headwater.config import Home
from headwater.serve.status import log_offsets
from headwater.stream.processor import QUERY

CONTENT_TYPE = CONTENT_TYPE_LATEST
RATE_WINDOW_S = 60.0
_MAX_COMMITS = 100  # commit files read per query and scrape, newest first


def _commits(commits_dir: Path) -> list[int]:
    return sorted((int(p.name) for p in commits_dir.iterdir() if p.name.isdigit()), reverse=True)


def _read_metrics(path: Path) -> dict[str, Any] | None:
    """``info["metrics"]`` of one commit file; ``None`` for a file that is not a headwater
    commit (e.g. a Spark checkpoint's ``v1`` commit) or vanished (purged) meanwhile."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    m = info.get("metrics") if isinstance(info, dict) else None
    return m if isinstance(m, dict) and "started_ms" in m else None


def query_metrics(home: Home, now_ms: int | None = None) -> dict[str, dict[str, Any]]:
    """Per stream query that has committed a batch with metrics (``{query: {...}}``):

    ``last_batch_id`` (int), ``last_batch_end_ms`` (ms since epoch, UTC),
    ``batch_duration_s`` (last batch), ``records_in_per_s`` / ``records_out_per_s``
    (over :data:`RATE_WINDOW_S`), ``watermark_ms`` (global, or ``None``),
    ``watermark_delay_s`` (``now − watermark``, or ``None``) and ``partitions``:
    ``{"<topic>/<p>": {"watermark_ms", "max_event_ms", "idle"}}``."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    root = home.root / "checkpoints"
    out: dict[str, dict[str, Any]] = {}
    if not root.exists():
        return out
    for qdir in sorted(p for p in root.iterdir() if (p / "commits").is_dir()):
        window_start = now_ms - RATE_WINDOW_S * 1000
        last, last_id, recent = None, None, []
        for batch_id in _commits(qdir / "commits")[:_MAX_COMMITS]:
            m = _read_metrics(qdir / "commits" / str(batch_id))
            if m is None:
                continue
            if last is None:
                last, last_id = m, batch_id
            if m["started_ms"] + m["duration_ms"] < window_start:
                break
            recent.append(m)
        if last is None:
            continue
        span_s = (now_ms - max(min((m["started_ms"] for m in recent), default=now_ms), window_start)) / 1000
        rate = lambda key: sum(m[key] for m in recent) / span_s if span_s > 0 else 0.0  # noqa: E731
        wm = last.get("watermark_ms")
        out[qdir.name] = {
            "last_batch_id": last_id,
            "last_batch_end_ms": last["started_ms"] + last["duration_ms"],
            "batch_duration_s": last["duration_ms"] / 1000,
            "records_in_per_s": rate("records_in"),
            "records_out_per_s": rate("records_out"),
            "watermark_ms": wm,
            "watermark_delay_s": None if wm is None else (now_ms - wm) / 1000,
            "partitions": {
                key: {"watermark_ms": p.get("watermark_ms"), "max_event_ms": p.get("max_event_ms"), "idle": bool(p.get("idle"))}
                for key, p in last.get("partitions", {}).items()
            },
        }
    return out


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
