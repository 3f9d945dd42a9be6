"""``headwater status``: log offsets and lag, stream progress, table row counts.

Shape of :func:`status` (all offsets count events; times are ISO 8601 UTC)::

    {"home": str,
     "log": {topic: {"partitions": {p: {"end_offset", "committed_offset", "lag"}}, "lag": int}},
     "lag": int,                      # total over topics
     "stream": {"last_batch_id", "last_batch_time", "totals": {...}} | null,
     "metrics": {query: {...}},        # the /metrics figures per stream query (serve.progress.query_metrics)
     "tables": {"bronze.events": rows, ...}}
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.stream.checkpoint import Checkpoint
from headwater.serve.progress import log_offsets, query_metrics
from headwater.stream.processor import QUERY


def status(home: Home) -> dict[str, Any]:
    """The status document described in the module docstring."""
    offsets = log_offsets(home)
    out: dict[str, Any] = {
        "home": str(home.root),
        "log": offsets,
        "lag": sum(t["lag"] for t in offsets.values()),
        "stream": None,
        "metrics": query_metrics(home),
        "tables": {},
    }

    checkpoint_dir = home.checkpoint_dir(QUERY)
    if checkpoint_dir.exists():
        last = Checkpoint(checkpoint_dir).latest_committed()
        if last is not None:
            info = Checkpoint(checkpoint_dir).read_commit(last)
            when = dt.datetime.fromtimestamp(info["committed_ms"] / 1000, dt.timezone.utc)
            out["stream"] = {"last_batch_id": last, "last_batch_time": when.isoformat(), "totals": info["totals"]}

    lake = Lake.of(home)
    out["tables"] = {table: lake.row_count(table) for table in lake.tables()}  # existing catalog tables
    return out
