"""Dedup state: event ids seen recently, versioned by batch (Spark's HDFS state-store design).

Each batch N stores the ids it first saw as one Parquet file ``state/dedup/N.parquet``
(Spark keeps ``N.delta`` files the same way); the state after batch N is the union of the
files of batches ``<= N`` that have not expired. Because files are keyed by batch id, a
re-run of batch N rewrites the same file, and recovery loads exactly "state after the last
committed batch" by ignoring files of later batches.

TTL: a batch's ids expire once the newest ``received_at`` (processing time stamped by the
collector, so replays decide identically) is more than ``ttl`` past the newest
``received_at`` of that batch. Ids are kept *at least* ``ttl``; memory is bounded by the
events received in one TTL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from headwater.stream.checkpoint import write_atomic


class DedupState:
    """Recently seen values of ``key`` (default ``event_id``, strings) with a processing-time TTL."""

    def __init__(self, directory: Path, ttl: dt.timedelta, key: str = "event_id"):
        self.key = key
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ttl_us = int(ttl.total_seconds() * 1_000_000)
        self._batches: dict[int, tuple[int, pl.Series]] = {}  # batch -> (max received_at µs, ids)
        self._ids = pl.Series("event_id", [], pl.String)

    def load(self, upto: int | None) -> None:
        """Load the state as of batch ``upto`` (``None``: empty); files of later batches,
        left by a batch that never committed, are deleted."""
        self._batches.clear()
        for path in self.dir.glob("*.parquet"):
            batch_id = int(path.stem)
            if upto is None or batch_id > upto:
                path.unlink()
                continue
            t = pq.read_table(path)
            self._batches[batch_id] = (int(t.schema.metadata[b"max_received_us"]), pl.Series("event_id", t["event_id"]))
        self._evict()

    def __len__(self) -> int:
        return len(self._ids)

    def filter_new(self, events: pl.DataFrame) -> pl.DataFrame:
        """Rows of ``events`` (needs the key column) whose key is neither in the state nor
        earlier in ``events`` itself; the first occurrence wins, input order is kept."""
        first = pl.col(self.key).is_first_distinct()
        if len(self._ids) == 0:
            return events.filter(first)
        return events.filter(first & ~pl.col(self.key).is_in(self._ids.implode()))

    def add(self, batch_id: int, event_ids: pl.Series, max_received_us: int) -> None:
        """Record batch ``batch_id``'s new ids durably (one Parquet file), then expire old batches."""
        table = pa.table({"event_id": event_ids.to_arrow()}).replace_schema_metadata(
            {"max_received_us": str(max_received_us)}
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        write_atomic(self.dir / f"{batch_id}.parquet", sink.getvalue().to_pybytes())
        self._batches[batch_id] = (max_received_us, event_ids.rename("event_id"))
        self._evict()

    def _evict(self) -> None:
        if self._batches:
            horizon = max(m for m, _ in self._batches.values()) - self.ttl_us
            for batch_id in [b for b, (m, _) in self._batches.items() if m < horizon]:
                del self._batches[batch_id]
                (self.dir / f"{batch_id}.parquet").unlink(missing_ok=True)
        series = [ids for _, ids in self._batches.values()]
        self._ids = pl.concat(series) if series else pl.Series("event_id", [], pl.String)
