"""Progress of the log and the stream queries, read from durable state at call time.

Nothing is kept in the calling process, so any process (the collector's ``/metrics``,
``headwater status``) can serve it and it stays right across restarts of the stream:

- :func:`log_offsets`: the log's end offsets and the bronze query's committed offsets per
  partition, and the lag (events);
- :func:`query_metrics`: per stream query, from its commit log
  (``checkpoints/<query>/commits/N``, ``info["metrics"]`` written by
  :mod:`headwater.stream.processor`): last batch, batch duration, records/s in and out, the
  global and per-partition watermark and its delay behind the wall clock.

Rates are computed like Prometheus' ``rate()`` over a window: the records of the batches
that ended in the last :data:`RATE_WINDOW_S` seconds, divided by the time from the start of
the first of them (at most the window) to now — so an idle query's rate decays to 0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from headwater.config import Home
from headwater.errors import NotFoundError
from headwater.log import open_log
from headwater.events import BAD_ROWS_TOPIC as BAD_ROWS, EVENTS_TOPIC as EVENTS, STREAM_GROUP as QUERY  # not stream.processor: `up` stays light

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



def log_offsets(home: Home) -> dict[str, Any]:
    """Per topic: ``{"partitions": {p: {"end_offset", "committed_offset", "lag"}}, "lag"}``,
    committed offsets being the bronze query's consumer group; topics not yet created are absent."""
    log = open_log(home.settings.log_url)
    out: dict[str, Any] = {}
    try:
        for topic in (EVENTS, BAD_ROWS):
            try:
                ends, done = log.end_offsets(topic), log.committed(QUERY, topic)
            except NotFoundError:
                continue
            parts = {p: {"end_offset": e, "committed_offset": done[p], "lag": e - done[p]} for p, e in ends.items()}
            out[topic] = {"partitions": parts, "lag": sum(v["lag"] for v in parts.values())}
    finally:
        log.close()
    return out
