"""Lake upkeep: when to compact small files, cluster partitions and expire old rows.

:class:`~headwater.lake.store.Lake` knows *how* (delta-rs OPTIMIZE, ZORDER, DELETE, VACUUM);
this module decides *when*, from the Delta log's add actions (file sizes and partition
values; no object-store listing, no data read).

* **Small files.** A file under half of ``lake.target_file_mb`` is *small* (two of them
  always fit in one target-size file, so a compaction can merge them). A partition (``ds``;
  the whole table when unpartitioned) holding ``lake.compact_min_files`` small files is
  *due*: OPTIMIZE bin-packs its small files into target-size ones (Delta auto compaction's
  rule, ``minNumFiles`` = 50 by default). :class:`FileCounter` applies it after each
  micro-batch of a writer (the stream) without reading the log per commit;
  :func:`maintain` applies it to every table (``headwater maintain``).
* **Clustering.** Each closed ``ds`` partition (before today, UTC) of the tables in
  :data:`CLUSTER_BY` whose files changed since it was last clustered is rewritten sorted by
  the table's columns, so a filter on one event name of one day reads a fraction of the
  row groups (``bench/cluster.py``).
* **Retention.** ``realtime.*`` windows that ended longer ago than
  ``lake.realtime_retention_days`` are deleted (the seconds-fresh tables; gold keeps the history).
* **Vacuum.** Files superseded longer ago than ``lake.vacuum_retention_h`` are deleted.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from headwater.files import write_atomic
from headwater.lake import catalog
from headwater.lake.store import Lake
from headwater.settings import LakeSettings

MiB = 1 << 20

# A sort, not delta-rs' Z-order: Z-order interleaves the bits of the columns' byte
# encodings, so event names sharing a prefix ("Order Completed" / "Order Refunded",
# "event_0".."event_7") end up ordered by person_id instead (measured: 8,000 rows of 8 such
# names in 16 row groups, every row group still held every name). The queries filter on
# event_name first; a sort by (event_name, person_id) puts one name in one run of row groups
# (bench/cluster.py). Its price: a replaceWhere commit (dataChange=true) that a concurrent
# write to that day fails; silver is written by the batch alone, closed days only by a
# restatement. Only silver.events: the models and the queries read silver. bronze.events is
# read whole per day by the silver model, and rewriting its closed days would make the
# late-data sensor (which diffs bronze's file paths) restate them.
CLUSTER_BY: dict[str, tuple[str, ...]] = {"silver.events": ("event_name", "person_id")}
ROW_GROUP_ROWS = 128 * 1024  # of clustered files: a selective filter skips row groups, not only files

Key = dt.date | None
"""A partition: its ``ds`` (every partitioned table of the catalog is partitioned by ``ds``
alone), or ``None`` for an unpartitioned table."""


@dataclass(frozen=True)
class Policy:
    """``min_files``: small files that make a partition due; ``target_bytes``: size of the
    files compaction and clustering write; a file under half of it is small."""

    min_files: int
    target_bytes: int

    @classmethod
    def of(cls, settings: LakeSettings) -> Policy:
        return cls(settings.compact_min_files, settings.target_file_mb * MiB)

    @property
    def small_bytes(self) -> int:
        return self.target_bytes // 2


def partitioned(table: str) -> bool:
    return bool(catalog.spec(table).partition_by)


def partitions(table: str, data: pa.Table) -> set[Key]:
    """The partitions rows ``data`` of ``table`` land in."""
    return set(pc.unique(data.column("ds")).to_pylist()) if partitioned(table) else {None}


def small_files(lake: Lake, table: str, small_bytes: int) -> dict[Key, int]:
    """``{partition: files under small_bytes}`` of ``table``'s current snapshot (partitions
    without one are absent), from the Delta log."""
    adds = lake.add_actions(table)
    adds = adds.filter(pc.less(adds.column("size_bytes"), small_bytes))
    if not partitioned(table):
        return {None: adds.num_rows} if adds.num_rows else {}
    counts = adds.group_by("partition.ds").aggregate([("path", "count")])
    return dict(zip(counts.column("partition.ds").cast(pa.date32()).to_pylist(), counts.column("path_count").to_pylist()))


def _days(keys: Iterable[Key]) -> list[dt.date] | None:
    """delta-rs partition selection of ``keys``: the days, or ``None`` (whole table)."""
    days = sorted(k for k in keys if k is not None)
    return days or None


class FileCounter:
    """Small files per partition of the tables one writer appends to (the stream), kept
    without reading the Delta log per commit.

    Each :meth:`appended` counts one more small file in every partition the data lands in
    (a micro-batch writes one file per partition; a MERGE rewrites some and adds one). Only
    when that estimate reaches ``min_files`` is the log read (:func:`small_files`, a few ms
    per thousand files) to confirm it, and again after a compaction; a table's first check
    reads it once. The estimate may run high (a MERGE also removes files, ``headwater
    maintain`` compacts too): it then costs one more log read, never a missed compaction.
    Thread-safe (sinks commit on a pool)."""

    def __init__(self, lake: Lake, policy: Policy):
        self.lake = lake
        self.policy = policy
        self._counts: dict[str, dict[Key, int]] = {}
        self._appended: dict[str, set[Key]] = {}  # partitions appended to since the last due()
        self._lock = threading.Lock()

    def appended(self, table: str, data: pa.Table) -> None:
        """Record a commit of ``data`` to ``table``."""
        keys = partitions(table, data)
        with self._lock:
            self._appended.setdefault(table, set()).update(keys)
            counts = self._counts.get(table)
            if counts is not None:
                for k in keys:
                    counts[k] = counts.get(k, 0) + 1

    def due(self, min_files: int | None = None) -> dict[str, list[Key]]:
        """The partitions appended to since they were last checked or compacted that hold
        at least ``min_files`` (default: the policy's) small files, confirmed from the log:
        ``{table: partitions}``. They stay candidates until :meth:`compact` succeeds."""
        need = min_files or self.policy.min_files
        with self._lock:
            appended, self._appended = self._appended, {}
        out: dict[str, list[Key]] = {}
        for table, keys in sorted(appended.items()):
            counts = self._counts.get(table)
            if counts is None or any(counts.get(k, 0) >= need for k in keys):
                counts = small_files(self.lake, table, self.policy.small_bytes)
                with self._lock:
                    self._counts[table] = counts
            hot = [k for k in keys if counts.get(k, 0) >= need]
            if hot:
                out[table] = sorted(hot, key=lambda k: (k is not None, k))
                with self._lock:
                    self._appended.setdefault(table, set()).update(hot)
        return out

    def compact(self, table: str, keys: list[Key]) -> dict[str, int]:
        """Compact ``keys`` of ``table`` (:meth:`Lake.compact`) and re-read its counts."""
        try:
            metrics = self.lake.compact(table, _days(keys), self.policy.target_bytes)
            with self._lock:
                self._appended.get(table, set()).difference_update(keys)
            return metrics
        finally:
            counts = small_files(self.lake, table, self.policy.small_bytes)
            with self._lock:
                self._counts[table] = counts


@dataclass
class TableUpkeep:
    """What :func:`maintain` did to one table: data files in its snapshot before and after,
    rows deleted by retention, partitions compacted and clustered, and the superseded files
    vacuumed (``paths``, relative to the table)."""

    table: str
    files_before: int
    files_after: int = 0
    rows_deleted: int = 0
    partitions_compacted: int = 0
    partitions_clustered: int = 0
    paths: list[str] = field(default_factory=list)

    @property
    def files_vacuumed(self) -> int:
        return len(self.paths)


def fingerprint(paths: Iterable[str]) -> str:
    """A partition's file set as 16 hex digits: it changes whenever a commit adds or removes a file."""
    return hashlib.blake2b("\n".join(sorted(paths)).encode(), digest_size=8).hexdigest()


def _fingerprints(adds: pa.Table) -> dict[dt.date, str]:
    days = adds.column("partition.ds").cast(pa.date32()).to_pylist()
    by_day: dict[dt.date, list[str]] = {}
    for day, path in zip(days, adds.column("path").to_pylist()):
        by_day.setdefault(day, []).append(path)
    return {day: fingerprint(paths) for day, paths in by_day.items()}


CLUSTER_STATE = "maintain/clustered.json"  # under the installation's home: which partitions are clustered


class ClusterState:
    """Which partitions are clustered: ``{table: {ds: fingerprint of its files right after
    clustering}}`` in a JSON file. A partition whose files differ (a write, a compaction, a
    restatement) is clustered again; a lost file only means clustering everything once more."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, dict[str, str]] = {}
        if path is not None and path.exists():
            self.data = json.loads(path.read_text())

    def stale(self, table: str, adds: pa.Table, before: dt.date) -> list[dt.date]:
        """Days before ``before`` whose files are not those this state recorded."""
        done = self.data.get(table, {})
        return sorted(d for d, fp in _fingerprints(adds).items() if d < before and done.get(d.isoformat()) != fp)

    def record(self, table: str, adds: pa.Table, days: list[dt.date]) -> None:
        prints = _fingerprints(adds)
        self.data.setdefault(table, {}).update({d.isoformat(): prints[d] for d in days if d in prints})
        if self.path is not None:
            write_atomic(self.path, json.dumps(self.data, sort_keys=True, indent=1).encode())


def maintain(
    lake: Lake, settings: LakeSettings, now: dt.datetime, state: ClusterState | None = None, tables: list[str] | None = None
) -> list[TableUpkeep]:
    """Upkeep of ``tables`` (default: every existing table), in this order per table:
    retention of ``realtime.*`` (rows whose ``window_end`` is older than ``now`` minus
    ``settings.realtime_retention_days``), clustering of the closed days of the
    :data:`CLUSTER_BY` tables that ``state`` does not record as clustered, compaction of
    the other due partitions (:class:`Policy`), then vacuum (``settings.vacuum_retention_h``).

    Each step is its own commit: an interrupted run leaves consistent tables, and running
    it again finishes the work. A concurrent writer is safe: the stream's appends never
    conflict with these commits, and its MERGEs retry on a conflict
    (:class:`~headwater.lake.store.CommitConflictError`); a batch build overwriting a day
    being clustered makes one of the two fail with that error (run it again). Raises what
    :class:`Lake` raises."""
    policy = Policy.of(settings)
    cutoff = now - dt.timedelta(days=settings.realtime_retention_days)
    state = state or ClusterState(None)
    out = []
    for table in tables if tables is not None else lake.tables():
        report = TableUpkeep(table, files_before=len(lake.add_actions(table)))
        if table.startswith("realtime.") and "window_end" in lake.schema(table).names:
            report.rows_deleted = lake.delete(table, f"window_end < '{cutoff.isoformat()}'")
        due = [k for k, n in small_files(lake, table, policy.small_bytes).items() if n >= policy.min_files]
        if table in CLUSTER_BY:
            for day in state.stale(table, lake.add_actions(table), now.date()):  # one day per commit: resumable
                lake.cluster(table, CLUSTER_BY[table], [day], target_bytes=policy.target_bytes, row_group_rows=ROW_GROUP_ROWS)
                state.record(table, lake.add_actions(table), [day])
                report.partitions_clustered += 1
            due = [k for k in due if k is None or k >= now.date()]  # the closed ones were just clustered
        if due:
            lake.compact(table, _days(due), policy.target_bytes)
            report.partitions_compacted = len(due)
        report.files_after = len(lake.add_actions(table))
        report.paths = lake.vacuum(table, settings.vacuum_retention_h)
        out.append(report)
    return out
