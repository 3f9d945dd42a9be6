"""Distributed Delta writes from Spark: executors write the Parquet files, the driver commits.

No row of a micro-batch or a batch model's result passes through the Spark driver:

1. :func:`write` runs :func:`write_files` on the executors over each partition of a
   DataFrame (``DataFrame.mapInArrow``). It writes the partition's Arrow batches as Parquet
   files with pyarrow straight into the table's directory, through the table's picklable
   filesystem (:meth:`headwater.lake.store.Lake.filesystem`: local disk, an object store),
   in the layout delta-rs writes — Hive directories ``ds=YYYY-MM-DD/part-<uuid>.snappy.parquet``,
   partition columns not stored in the file — and yields ONE small row per file: its add
   action (path, size, partition values, modification time, Delta per-file statistics).
2. The driver collects only those rows and commits them in ONE Delta transaction
   (:meth:`headwater.lake.store.Lake.commit_files`, delta-rs ``create_write_transaction``),
   carrying the txn ``(app_id, batch)`` where the caller needs exactly-once.

Exactly once. The caller skips a batch (a streaming epoch) whose txn version the table
already holds (:meth:`~headwater.lake.store.Lake.committed_batch`). A task retried by Spark,
a speculative copy, or a whole epoch replayed after the driver died between the files and
the commit writes files of its own (fresh UUIDs) — the commit references only the files of
the attempt whose rows the driver collected; the others are never referenced by the Delta
log, invisible to every reader, and deleted by :meth:`~headwater.lake.store.Lake.vacuum`
(``full`` mode) once older than the retention.

Statistics (Delta protocol, "Per-file Statistics"): ``numRecords``, and per data column
``nullCount``, ``minValues`` and ``maxValues`` — for numbers, booleans, dates, timestamps
(JSON strings at millisecond precision, as delta-rs writes them: the minimum truncated, the
maximum rounded UP to the next millisecond, so both stay bounds) and strings (a minimum
longer than :data:`STRING_PREFIX` characters is cut to a prefix — still a lower bound; a
longer maximum is left out). NaN and infinite bounds, binary and nested columns are left
out (a missing bound only disables skipping on that column).

Errors: a row that does not fit the table's schema (a null in a non-nullable column) fails
its task with :class:`InvalidInputError`; :func:`write` re-raises a headwater error raised on
an executor as its own class on the driver (the executor's traceback as ``__cause__``).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake.transaction import AddAction

from headwater import errors
from headwater.errors import InvalidInputError
from headwater.lake import catalog
from headwater.lake.store import Lake

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
STRING_PREFIX = 32  # characters of a string bound kept (Delta Spark's default too)
ROW_GROUP_ROWS = 1 << 17  # rows buffered per file before a Parquet row group is written

ADD_SCHEMA = pa.schema(
    [
        pa.field("target", pa.int32()),  # index into the targets of the write
        pa.field("path", pa.string()),  # relative to the table directory, URI-encoded (Delta protocol)
        pa.field("size", pa.int64()),  # bytes
        pa.field("partition_values", pa.string()),  # JSON {column: string value or null}
        pa.field("modification_time", pa.int64()),  # ms since the epoch
        pa.field("stats", pa.string()),  # Delta statistics JSON
    ]
)
ADD_DDL = "target INT, path STRING, size BIGINT, partition_values STRING, modification_time BIGINT, stats STRING"

# What a transform returns: one batch (or None: nothing) per target, in the targets' order.
Transform = Callable[[pa.RecordBatch], Sequence[pa.RecordBatch | pa.Table | None]]


@dataclass(frozen=True)
class Target:
    """Where executors put one table's files.

    ``name``: the table (for messages); ``filesystem``: rooted at the table directory
    (:meth:`Lake.filesystem`; picklable); ``schema``: the table's Arrow schema, partition
    columns included — every batch is selected and cast to it on the executor; ``partition_by``: the partition columns (Hive
    directories, not stored in the files); ``prefix``: a subdirectory of the table directory
    to write under instead (staging files that no add action will reference); ``parquet``:
    ``pyarrow.parquet.ParquetWriter`` options (default: Snappy, dictionaries on)."""

    name: str
    filesystem: pafs.FileSystem
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    prefix: str = ""
    parquet: dict = field(default_factory=dict)

    @classmethod
    def of(cls, lake: Lake, table: str, schema: pa.Schema, prefix: str = "", parquet: dict | None = None) -> Target:
        """``table``'s target in ``lake``: its filesystem (local or object store), partitioned
        as the catalog declares."""
        return cls(table, lake.filesystem(table), schema, tuple(catalog.spec(table).partition_by), prefix, parquet or {})


# -- on the executors ---------------------------------------------------------------------
def write_files(batches: Iterator[pa.RecordBatch], targets: Sequence[Target], transform: Transform | None = None) -> Iterator[pa.RecordBatch]:
    """Write ``batches`` (one Spark partition) as Parquet files of ``targets``; yield their
    add actions (:data:`ADD_SCHEMA`) once every file is closed.

    ``transform`` maps each input batch to one batch per target (default: the batch to the
    single target). Rows are split by partition values; each (target, partition) gets one
    file per call. :class:`InvalidInputError` if a batch does not fit its target's schema; a
    failure leaves the files written so far unreferenced."""
    files = [_TargetFiles(t) for t in targets]
    try:
        for batch in batches:
            for out, part in zip(files, transform(batch) if transform is not None else (batch,), strict=True):
                if part is not None and part.num_rows:
                    out.write(part)
        rows = [row | {"target": i} for i, out in enumerate(files) for row in out.close()]
    except BaseException:
        for out in files:
            out.abort()
        raise
    if rows:
        yield pa.RecordBatch.from_pylist(rows, schema=ADD_SCHEMA)


class _TargetFiles:
    """The open files of one target in one task, one per partition value."""

    def __init__(self, target: Target):
        self.target = target
        self.data_schema = pa.schema([f for f in target.schema if f.name not in target.partition_by])
        self.open: dict[tuple, _File] = {}

    def write(self, part: pa.RecordBatch | pa.Table) -> None:
        schema = self.target.schema
        try:
            part = part.select(schema.names).cast(schema)
        except (ValueError, KeyError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            raise InvalidInputError(f"{self.target.name}: the rows do not fit the table: {e}", field=self.target.name) from e
        by = self.target.partition_by
        if not by:
            self._file(()).write(part)
            return
        table = pa.Table.from_batches([part]) if isinstance(part, pa.RecordBatch) else part
        if len(by) == 1:  # rows clustered by their partition (a sorted batch): zero-copy slices
            runs = pc.run_end_encode(table[by[0]].combine_chunks())
            values, ends = runs.values.to_pylist(), runs.run_ends.to_pylist()
            if len(set(values)) == len(values):
                for v, start, end in zip(values, [0, *ends], ends):
                    self._file((v,)).write(table.slice(start, end - start).drop_columns(list(by)))
                return
        for key in table.select(list(by)).group_by(list(by)).aggregate([]).to_pylist():
            mask = functools.reduce(pc.and_, (pc.is_null(table[c]) if key[c] is None else pc.equal(table[c], pa.scalar(key[c], table[c].type)) for c in by))
            self._file(tuple(key[c] for c in by)).write(table.filter(mask).drop_columns(list(by)))

    def _file(self, values: tuple) -> _File:
        f = self.open.get(values)
        if f is None:
            partition = {c: _partition_text(v) for c, v in zip(self.target.partition_by, values)}
            dirs = [f"{c}={HIVE_NULL if v is None else v}" for c, v in partition.items()]
            options = {"compression": "snappy", **self.target.parquet}
            name = f"part-{uuid.uuid4()}.{options['compression']}.parquet"
            path = "/".join([*filter(None, [self.target.prefix.strip("/")]), *dirs, name])
            f = self.open[values] = _File(self.target.filesystem, path, self.data_schema, partition, options)
        return f

    def close(self) -> list[dict]:
        return [f.close() for f in self.open.values()]

    def abort(self) -> None:
        for f in self.open.values():
            f.abort()


def _partition_text(value: object) -> str | None:
    """A partition value as the Delta log and Hive paths spell it (dates ISO)."""
    if value is None:
        return None
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value)


class _File:
    """One Parquet file being written, with its Delta statistics."""

    def __init__(self, fs: pafs.FileSystem, path: str, schema: pa.Schema, partition: dict[str, str | None], options: dict):
        self.fs, self.path, self.partition = fs, path, partition
        try:
            self.sink = fs.open_output_stream(path)
        except FileNotFoundError:  # a local directory not made yet (object stores have none)
            fs.create_dir(path.rpartition("/")[0] or ".", recursive=True)
            self.sink = fs.open_output_stream(path)
        self.writer = pq.ParquetWriter(self.sink, schema, **options)
        self.pending: list[pa.Table] = []
        self.buffered = self.rows = 0
        self.stats = {f.name: _ColumnStats(f.type) for f in schema}

    def write(self, part: pa.RecordBatch | pa.Table) -> None:
        table = pa.Table.from_batches([part]) if isinstance(part, pa.RecordBatch) else part
        for name, stats in self.stats.items():
            stats.add(table[name])
        self.pending.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=max(self.buffered, 1))
            self.pending, self.buffered = [], 0

    def close(self) -> dict:
        self._flush()
        self.writer.close()
        size = self.sink.tell()
        self.sink.close()
        stats: dict = {"numRecords": self.rows, "minValues": {}, "maxValues": {}, "nullCount": {}}
        for name, s in self.stats.items():
            stats["nullCount"][name] = s.nulls
            for key, bound in (("minValues", s.json_min()), ("maxValues", s.json_max())):
                if bound is not None:
                    stats[key][name] = bound
        return {
            "path": urllib.parse.quote(self.path, safe="/="),  # as delta-rs spells paths
            "size": size,
            "partition_values": json.dumps(self.partition),
            "modification_time": int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000),
            "stats": json.dumps(stats, separators=(",", ":")),
        }

    def abort(self) -> None:
        try:
            self.writer.close()
            self.sink.close()
        except Exception:  # noqa: BLE001 - already failing; the file stays unreferenced
            pass


class _ColumnStats:
    """Null count and bounds of one column across a file's batches."""

    def __init__(self, type_: pa.DataType):
        t = pa.types
        self.ranged = any(k(type_) for k in (t.is_integer, t.is_floating, t.is_boolean, t.is_date, t.is_timestamp, t.is_string, t.is_large_string))
        self.nulls = 0
        self.min = self.max = None

    def add(self, column: pa.ChunkedArray) -> None:
        self.nulls += column.null_count
        if not self.ranged or column.null_count == len(column):
            return
        mm = pc.min_max(column).as_py()
        lo, hi = mm["min"], mm["max"]
        if isinstance(lo, float) and not (math.isfinite(lo) and math.isfinite(hi)):
            self.ranged = False  # NaN / ±inf: no JSON bound for this column
            return
        self.min = lo if self.min is None else min(self.min, lo)
        self.max = hi if self.max is None else max(self.max, hi)

    def json_min(self) -> object:
        v = self.min
        if isinstance(v, dt.datetime):
            return _ms(v.replace(microsecond=v.microsecond // 1000 * 1000))
        if isinstance(v, str):
            return v[:STRING_PREFIX]
        return v.isoformat() if isinstance(v, dt.date) else v

    def json_max(self) -> object:
        v = self.max
        if isinstance(v, dt.datetime):
            up = -(-v.microsecond // 1000) * 1000
            return _ms(v.replace(microsecond=0) + dt.timedelta(microseconds=up))
        if isinstance(v, str):
            return v if len(v) <= STRING_PREFIX else None
        return v.isoformat() if isinstance(v, dt.date) else v


def _ms(t: dt.datetime) -> str:
    """A timestamp bound as Delta stats spell it: UTC, milliseconds, ``Z`` (a naive one as is)."""
    return (t.astimezone(dt.timezone.utc) if t.tzinfo else t).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# -- on the driver ------------------------------------------------------------------------
def write(df, targets: Sequence[Target], transform: Transform | None = None) -> list[list[AddAction]]:
    """Write the rows of Spark DataFrame ``df`` as files of ``targets`` on the executors
    (:func:`write_files` per partition, ``mapInArrow``); return the add actions per target,
    in the targets' order — the only rows the driver receives. Nothing is committed.

    A headwater error raised on an executor is re-raised here as its class (e.g.
    :class:`InvalidInputError` for rows that do not fit); other failures propagate as Spark
    raises them."""
    from pyspark.errors import PythonException

    fn = functools.partial(write_files, targets=tuple(targets), transform=transform)
    try:
        rows = df.mapInArrow(fn, ADD_DDL).collect()
    except PythonException as e:
        error = _headwater_error(e)
        if error is e:
            raise
        raise error from e
    return add_actions(rows, len(targets))


def add_actions(rows: Sequence, targets: int) -> list[list[AddAction]]:
    """The add actions of :data:`ADD_SCHEMA` ``rows`` (Spark rows or dicts: indexed by field
    name) per target, for ``targets`` targets."""
    adds: list[list[AddAction]] = [[] for _ in range(targets)]
    for r in rows:
        adds[r["target"]].append(AddAction(r["path"], r["size"], json.loads(r["partition_values"]), r["modification_time"], True, r["stats"]))
    return adds


def num_records(adds: Sequence[AddAction]) -> int:
    """Rows in the files of ``adds`` (from their statistics)."""
    return sum(json.loads(a.stats)["numRecords"] for a in adds)


_RAISED = re.compile(r"headwater\.errors\.(\w+): (.*)")


def _headwater_error(e: Exception) -> Exception:
    """The headwater error an executor raised (the last one in its traceback), else ``e``."""
    found = _RAISED.findall(str(e))
    if not found:
        return e
    name, message = found[-1]
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.HeadwaterError)):
        return e
    return cls(message.strip())
