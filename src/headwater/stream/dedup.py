"""Dedup state: event ids seen recently, versioned by batch (Spark's HDFS state-store design).

Each batch N stores the ids it first saw as one Parquet file ``state/dedup/N.parquet``
(Spark's ``N.delta``); the state after batch N is the union of the files of batches
``<= N`` that have not expired. Because files are keyed by batch id, a re-run of batch N
rewrites the same file, and recovery loads exactly "state after the last committed batch"
by ignoring files of later batches.

Snapshots (Spark's ``N.snapshot``, every ``snapshot_every`` batches) keep the number of files
bounded: ``N.snapshot.parquet`` holds every live key with its batch id and that batch's
clock (below). Recovery to batch C loads the newest snapshot ``S <= C`` plus the deltas in
``(S, C]``. When snapshot N is written, batch N is not committed yet — a crash may still send
recovery back to the previous snapshot P — so only deltas ``<= P`` and snapshots ``< P`` are
deleted then: at most ``2 × snapshot_every`` deltas and two snapshots exist at any time.

TTL: a batch's keys expire once the dedup clock is more than ``ttl`` past that batch's clock.
The clock follows ``received_at`` (the collector's receive time, the same on a replay), but a
clock jump must not expire everything at once: one batch stamped ten years ahead would
otherwise evict the whole state, and a retry of an old event would pass. So batch N's clock is

    ``clock_N = clamp(max received_at of N, clock_prev, clock_prev + max(0, ts_N − ts_prev))``

with ``ts`` the batch timestamps of the offset log (processing time, also the same on a
replay) and ``prev`` the newest batch in the state: the clock never moves back, and moves
forward by at most the processing time that elapsed between the batches (a downtime counts,
so the clock catches up with a backlog). Keys are therefore kept *at least* ``ttl`` of elapsed
processing time; memory is bounded by the events received in one TTL. (A jump of the
processor's own clock together with the collector's — one host — is not caught here.)

Keys are strings; the processor passes ``(source, event_id)`` encoded as one string, so one
source's message id never drops another source's event.

Membership is tested on 64-bit hashes first (Polars ``hash`` with a fixed seed, kept in memory
only and recomputed on load, so a hash that changes between Polars versions does no harm):
a batch key whose hash is not in the state is new. The few whose hash *is* in the state
(true duplicates, and collisions with probability ~ n_state / 2**64 per key, ~5e-14 for a
million ids) are confirmed on the strings, against only the state ids sharing their hash:
the answer stays exact, and no per-batch string hash set of the whole state is built.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from headwater.files import write_atomic

SNAPSHOT = ".snapshot"
_SEED = 0x6865616477617465  # any fixed value: hashes never leave the process


def _write(path: Path, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    write_atomic(path, sink.getvalue().to_pybytes())


class DedupState:
    """Recently seen values of column ``key`` (strings) with a processing-time TTL."""

    def __init__(self, directory: Path, ttl: dt.timedelta, key: str = "event_id", snapshot_every: int = 100):
        self.key = key
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ttl_us = int(ttl.total_seconds() * 1_000_000)
        self.snapshot_every = snapshot_every
        self._batches: dict[int, tuple[int, pl.Series]] = {}  # batch -> (clock µs, keys)
        self._ts: dict[int, int] = {}  # batch -> its batch timestamp (µs)
        self._ids = pl.Series("key", [], pl.String)
        self._hashes: dict[int, pl.Series] = {}  # batch -> hashes of its ids (UInt64), in memory only
        self._all_hashes = pl.Series("h", [], pl.UInt64)
        self._expired: list[int] = []  # batches whose delta file goes once the current batch commits

    def _files(self) -> tuple[dict[int, Path], dict[int, Path]]:
        deltas, snapshots = {}, {}
        for path in self.dir.glob("*.parquet"):
            stem = path.name.removesuffix(".parquet")
            if stem.endswith(SNAPSHOT):
                snapshots[int(stem.removesuffix(SNAPSHOT))] = path
            elif stem.isdigit():
                deltas[int(stem)] = path
        return deltas, snapshots

    def load(self, upto: int | None) -> None:
        """Load the state as of batch ``upto`` (``None``: empty); files of later batches,
        left by a batch that never committed, are deleted."""
        self._batches.clear()
        self._ts.clear()
        self._hashes.clear()
        deltas, snapshots = self._files()
        for batch_id, path in [*deltas.items(), *snapshots.items()]:
            if upto is None or batch_id > upto:
                path.unlink()
        base = max((s for s in snapshots if upto is not None and s <= upto), default=-1)
        if base >= 0:
            snap = pl.from_arrow(pq.read_table(snapshots[base]))
            for (batch_id, clock, ts), part in snap.group_by("batch_id", "clock_us", "batch_ts_us"):
                self._batches[batch_id] = (clock, part.get_column("key"))
                self._ts[batch_id] = ts
        for batch_id, path in deltas.items():
            if base < batch_id <= (upto if upto is not None else -1):
                t = pq.read_table(path)
                meta = t.schema.metadata
                self._batches[batch_id] = (int(meta[b"clock_us"]), pl.Series("key", t["key"]))
                self._ts[batch_id] = int(meta[b"batch_ts_us"])
        self._evict()
        self._drop_expired()

    def __len__(self) -> int:
        return len(self._ids)

    def filter_new(self, events: pl.DataFrame) -> pl.DataFrame:
        """Rows of ``events`` (needs the key column) whose key is neither in the state nor
        earlier in ``events`` itself; the first occurrence wins, input order is kept."""
        first = pl.col(self.key).is_first_distinct()
        if len(self._ids) == 0:
            return events.filter(first)
        events = events.filter(first)
        hashes = events.get_column(self.key).hash(_SEED)
        hit = hashes.is_in(self._all_hashes.implode())
        if not hit.any():
            return events
        # Confirm the hash hits on the strings (exact), against the state ids of those hashes.
        suspects = self._ids.filter(self._all_hashes.is_in(hashes.filter(hit).implode()))
        seen = hit & events.get_column(self.key).is_in(suspects.implode())
        return events.filter(~seen)

    def _clock(self, max_received_us: int, batch_ts_us: int) -> int:
        """The dedup clock of a new batch (µs; module doc) from its newest ``received_at``
        and its batch timestamp, both µs since epoch."""
        if not self._batches:
            return max_received_us
        prev = max(self._batches)
        clock = self._batches[prev][0]
        return min(max(max_received_us, clock), clock + max(0, batch_ts_us - self._ts[prev]))

    def add(self, batch_id: int, keys: pl.Series, max_received_us: int, batch_ts_us: int) -> None:
        """Record batch ``batch_id``'s new keys durably (one Parquet file), then expire old
        batches; every ``snapshot_every`` batches also write a snapshot of the whole state.
        ``max_received_us``: the batch's newest ``received_at``; ``batch_ts_us``: its batch
        timestamp (both µs since epoch)."""
        self._drop_expired()  # add(N) runs after commits/N-1: what N-1 expired can go now
        self._batches.pop(batch_id, None)  # a re-run of N in this process: N is not its own "prev"
        clock = self._clock(max_received_us, batch_ts_us)
        table = pa.table({"key": keys.to_arrow()}).replace_schema_metadata(
            {"clock_us": str(clock), "batch_ts_us": str(batch_ts_us)}
        )
        _write(self.dir / f"{batch_id}.parquet", table)
        self._batches[batch_id] = (clock, keys.rename("key"))
        self._ts[batch_id] = batch_ts_us
        self._hashes.pop(batch_id, None)
        self._evict()
        if batch_id and batch_id % self.snapshot_every == 0:
            self._snapshot(batch_id)

    def _snapshot(self, batch_id: int) -> None:
        parts = [
            pl.DataFrame({"key": ids}).with_columns(
                batch_id=pl.lit(b, pl.Int64), clock_us=pl.lit(m, pl.Int64), batch_ts_us=pl.lit(self._ts[b], pl.Int64)
            )
            for b, (m, ids) in sorted(self._batches.items())
        ]
        _write(self.dir / f"{batch_id}{SNAPSHOT}.parquet", pl.concat(parts).to_arrow())
        deltas, snapshots = self._files()
        previous = max((s for s in snapshots if s < batch_id), default=None)
        if previous is not None:
            for b, path in deltas.items():
                if b <= previous:
                    path.unlink(missing_ok=True)
            for s, path in snapshots.items():
                if s < previous:
                    path.unlink(missing_ok=True)

    def _evict(self) -> None:
        # The delta files of expired batches are deleted only once the batch that expired
        # them has committed: if it crashes, recovery to the batch before needs them.
        if self._batches:
            horizon = max(m for m, _ in self._batches.values()) - self.ttl_us
            for batch_id in [b for b, (m, _) in self._batches.items() if m < horizon]:
                del self._batches[batch_id]
                self._ts.pop(batch_id, None)
                self._expired.append(batch_id)
        for batch_id in self._hashes.keys() - self._batches.keys():
            del self._hashes[batch_id]
        for batch_id, (_, ids) in self._batches.items():
            if batch_id not in self._hashes:
                self._hashes[batch_id] = ids.hash(_SEED)
        order = sorted(self._batches)  # ids and hashes line up position by position
        self._ids = pl.concat([self._batches[b][1] for b in order], rechunk=False) if order else pl.Series("key", [], pl.String)
        self._all_hashes = pl.concat([self._hashes[b] for b in order], rechunk=False) if order else pl.Series("h", [], pl.UInt64)

    def _drop_expired(self) -> None:
        for batch_id in self._expired:
            (self.dir / f"{batch_id}.parquet").unlink(missing_ok=True)
        self._expired.clear()
