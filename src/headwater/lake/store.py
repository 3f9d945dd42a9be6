"""How the lake's tables are stored: :class:`Lake`, the only code that reads and writes a table.

A ``Lake`` is a :class:`headwater.lake.location.Location`, the only code that locates a
table: ``"layer.table"`` (checked against the catalog) lives at ``<root>/<layer>/<table>``,
a local path or an object-store URI. Partition columns come from the table's declaration.

Two write paths carry the platform's guarantees:

* :meth:`Lake.append_once` — the stream sink. Each micro-batch commits together with a Delta
  application transaction (``txn`` action: ``app_id`` + batch id, Delta protocol
  "Transaction Identifiers"), so a replayed batch can ask :meth:`Lake.committed_batch`
  whether its commit already happened and skip it: the sink is idempotent.
  :meth:`Lake.upsert_once` is the same for update-mode aggregates (a MERGE carrying the txn),
  :meth:`Lake.merge` the general MERGE (the CDC dimensions).
* :meth:`Lake.overwrite_partitions` — the batch layer. ``ds`` partitions ``start..end`` are
  replaced in one commit (``replaceWhere`` semantics); re-running a range never appends
  twice, and rows outside the range are refused.

Errors: delta-rs errors become the :mod:`headwater.errors` classes — a missing table
:class:`NotFoundError`, data that does not fit the table :class:`InvalidInputError` naming the
column, a lost commit race :class:`TransientError`, a full disk :class:`TransientError`
saying "disk full (ENOSPC)", a protocol the reader lacks :class:`ConflictError` — with the
original as ``__cause__``. A failed write or compaction never corrupts a table: a Delta
commit is the atomic creation of one log file, so what a failure leaves behind are data
files no commit references, which :meth:`Lake.vacuum` deletes.

Upkeep (:mod:`headwater.lake.maintenance` decides when): :meth:`Lake.compact` merges a
partition's small files, :meth:`Lake.cluster` rewrites partitions sorted, :meth:`Lake.delete`
removes rows by predicate.

Retention: :meth:`Lake.vacuum` deletes the files that commits superseded (MERGE, OPTIMIZE,
overwrites) once they have been unreferenced for longer than the retention; time travel to
any version newer than that keeps working.

Snapshots: :meth:`Lake.dataset` keeps, per table, the pyarrow dataset of the last version it
opened, and reuses it while the table's version is unchanged (a long-lived reader pays for
a table's log and file list once per commit, not once per query). Keep one ``Lake`` per
process to share that cache; it is thread-safe.

Pinned reads: inside :meth:`Lake.pinned` (a batch build) each table is opened once, and read at
the version this ``Lake`` first saw or last wrote, without asking the store again: answers of
:meth:`Lake.exists`, the open handles and their file lists are kept for the scope and
updated by the scope's own writes only. A build so pays one log listing per table instead of
one per question (~240 on a daily build, ~0.5 ms each once a table has months of commits).
"""

from __future__ import annotations

import datetime as dt
import errno
import math
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, DeltaProtocolError, SchemaMismatchError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

from headwater.errors import ConflictError, InvalidInputError, NotFoundError, TransientError
from headwater.lake import catalog, objectstore
from headwater.lake.location import Location

if TYPE_CHECKING:
    import pyarrow.dataset as pads  # ~0.5 s to import (pandas too, where importable): only where a table is read

    from headwater.config import Home


