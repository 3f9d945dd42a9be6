"""Dedup state: the keys seen recently, kept on disk, versioned by batch, with a processing-time TTL.

Like Spark's RocksDB state store, the state lives on disk and the process keeps only a small
index; unlike it, everything is columnar Arrow / numpy, one batch of keys at a time.

**Runs.** The state is a set of *runs* under ``state/dedup/``: Arrow IPC files
``<first>-<last>.arrow``, each holding the new keys of batches ``first..last`` sorted by their
64-bit hash, columns ``h`` (uint64), ``batch_id`` (int64), ``key`` (large_string). They are
uncompressed, so a lookup reads them through a memory map, touching only the pages it
needs; the map is dropped after each lookup, so those pages belong to the OS page cache, not
to the process. The schema metadata ``run`` (JSON) records the ``hash`` function of ``h``,
the merge ``level`` and per batch ``[batch_id, clock_us, batch_ts_us, keys]``.

Batch N writes run ``N-N`` (level 0). Whenever the :data:`FAN_IN` newest runs share a
level they are merged into one run of the next level (size-tiered, as in an LSM tree),
dropping the keys of expired batches, as long as the result holds at most
:data:`MAX_RUN_ROWS` keys (which bounds a merge's memory): a lookup searches a few dozen runs
at most.

**Lookup** (:meth:`filter_new`, per batch, vectorised): the batch's keys are hashed (Polars
``hash`` with a fixed seed); a Bloom filter of every stored hash (:mod:`headwater.stream.bloom`,
the only per-key memory: 2 to 4 bytes a key, at most 64 MiB, rebuilt from the runs as the state
turns over) clears almost every new key at once. The rest (duplicates, and ~0.5 % false
positives) are binary-searched in each run's ``h`` column; a hash found there is confirmed on
the key string and on its batch still being live, so the answer is exact.

**Versions** (protocol of :mod:`headwater.stream.checkpoint`): ``add(N)`` runs once every
batch < N has committed and before ``commits/N``. It merges only runs of batches < N and drops
only keys already expired as of batch N−1, so the state as of the last committed batch C is
on disk at every instant: :meth:`load` (C) deletes the runs of later batches (left by a batch
that never committed) and the inputs of a merge that was killed before it deleted them (they
lie inside the merged run's range), then rebuilds the Bloom filter.

**TTL.** A batch's keys expire once the dedup clock is more than ``ttl`` past that batch's
clock. The clock follows ``received_at`` (the collector's receive time, the same on a
replay), but a clock jump must not expire everything at once: one batch stamped ten years
ahead would otherwise evict the whole state, and a retry of an old event would pass. So
batch N's clock is

    ``clock_N = clamp(max received_at of N, clock_prev, clock_prev + max(0, ts_N − ts_prev))``

with ``ts`` the batch timestamps of the offset log (processing time, also the same on a
replay) and ``prev`` the newest batch in the state: the clock never moves back (so the live
batches are always the newest ones), and moves forward by at most the processing time that
elapsed between the batches (a downtime counts, so the clock catches up with a backlog).
Keys are therefore kept *at least* ``ttl`` of elapsed processing time. (A jump of the
processor's own clock together with the collector's — one host — is not caught here.)

Keys are strings; the processor passes ``(source, event_id)`` encoded as one string, so one
source's message id never drops another source's event. Polars does not promise the same
hash across versions: a run written under another ``hash`` is re-hashed on :meth:`load`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from headwater.files import write_atomic
from headwater.stream.bloom import Bloom
from headwater.stream.checkpoint import CheckpointError

_SEED = 0x6865616477617465  # any fixed value
HASH = f"polars {pl.__version__} hash seed {_SEED:x}"  # what the h column of a run means
FAN_IN = 8  # runs of one level merged at once
MAX_RUN_ROWS = 1 << 19  # keys of a merged run: a merge holds about two copies of it in memory
SCHEMA = pa.schema([("h", pa.uint64()), ("batch_id", pa.int64()), ("key", pa.large_string())])


def _hash(keys: pl.Series) -> np.ndarray:
    return keys.hash(_SEED).to_numpy()


def _positions(table: pa.Table, wanted: np.ndarray) -> np.ndarray:
    """Row numbers of ``table`` (sorted by ``h``) whose ``h`` is in ``wanted`` (sorted, unique)."""
    found, offset = [], 0
    for chunk in table.column("h").chunks:  # consecutive sorted ranges
        h = chunk.to_numpy()  # zero copy, from the memory map
        lo, hi = np.searchsorted(h, wanted, "left"), np.searchsorted(h, wanted, "right")
        n = hi - lo
        if total := int(n.sum()):
            ends = np.cumsum(n)
            found.append(offset + np.repeat(lo, n) + np.arange(total) - np.repeat(ends - n, n))
        offset += len(h)
    return np.concatenate(found) if found else np.empty(0, np.int64)


@dataclass
class _Run:
    first: int
    last: int
    level: int
    rows: int

    @property
    def name(self) -> str:
        return f"{self.first}-{self.last}.arrow"


class DedupState:
    """Recently seen values of column ``key`` (strings) with a processing-time TTL, on disk
    under ``directory``."""

    def __init__(self, directory: Path, ttl: dt.timedelta, key: str = "event_id"):
        self.key = key
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ttl_us = int(ttl.total_seconds() * 1_000_000)
        self._runs: list[_Run] = []  # oldest first; consecutive batch ranges
        self._batches: dict[int, tuple[int, int, int]] = {}  # live batch -> (clock µs, batch ts µs, keys), oldest first
        self._live_keys = 0
        self._bloom = Bloom(0)
        self._bloom_built = 0  # rows in the runs when the filter was built

    # -- files ------------------------------------------------------------------------
    def _read(self, run: _Run) -> pa.Table:
        """``run``'s rows, memory-mapped (the map goes when the table does)."""
        with pa.memory_map(str(self.dir / run.name)) as source:
            return pa.ipc.open_file(source).read_all()

    def _meta(self, path: Path) -> dict:
        with pa.memory_map(str(path)) as source:
            return json.loads(pa.ipc.open_file(source).schema.metadata[b"run"])

    def _write(self, run: _Run, table: pa.Table) -> None:
        """Write ``run`` (``table``: :data:`SCHEMA`, sorted by ``h``) atomically; its batches
        are the live ones in ``run``'s range."""
        batches = [[b, *self._batches[b]] for b in range(run.first, run.last + 1) if b in self._batches]
        meta = {"hash": HASH, "level": run.level, "rows": table.num_rows, "batches": batches}
        table = table.replace_schema_metadata({"run": json.dumps(meta)})
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        write_atomic(self.dir / run.name, sink.getvalue())

    # -- recovery ---------------------------------------------------------------------
    def load(self, upto: int | None) -> None:
        """Load the state as of batch ``upto`` (``None``: empty). Runs of later batches (a
        batch that never committed) and the leftovers of an interrupted merge are deleted;
        :class:`CheckpointError` if a run mixes batches before and after ``upto`` (no merge
        writes one: the checkpoint was damaged)."""
        self._runs, self._batches, self._live_keys = [], {}, 0
        for tmp in self.dir.glob(".*.tmp"):  # a write that a kill interrupted
            tmp.unlink(missing_ok=True)
        self._import_parquet(upto)
        ranges = []
        for path in self.dir.glob("*.arrow"):
            first, last = (int(x) for x in path.stem.split("-"))
            if upto is None or first > upto:
                path.unlink()
            elif last > upto:
                raise CheckpointError(f"dedup state {path} holds batches after the last committed batch {upto}")
            else:
                ranges.append((first, -last, path))
        covered = -1
        for first, neg_last, path in sorted(ranges):
            if -neg_last <= covered:  # an input of the merged run before it: the merge was killed
                path.unlink()
                continue
            covered = -neg_last
            meta = self._meta(path)
            run = _Run(first, -neg_last, meta["level"], meta["rows"])
            for b, clock, ts, n in meta["batches"]:
                self._batches[b] = (clock, ts, n)
            if meta["hash"] != HASH:
                self._rehash(run)
            self._runs.append(run)
        self._batches = dict(sorted(self._batches.items()))
        self._live_keys = sum(n for _, _, n in self._batches.values())
        self._expire()
        self._drop_expired_runs()
        self._build_bloom()

    def _import_parquet(self, upto: int | None) -> None:
        """Turn the state of the earlier layout (``N.parquet`` per batch, clocks in its
        metadata; ``N.snapshot.parquet`` every 100 batches with ``batch_id``, ``clock_us``,
        ``batch_ts_us`` per key) as of ``upto`` into one run, then delete its files."""
        old = {p.name.removesuffix(".parquet"): p for p in self.dir.glob("*.parquet")}
        if not old:
            return
        snapshots = {int(k.removesuffix(".snapshot")): p for k, p in old.items() if k.endswith(".snapshot")}
        base = max((b for b in snapshots if upto is not None and b <= upto), default=-1)
        parts = [pl.read_parquet(snapshots[base])] if base >= 0 else []
        for name, path in old.items():
            if name.isdigit() and base < int(name) <= (upto if upto is not None else -1):
                meta = pq.read_schema(path).metadata
                parts.append(pl.read_parquet(path).with_columns(batch_id=pl.lit(int(name), pl.Int64), clock_us=pl.lit(int(meta[b"clock_us"]), pl.Int64),
                                                                batch_ts_us=pl.lit(int(meta[b"batch_ts_us"]), pl.Int64)))
        if parts:
            state = pl.concat(parts, how="vertical_relaxed").with_columns(h=pl.col("key").hash(_SEED)).sort("h", maintain_order=True)
            for b, clock, ts, n in state.group_by("batch_id", "clock_us", "batch_ts_us").len().sort("batch_id").iter_rows():
                self._batches[b] = (clock, ts, n)
            ids = state.get_column("batch_id")
            run = _Run(ids.min(), ids.max(), 0, state.height)
            self._write(run, pa.table([state["h"].to_arrow(), state["batch_id"].to_arrow(), state["key"].to_arrow().cast(pa.large_string())], schema=SCHEMA))
            self._batches.clear()  # load reads them back from the run
        for path in old.values():
            path.unlink()

    def _rehash(self, run: _Run) -> None:
        table = self._read(run)
        keys = pl.Series(table.column("key"))
        h = _hash(keys)
        order = np.argsort(h, kind="stable")
        self._write(run, pa.table([pa.array(h[order]), table.column("batch_id").take(order), table.column("key").take(order)], schema=SCHEMA))

    # -- lookups ----------------------------------------------------------------------
    def __len__(self) -> int:
        """Live keys."""
        return self._live_keys

    def filter_new(self, events: pl.DataFrame) -> pl.DataFrame:
        """Rows of ``events`` (needs the key column) whose key is neither in the state nor
        earlier in ``events`` itself; the first occurrence wins, input order is kept."""
        keys = events.get_column(self.key)
        keep = keys.is_first_distinct()
        if not self._batches or events.height == 0:
            return events.filter(keep)
        h = _hash(keys)
        maybe = self._bloom.may_contain(h) & keep.to_numpy()
        if not maybe.any():
            return events.filter(keep)
        wanted = np.unique(h[maybe])
        oldest = next(iter(self._batches))  # live batches are the newest ones (the clock never goes back)
        seen = []
        for run in self._runs:
            if run.last < oldest:
                continue
            table = self._read(run)
            rows = _positions(table, wanted)
            if len(rows):
                found = table.select(["batch_id", "key"]).take(rows)
                live = np.asarray(found.column("batch_id")) >= oldest
                seen.append(found.column("key").filter(pa.array(live)))
        if seen:  # one filter, one copy of the batch
            keep &= ~keys.is_in(pl.concat([pl.Series(s) for s in seen]).implode())
        return events.filter(keep)

    # -- updates ----------------------------------------------------------------------
    def _clock(self, max_received_us: int, batch_ts_us: int) -> int:
        """The dedup clock of a new batch (µs; module doc) from its newest ``received_at``
        and its batch timestamp, both µs since epoch."""
        if not self._batches:
            return max_received_us
        clock, ts, _ = self._batches[next(reversed(self._batches))]
        return min(max(max_received_us, clock), clock + max(0, batch_ts_us - ts))

    def add(self, batch_id: int, keys: pl.Series, max_received_us: int, batch_ts_us: int) -> None:
        """Record batch ``batch_id``'s new keys durably (run ``N-N``), after merging and
        expiring the runs of the batches before it (all committed: ``add(N)`` runs after
        ``commits/N-1``). ``max_received_us``: the batch's newest ``received_at``;
        ``batch_ts_us``: its batch timestamp (both µs since epoch)."""
        if batch_id in self._batches:  # a re-run of N in this process: N is not its own "prev"
            self._live_keys -= self._batches.pop(batch_id)[2]
        self._runs = [r for r in self._runs if r.first != batch_id]
        # What is expired now is expired as of batch N-1 (committed): its files may go.
        self._drop_expired_runs()
        self._merge()
        clock = self._clock(max_received_us, batch_ts_us)
        h = _hash(keys)
        # Introsort (deterministic, ~5x a stable sort here): the keys are distinct, so equal
        # hashes mean a collision, and a lookup reads every row of an equal hash anyway.
        order = np.argsort(h)
        self._batches[batch_id] = (clock, batch_ts_us, len(keys))
        self._live_keys += len(keys)
        run = _Run(batch_id, batch_id, 0, len(keys))
        self._write(run, pa.table([pa.array(h[order]), pa.array(np.full(len(keys), batch_id, np.int64)),
                                   keys.to_arrow().cast(pa.large_string()).take(order)], schema=SCHEMA))
        self._runs.append(run)
        self._bloom.add(h)
        self._expire()
        inserted = self._bloom.count - self._bloom_built
        if inserted > max(self._bloom_built, self._bloom.capacity):  # the filter fills up: rebuild it, amortised
            self._build_bloom()

    def _expire(self) -> None:
        """Forget the batches more than the TTL behind the newest one (in memory: their runs
        go once the batch that expired them has committed)."""
        if not self._batches:
            return
        horizon = self._batches[next(reversed(self._batches))][0] - self.ttl_us
        while (oldest := next(iter(self._batches))) is not None and self._batches[oldest][0] < horizon:
            self._live_keys -= self._batches.pop(oldest)[2]  # the newest batch never expires: never empty

    def _drop_expired_runs(self) -> None:
        oldest = next(iter(self._batches), None)
        for run in [r for r in self._runs if oldest is None or r.last < oldest]:
            (self.dir / run.name).unlink(missing_ok=True)
            self._runs.remove(run)

    def _merge(self) -> None:
        """Merge the :data:`FAN_IN` newest runs while they share a level and fit in
        :data:`MAX_RUN_ROWS`; keys of expired batches are left out."""
        while len(self._runs) >= FAN_IN:
            tail = self._runs[-FAN_IN:]
            if len({r.level for r in tail}) > 1 or sum(r.rows for r in tail) > MAX_RUN_ROWS:
                return
            oldest = next(iter(self._batches))
            table = pa.concat_tables([self._read(r) for r in tail])
            table = table.filter(pa.array(np.asarray(table.column("batch_id")) >= oldest))
            table = table.take(np.argsort(np.asarray(table.column("h")), kind="stable"))
            run = _Run(tail[0].first, tail[-1].last, tail[0].level + 1, table.num_rows)
            self._write(run, table)
            for r in tail:  # only once the merged run is durable (load drops leftovers)
                (self.dir / r.name).unlink(missing_ok=True)
            self._runs[-FAN_IN:] = [run]

    def _build_bloom(self) -> None:
        rows = sum(r.rows for r in self._runs)
        bloom = Bloom(rows)
        for run in self._runs:
            for chunk in self._read(run).column("h").chunks:
                bloom.add(chunk.to_numpy())
        self._bloom, self._bloom_built = bloom, rows