class Lake(Location):
    """The tables under one root URI (``settings.lake_root``): a :class:`Location` (root,
    storage options, where each table lives) that reads and writes them.

    ``keep_open``: keep one
    ``DeltaTable`` per table and bring it up to date before each use (``update_incremental``, ~1 ms) instead of opening the
    table anew (~20 ms: its log since the last checkpoint is replayed, twice per append): for
    a writer committing every second, such as the stream. Its handles must not be used by two
    threads for one table at once."""

    def __init__(self, root: str | Path, storage_options: dict[str, str] | None = None, keep_open: bool = False):
        super().__init__(root, storage_options)
        self._lock = threading.Lock()
        self._snapshots: dict[str, tuple[DeltaTable, int, pads.Dataset]] = {}
        self._handles: dict[str, DeltaTable] | None = {} if keep_open else None
        self._pin: _Pin | None = None

    def exists(self, table: str) -> bool:
        """Whether ``table`` has a Delta log (at least one commit). An object store that cannot
        be reached or refuses the credentials raises (:func:`_errors`), never answers no.
        Inside :meth:`pinned`, the first answer holds until this ``Lake`` writes the table."""
        pin = self._pin
        if pin is None:
            with _errors(table):
                return DeltaTable.is_deltatable(self.uri(table), self.storage_options)
        if table not in pin.exists:  # opened now (one log listing), as it will be read anyway
            try:
                with _errors(table):
                    self._open(table)
                pin.exists[table] = True
            except NotFoundError:
                pin.exists[table] = False
        return pin.exists[table]

    @contextmanager
    def pinned(self) -> Iterator[Lake]:
        """A scope in which every table is read at one version: the version current when the
        scope first used it, or the one this ``Lake``'s own writes in the scope made. Within
        it a table is opened once (its handle kept, as with ``keep_open``, but not brought up
        to date before each use), and :meth:`exists`, :meth:`add_actions` and
        :meth:`dataset` answer from what the scope already knows; commits of other writers
        (the stream appending to bronze) are seen by the next scope. For a sequence of
        operations that must see one consistent state of the lake and its own writes: a
        batch build (:func:`headwater.models.run.build`). Several threads may use it for
        different tables (the build runs two models at once); a table is written by one
        thread at a time, and read only once its writer is done. Nested scopes are the outer one."""
        if self._pin is not None:
            yield self
            return
        outer = self._handles
        self._handles = {} if outer is None else outer
        self._pin = _Pin(stale=set(self._handles))  # handles opened before: bring up to date once
        try:
            yield self
        finally:
            self._pin, self._handles = None, outer

    def tables(self) -> list[str]:
        """Names of every existing table, sorted: the fixed tables of the catalog that exist,
        and the members of each family found in its layer directory (``silver.evt_*``,
        ``bronze.cdc_*``, ``realtime.*``, …). Directories that are not Delta tables, or whose
        names are not declared, are ignored."""
        found = {t.name for t in catalog.TABLES if not t.is_family and self.exists(t.name)}
        for layer in sorted({t.layer for t in catalog.TABLES if t.is_family}):
            for name in self._listdir(layer):
                table = f"{layer}.{name}"
                if table not in found and catalog.declared(table) and self.exists(table):
                    found.add(table)
        return sorted(found)

    def _listdir(self, layer: str) -> list[str]:
        if self._local:
            path = Path(self.root.removeprefix("file://")) / layer
            return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
        fs, base = self._remote()
        with _errors(f"lake root {self.root}"):
            infos = fs.get_file_info(pafs.FileSelector(f"{base}/{layer}", allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def _open(self, table: str, version: int | None = None) -> DeltaTable:
        if self._handles is None or version is not None:
            return DeltaTable(self.uri(table), version=version, storage_options=self.storage_options)
        pin = self._pin
        handle = self._handles.get(table)
        if handle is not None:
            if pin is not None and table not in pin.stale:
                return handle
            try:
                handle.update_incremental()
                if pin is not None:
                    pin.stale.discard(table)
                return handle
            except Exception:  # noqa: BLE001 - the table was deleted or replaced under it: open it anew
                del self._handles[table]
        handle = self._handles[table] = DeltaTable(self.uri(table), storage_options=self.storage_options)
        if pin is not None:
            pin.stale.discard(table)
        return handle

    def _reload(self, table: str) -> None:
        """Inside :meth:`pinned`: this ``Lake`` committed (or tried to) to ``table`` other
        than through an operation that brings its kept handle up to date (delta-rs' write
        and MERGE on a handle do): the next use asks the store again."""
        if self._pin is not None:
            self._pin.exists.pop(table, None)
            self._pin.stale.add(table)

    # -- writing ----------------------------------------------------------------------
    def _write(self, table: str, data: pa.Table | pa.RecordBatchReader, **kw: Any) -> None:
        uri = self.uri(table)
        with _errors(table, lambda: self._schema_if_exists(table), data):
            if self._handles is not None and self.exists(table):
                write_deltalake(self._open(table), data, **kw)  # brings the handle up to date
            else:
                try:
                    write_deltalake(uri, data, storage_options=self.storage_options, **kw)
                finally:  # created, or perhaps by a writer it raced
                    self._reload(table)

    def append(self, table: str, data: pa.Table) -> None:
        """Append ``data`` in one commit (created on first use, partitioned as declared)."""
        self._write(table, data, mode="append", partition_by=self._partition_by(table))

    def append_once(self, table: str, data: pa.Table, *, app_id: str, batch_id: int, writer_properties: WriterProperties | None = None) -> None:
        """Append ``data`` in one commit carrying txn ``(app_id, batch_id)``; Parquet written
        with ``writer_properties`` (delta-rs defaults if ``None``).

        Callers recovering from a crash check :meth:`committed_batch` first; this method
        itself does not re-check, so the common path costs one commit (~50 ms)."""
        self._write(table, data, mode="append", partition_by=self._partition_by(table), commit_properties=_txn(app_id, batch_id),
                    writer_properties=writer_properties)

    def checkpoint(self, table: str) -> None:
        """Write a Delta checkpoint of ``table``'s current version (Delta protocol,
        "Checkpoints"): opening it then replays its log from there. A checkpoint is of one
        version, so a writer committing meanwhile is not disturbed. :class:`TransientError` if
        it cannot be written (the table is unchanged: only its next open is slower)."""
        try:
            self._open(table).create_checkpoint()  # no new version: the handle stays current
        except (DeltaError, OSError) as e:
            raise TransientError(f"{table}: Delta checkpoint: {str(e).splitlines()[0]}", field=table) from e

    def committed_batch(self, table: str, app_id: str) -> int | None:
        """The last batch id committed by ``app_id`` into ``table``; ``None`` if none (or no table)."""
        if not self.exists(table):
            return None
        with _errors(table):
            return self._open(table).transaction_version(app_id)

    def upsert_once(
        self, table: str, data: pa.Table | pa.RecordBatchReader, keys: tuple[str, ...], *, app_id: str, batch_id: int,
        since: tuple[str, dt.datetime] | None = None,
    ) -> None:
        """Upsert ``data`` into the (unpartitioned) table on ``keys`` in one commit carrying txn
        ``(app_id, batch_id)``: a Delta MERGE (update when matched, insert when not), the sink of
        update-mode streaming aggregates. ``data`` has the table's columns plus ``_delete``
        (bool): rows with ``_delete`` true remove the matching row instead. Keys compare with
        ``IS NOT DISTINCT FROM`` so null group values match. ``data`` must hold each key once.
        Creates the table (from the non-deleted rows) on first use. Readers are never blocked:
        they keep reading the snapshot they opened (Delta optimistic concurrency).
        ``since=(column, t)``: the caller guarantees no row of ``data`` matches a target row with
        ``column < t``; files holding only such rows are skipped by their statistics. ``data``
        may be a ``RecordBatchReader`` when the table exists (delta-rs streams the source)."""
        if not self.exists(table):
            keep = data.filter(pc.invert(data.column("_delete"))).drop_columns(["_delete"])
            self.append_once(table, keep, app_id=app_id, batch_id=batch_id)
            return
        on = " AND ".join(f"(t.{_q(k)} IS NOT DISTINCT FROM s.{_q(k)})" for k in keys)
        if since is not None:
            on = f"t.{_q(since[0])} >= '{since[1].isoformat()}' AND {on}"
        values = {_q(c): f"s.{_q(c)}" for c in data.schema.names if c != "_delete"}
        self.merge(table, data, on, app_id=app_id, batch_id=batch_id, update=values, insert=values,
                   delete_if="s._delete", update_if="NOT s._delete", insert_if="NOT s._delete")

    def merge(
        self, table: str, data: pa.Table | pa.RecordBatchReader, on: str, *, app_id: str, batch_id: int,
        update: dict[str, str] | None = None, insert: dict[str, str] | None = None,
        delete_if: str | None = None, update_if: str | None = None, insert_if: str | None = None,
    ) -> None:
        """A Delta MERGE of ``data`` (alias ``s``) into the existing ``table`` (alias ``t``) on
        the SQL predicate ``on``, in one commit carrying txn ``(app_id, batch_id)``.

        Clauses, in order: matched rows satisfying ``delete_if`` are deleted; matched rows
        (satisfying ``update_if``) get ``update`` (``{target column: SQL expression}``);
        unmatched rows (satisfying ``insert_if``) are inserted as ``insert``. A ``None``
        mapping leaves its clause out. :class:`NotFoundError` if ``table`` does not exist
        (create it with :meth:`append_once`)."""
        with _errors(table, lambda: self._schema_if_exists(table), data):
            builder = self._open(table).merge(data, on, source_alias="s", target_alias="t",
                                              commit_properties=_txn(app_id, batch_id))
            if delete_if is not None:
                builder = builder.when_matched_delete(delete_if)
            if update is not None:
                builder = builder.when_matched_update(update, update_if)
            if insert is not None:
                builder = builder.when_not_matched_insert(insert, insert_if)
            builder.execute()  # brings the handle up to date

    def overwrite_partitions(self, table: str, data: pa.Table, start: dt.date, end: dt.date) -> None:
        """Atomically replace every ``ds`` partition in ``[start, end]`` (inclusive) with ``data``
        (new columns are added to the table's schema).

        ``data`` must only hold rows with ``start <= ds <= end``; otherwise
        :class:`InvalidInputError` is raised and nothing is written."""
        self._write(
            table, data, mode="overwrite", partition_by=self._partition_by(table),
            predicate=f"ds >= '{start.isoformat()}' AND ds <= '{end.isoformat()}'",
            schema_mode="merge" if self.exists(table) else None,
        )

    def replace_table(
        self, table: str, data: pa.Table | pa.RecordBatchReader, *, app_id: str | None = None, batch_id: int | None = None
    ) -> None:
        """Atomically replace the whole table with ``data``, schema included: one Delta
        ``WRITE`` commit in mode ``Overwrite`` (older versions stay readable), carrying txn
        ``(app_id, batch_id)`` when given."""
        self._write(
            table, data, mode="overwrite", partition_by=self._partition_by(table),
            schema_mode="overwrite" if self.exists(table) else None,
            commit_properties=_txn(app_id, batch_id) if app_id is not None else None,
        )

    def commit_files(
        self, table: str, adds: Sequence[AddAction], schema: pa.Schema, *, mode: str = "append",
        days: tuple[dt.date, dt.date] | None = None, app_id: str | None = None, batch_id: int | None = None,
    ) -> None:
        """Commit data files already written into ``table``'s directory by a writer outside
        delta-rs (Spark executors: :mod:`headwater.spark_delta`) as ONE Delta transaction
        (delta-rs ``create_write_transaction``), carrying txn ``(app_id, batch_id)`` when given.
        Creates the table (partitioned as declared) if it does not exist.

        ``adds``: the files' add actions (path relative to the table, size, partition values,
        statistics). ``schema``: the files' Arrow schema, partition columns included.
        ``mode="append"`` adds them (the table keeps its schema); ``mode="overwrite"`` with
        ``days=(start, end)`` replaces the ``ds`` partitions ``[start, end]`` — the
        semantics of :meth:`overwrite_partitions`: new columns of ``schema`` are added, and a
        file with a ``ds`` outside the range is refused (:class:`InvalidInputError`, nothing
        committed); ``mode="overwrite"`` without ``days`` replaces the whole table, schema
        included (:meth:`replace_table`). Files of ``adds`` that end up uncommitted are
        unreferenced and go with :meth:`vacuum`."""
        if mode not in ("append", "overwrite") or (days is not None and mode != "overwrite"):
            raise InvalidInputError(f"mode: 'append', or 'overwrite' (with or without days), got {mode!r} with days={days}", field="mode")
        filters = None
        if days is not None:
            start, end = (d.isoformat() for d in days)
            outside = sorted({v for a in adds if not (start <= (v := str(a.partition_values.get("ds"))) <= end)})
            if outside:
                raise InvalidInputError(f"{table}: rows with ds {outside[:3]} outside {start}..{end}", field="ds")
            filters = [("ds", ">=", start), ("ds", "<=", end)]
        props = _txn(app_id, batch_id) if app_id is not None else None
        partition_by = self._partition_by(table) or []
        with _errors(table):
            if not self.exists(table):
                create_table_with_add_actions(self.uri(table), DeltaSchema.from_arrow(schema), list(adds), mode="error", partition_by=partition_by,
                                              storage_options=self.storage_options, commit_properties=props)
                self._reload(table)
                return
            have = pa.schema(self._open(table).schema().to_arrow())
            # delta-rs takes ``schema`` as the table's new schema: append keeps the table's,
            # a partition overwrite merges new columns in (Delta adds columns, never retypes).
            if mode == "append":
                schema = have
            elif days is not None:
                schema = pa.schema([*have, *(f for f in schema if f.name not in have.names)])
            self._open(table).create_write_transaction(list(adds), mode, schema, partition_by, filters, commit_properties=props)
        self._reload(table)

    def compact(self, table: str, days: list[dt.date] | None = None, target_bytes: int | None = None) -> dict[str, int]:
        """Rewrite the table's files smaller than ``target_bytes`` (default: the table's
        ``delta.targetFileSize``, 100 MiB) into files of about that size (delta-rs OPTIMIZE
        bin-packing, a commit of its own with ``dataChange=false``); only the ``ds``
        partitions in ``days`` when given. Returns ``{"files_removed", "files_added"}``. A
        table that does not exist is left alone (zeros).

        A concurrent blind append (the stream's sink) never conflicts with it; a concurrent
        MERGE, DELETE or overwrite of the same files makes one of the two commits fail
        (:class:`CommitConflictError`)."""
        if not self.exists(table):
            return {"files_removed": 0, "files_added": 0}
        with _errors(table):
            metrics = self._open(table).optimize.compact(partition_filters=_days_filter(days), target_size=target_bytes)
        self._reload(table)
        return {"files_removed": metrics["numFilesRemoved"], "files_added": metrics["numFilesAdded"]}

    def cluster(
        self, table: str, columns: tuple[str, ...], days: list[dt.date], *,
        target_bytes: int | None = None, row_group_rows: int | None = None,
    ) -> dict[str, int]:
        """Rewrite each ``ds`` partition in ``days`` sorted by ``columns``, one commit per day,
        into files of about ``target_bytes`` with row groups of at most ``row_group_rows``
        rows: a filter on the leading column then reads a few row groups, skipping the rest
        by their Parquet statistics. DuckDB sorts, spilling to a temporary directory beyond
        its memory limit. Returns ``{"files_removed", "files_added"}`` over all days.

        Each commit is a replaceWhere overwrite of the day based on the version that was
        read, so a concurrent write to that day makes it fail (:class:`CommitConflictError`)
        rather than be lost; writes to other days do not conflict."""
        import tempfile

        import duckdb

        removed = added = 0
        props = WriterProperties(max_row_group_size=row_group_rows) if row_group_rows else None
        order = ", ".join(_q(c) for c in columns)
        for day in days:
            with _errors(table), tempfile.TemporaryDirectory(prefix="headwater-sort-") as spill:
                handle = self._open(table)
                n = _files_of(pa.table(handle.get_add_actions(flatten=True)), day)
                if n == 0:
                    continue
                schema = pa.schema(handle.schema().to_arrow())
                con = duckdb.connect(config={"temp_directory": spill})
                try:
                    con.execute("SET TimeZone = 'UTC'")
                    con.register("part", self._snapshot(handle, table))
                    rows = con.sql(f"SELECT * FROM part WHERE ds = $day ORDER BY {order}", params={"day": day}).to_arrow_reader()
                    conformed = pa.RecordBatchReader.from_batches(schema, (b.select(schema.names).cast(schema) for b in rows))
                    write_deltalake(handle, conformed, mode="overwrite", partition_by=self._partition_by(table),
                                    predicate=f"ds = '{day.isoformat()}'", target_file_size=target_bytes, writer_properties=props)
                finally:
                    con.close()
                removed += n
                added += _files_of(self.add_actions(table), day)
        return {"files_removed": removed, "files_added": added}

    def delete(self, table: str, predicate: str) -> int:
        """Delete the rows matching the SQL ``predicate`` (DataFusion dialect, e.g.
        ``"window_end < '2024-03-01T00:00:00+00:00'"``) in one commit; return how many.
        Files holding only matching rows are dropped without being read (a predicate on the
        partition columns never rewrites a file); the others are rewritten without those
        rows. :class:`NotFoundError` if the table does not exist, :class:`InvalidInputError`
        for a predicate delta-rs cannot plan."""
        with _errors(table):
            metrics = self._open(table).delete(predicate)
        self._reload(table)
        return int(metrics.get("num_deleted_rows") or 0)

    def vacuum(self, table: str, retention_h: float) -> list[str]:
        """Delete the files of ``table`` that no version newer than ``retention_h`` hours
        references (delta-rs VACUUM, ``full``: files never committed — left by a crashed or
        failed write — go too once older than the retention), and return their paths
        (relative to the table), sorted. Versions younger than the retention stay readable
        (time travel); older ones may lose files. A table that does not exist: ``[]``.

        The retention is the setting ``lake.vacuum_retention_h``, even below Delta's own
        ``delta.deletedFileRetentionDuration`` (default a week): the setting is the policy.
        It must exceed the longest write, or that write's not-yet-committed files could go.
        delta-rs takes whole hours: a fraction is rounded up (keeping more, never less).
        :class:`InvalidInputError` for a negative retention."""
        if retention_h < 0:
            raise InvalidInputError(f"retention_h: must be >= 0 hours, got {retention_h}", field="retention_h")
        if not self.exists(table):
            return []
        options = {"retention_hours": math.ceil(retention_h), "enforce_retention_duration": False, "full": True}
        uri = self.uri(table)
        with _errors(table):
            # delta-rs reports every expired tombstone, including files an earlier vacuum
            # already deleted (tombstones outlive their files until a log checkpoint expires
            # them), and in full mode as absolute paths: what is removed is what exists now.
            candidates = {p.removeprefix(uri).lstrip("/") for p in self._open(table).vacuum(dry_run=True, **options)}
            present = self._present(table, sorted(candidates))
            self._open(table).vacuum(dry_run=False, **options)
        self._reload(table)  # delta-rs logs a vacuum as commits
        return present

    def _present(self, table: str, paths: list[str]) -> list[str]:
        """Those of ``paths`` (relative to the table) that exist."""
        if not paths:
            return []
        fs = self.filesystem(table)
        infos = fs.get_file_info(paths)
        return [p for p, i in zip(paths, infos) if i.type != pafs.FileType.NotFound]

    def vacuum_all(self, retention_h: float) -> dict[str, list[str]]:
        """:meth:`vacuum` every existing table (:meth:`tables`): ``{table: removed paths}``."""
        return {table: self.vacuum(table, retention_h) for table in self.tables()}

    # -- reading ----------------------------------------------------------------------
    def version(self, table: str) -> int:
        """The table's current Delta version. :class:`NotFoundError` if it does not exist."""
        with _errors(table):
            return self._open(table).version()

    def schema(self, table: str) -> pa.Schema:
        """The table's current Arrow schema (as stored). :class:`NotFoundError` if absent."""
        with _errors(table):
            return pa.schema(self._open(table).schema().to_arrow())

    def _schema_if_exists(self, table: str) -> pa.Schema | None:
        return self.schema(table) if self.exists(table) else None

    def reader_features(self, table: str) -> set[str]:
        """Delta reader features the table's protocol requires (empty for protocol < 3)."""
        with _errors(table):
            return set(self._open(table).protocol().reader_features or ())

    def add_actions(self, table: str, version: int | None = None) -> pa.Table:
        """The data files of the snapshot at ``version`` (default: current), one row per file:
        ``path`` (relative to the table), ``size_bytes``, ``num_records`` (null if the writer
        kept no statistics), ``partition.<column>`` per partition column, and the column
        statistics (delta-rs ``get_add_actions(flatten=True)``).
        :class:`NotFoundError` if the table, or that version of it, cannot be loaded (its
        log was cleaned up)."""
        pin = self._pin
        if pin is not None and version is not None and (table, version) in pin.adds:  # a version never changes
            return pin.adds[(table, version)]
        with _errors(table, version=version):
            handle = self._open(table, version)
            key = (table, handle.version())
            if pin is not None and key in pin.adds:
                return pin.adds[key]
            adds = pa.table(handle.get_add_actions(flatten=True))
        if pin is not None:
            pin.adds[key] = adds
        return adds

    def row_count(self, table: str) -> int:
        """Rows in the current snapshot, from the Delta log's file statistics (no data read).
        :class:`NotFoundError` if the table does not exist."""
        adds = self.add_actions(table)
        return int(pc.sum(adds.column("num_records")).as_py() or 0)

    def ds_range(self, table: str) -> tuple[dt.date, dt.date] | None:
        """Min and max ``ds`` holding rows in ``table``, from the Delta log (no data read).
        ``None`` if the table does not exist or has no rows."""
        days = self.ds_days(table)
        return (days[0], days[-1]) if days else None

    def ds_days(self, table: str) -> list[dt.date]:
        """The ``ds`` values holding rows in ``table``, sorted, from the Delta log (no data
        read); ``[]`` if the table does not exist or has no rows."""
        if not self.exists(table):
            return []
        adds = self.add_actions(table)
        counts = adds.column("num_records")  # null if a writer kept no statistics: assume rows
        adds = adds.filter(pc.or_kleene(pc.is_null(counts), pc.greater(counts, 0)))
        return pc.unique(adds.column("partition.ds").cast(pa.date32())).sort().to_pylist()

    def dataset(self, table: str) -> pads.Dataset:
        """The table's current snapshot as a pyarrow dataset. :class:`NotFoundError` if the
        table does not exist.

        DuckDB and Polars push projections and ``ds`` filters down into it: each file carries
        its partition values as an expression, so a filtered scan opens only the files of the
        matching partitions (and reads only the row groups whose Parquet statistics can match).
        Files are read through Arrow's native filesystem (:meth:`filesystem`: local, or S3
        configured like delta-rs), not delta-rs' Python storage handler: with the latter a process that scanned a dataset aborts at interpreter exit
        about half the time ("terminate called without an active exception", exit code 134;
        deltalake 1.6.6, observed here), and the native one is no slower.

        The dataset is cached per table and reused while the version is unchanged: checking
        costs one incremental log listing (``update_incremental``), not a reload."""
        with self._lock:
            cached = self._snapshots.get(table)
            with _errors(table):
                if cached is not None and self._pin is None:
                    handle = cached[0]
                    try:
                        handle.update_incremental()
                    except DeltaError:  # the table was deleted and re-created: start over
                        handle = self._open(table)
                else:
                    handle = self._open(table)
                version = handle.version()
                if cached is not None and cached[0] is handle and cached[1] == version:
                    return cached[2]
                data = self._snapshot(handle, table)
            self._snapshots[table] = (handle, version, data)
            return data

    def parquet_files(self, table: str) -> tuple[list[str], bool] | None:
        """The data files of the snapshot :meth:`dataset` gives, for a Parquet reader of its
        own (DuckDB's native scan): ``(absolute local paths, uniform)`` when the files hold
        the table's columns under their own names and each lies in the Hive directory of its
        partition values (``ds=2024-03-01/…``); ``uniform``: the log's statistics show every
        file holds every column (otherwise a reader must match columns by name and fill the
        missing ones with nulls). ``None`` when they cannot be read that way: an object store,
        a protocol with reader features or column mapping, another layout, no file at all.
        :class:`NotFoundError` if the table does not exist."""
        data = self.dataset(table)
        if not self._local:
            return None
        with self._lock:
            handle, _, cached = self._snapshots[table]
        metadata = handle.metadata()
        if cached is not data or handle.protocol().reader_features or metadata.configuration.get("delta.columnMapping.mode", "none") != "none":
            return None
        adds = pa.table(handle.get_add_actions(flatten=True))
        if adds.num_rows == 0 or not _hive_layout(adds, metadata.partition_columns):
            return None
        root = Path(self.uri(table)).resolve()
        stats = [n for n in adds.column_names if n.startswith("null_count.")]
        uniform = all(
            any((s == f"null_count.{f.name}" or s.startswith(f"null_count.{f.name}.")) and adds.column(s).null_count == 0 for s in stats)
            for f in data.schema if f.name not in metadata.partition_columns
        )
        return [str(root / urllib.parse.unquote(p)) for p in adds.column("path").to_pylist()], uniform

    def _snapshot(self, handle: DeltaTable, table: str) -> pads.Dataset:
        """The files of ``handle``'s snapshot as a dataset.

        delta-rs' ``to_pyarrow_dataset`` builds one partition-and-statistics expression per
        file in Python: 9 s for a table of 15,000 files (the stream's micro-batches make that
        many within days). When every file lies in the Hive directory of its partition values
        as recorded in the log (what delta-rs and Spark write) and the protocol asks for no
        reader feature, the same files are listed for Arrow to read with Hive partitioning
        instead: 0.09 s for those 15,000. Otherwise delta-rs builds it."""
        import pyarrow.dataset as pads

        filesystem = self.filesystem(table)
        adds = pa.table(handle.get_add_actions(flatten=True))
        columns = handle.metadata().partition_columns
        if handle.protocol().reader_features or not _hive_layout(adds, columns):
            return handle.to_pyarrow_dataset(filesystem=filesystem)
        schema = pa.schema(handle.schema().to_arrow())
        partitioning = None
        if columns:
            partitioning = pads.HivePartitioning(pa.schema([schema.field(c) for c in columns]), null_fallback=_HIVE_NULL)
        paths = [urllib.parse.unquote(p) for p in adds.column("path").to_pylist()]
        fmt = pads.ParquetFileFormat(default_fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=True))
        return pads.dataset(paths, schema=schema, format=fmt, filesystem=filesystem, partitioning=partitioning)

    def _partition_by(self, table: str) -> list[str] | None:
        return list(catalog.spec(table).partition_by) or None


_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


@dataclass
class _Pin:
    """What a :meth:`Lake.pinned` scope knows: ``exists`` answers, tables whose kept handle
    must be brought up to date before its next use (``stale``), and the add actions of a
    table's version (``adds``: ``{(table, version): add actions}``; a version never changes)."""

    stale: set[str]
    exists: dict[str, bool] = field(default_factory=dict)
    adds: dict[tuple[str, int], pa.Table] = field(default_factory=dict)


class CommitConflictError(TransientError):
    """A concurrent commit won the race for the next version and touched what this one read
    or removed (Delta optimistic concurrency). Nothing was committed: re-running the same
    operation on the new snapshot is correct."""


def _files_of(adds: pa.Table, day: dt.date) -> int:
    """Files of the ``ds`` partition ``day`` among add actions ``adds``."""
    return int(pc.sum(pc.equal(adds.column("partition.ds").cast(pa.date32()), pa.scalar(day, pa.date32()))).as_py() or 0)


def _days_filter(days: list[dt.date] | None) -> list[tuple[str, str, Any]] | None:
    """delta-rs partition filters selecting the ``ds`` partitions in ``days`` (``None``: all)."""
    return [("ds", "in", sorted(d.isoformat() for d in days))] if days is not None else None


def _hive_layout(adds: pa.Table, columns: list[str]) -> bool:
    """Whether the directory of every file (``add.path``) is ``c1=v1/c2=v2…`` of its partition
    values in the log (vectorised: one string comparison per file)."""
    if not columns or adds.num_rows == 0:
        return True  # unpartitioned: a file's path is all there is
    parts = [
        pc.binary_join_element_wise(f"{c}=", pc.fill_null(pc.cast(adds.column(f"partition.{c}"), pa.string()), _HIVE_NULL), "")
        for c in columns
    ]
    expected = pc.binary_join_element_wise(*parts, "/") if len(parts) > 1 else parts[0]
    paths = pc.cast(adds.column("path"), pa.string())
    directory = pc.replace_substring_regex(paths, r"/[^/]*$", "")
    return bool(pc.all(pc.equal(directory, expected)).as_py())


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _txn(app_id: str, batch_id: int | None) -> CommitProperties:
    return CommitProperties(app_transactions=[Transaction(app_id, batch_id)])


def _mismatch(have: pa.Schema | None, data: Any) -> str | None:
    """The first column of ``data`` that does not fit the table's schema ``have``: missing,
    extra or of another type (``None`` if every column fits)."""
    if have is None or data is None:
        return None
    got = data.schema
    for f in have:
        if f.name not in got.names:
            return f"{f.name}: missing (the table has {f.type})"
    for f in got:
        if f.name not in have.names:
            return f"{f.name}: not a column of the table"
        want = have.field(f.name).type
        if not (f.type.equals(want) or _same_kind(f.type, want)):
            return f"{f.name}: {f.type} does not fit the table's {want}"
    return None


def _same_kind(a: pa.DataType, b: pa.DataType) -> bool:
    """Types delta-rs writes into each other (string / large_string, timestamp units, ...)."""
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(k(a) for k in kinds) and any(k(b) for k in kinds):
        return True
    return pa.types.is_timestamp(a) and pa.types.is_timestamp(b) and (a.tz is None) == (b.tz is None)


# delta-rs raises plain DeltaError for data that breaks the table's rules; what remains
# unrecognised is storage trouble (object-store I/O, a lock), worth a retry. Object-store
# failures it recognises (unreachable endpoint, refused credentials, missing bucket) name the
# setting to check (headwater.lake.objectstore.failure).
_INVALID_DATA = ("Invalid data found", "partitioning", "non-nullable", "C Data interface", "Schema error")


@contextmanager
def _errors(table: str, schema: Callable[[], pa.Schema | None] | None = None, data: Any = None,
            version: int | None = None) -> Iterator[None]:
    """Re-raise delta-rs errors of an operation on ``table`` as :mod:`headwater.errors` classes.

    ``schema`` (called only on failure) and ``data`` let a failed write name the column that
    does not fit; delta-rs' own message does not."""
    try:
        yield
    except TableNotFoundError as e:
        raise NotFoundError(f"table {table!r} does not exist yet", field="table") from e
    except CommitFailedError as e:
        raise CommitConflictError(f"{table}: a concurrent commit won, retry ({e})", field="table", retry_after_s=0.1) from e
    except DeltaProtocolError as e:
        raise ConflictError(f"{table}: {e}", field="table") from e
    except (DeltaError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        text = str(e)
        if _disk_full(e):
            raise _full(table, e) from e
        remote = objectstore.failure(table, e)
        if remote is not None:
            raise remote from e
        if version is not None and "version" in text:
            raise NotFoundError(f"{table}: version {version} cannot be loaded ({text})", field="version") from e
        bad = _mismatch(schema(), data) if schema is not None else None
        if bad is not None:
            raise InvalidInputError(f"{table}: the data does not fit the table: {bad}", field=bad.partition(":")[0]) from e
        if isinstance(e, (SchemaMismatchError, pa.ArrowInvalid, pa.ArrowTypeError)) or any(m in text for m in _INVALID_DATA):
            raise InvalidInputError(f"{table}: {text.splitlines()[0]}", field="table") from e
        raise TransientError(f"{table}: {text.splitlines()[0] if text else type(e).__name__}", field="table") from e
    except OSError as e:
        if _disk_full(e):
            raise _full(table, e) from e
        remote = objectstore.failure(table, e)
        if remote is not None:
            raise remote from e
        raise TransientError(f"{table}: {e}", field="table") from e


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` is the filesystem being full (delta-rs reports it in its message as
    "No space left on device (os error 28)")."""
    if isinstance(e, OSError):
        return e.errno == errno.ENOSPC
    return f"os error {errno.ENOSPC})" in str(e) or "No space left on device" in str(e)


def _full(table: str, e: BaseException) -> TransientError:
    return TransientError(
        f"{table}: disk full (ENOSPC), nothing was committed; free space and retry ({str(e).splitlines()[0]})",
        field="table", retry_after_s=5.0,
    )
