"""The batch models on Spark SQL (local mode here, a cluster at scale): the scale-out engine.

The same model SQL as the DuckDB path (:mod:`headwater.models.run`), transpiled by
:func:`headwater.models.transpile.to_spark`, over the same Delta tables, written the same way
(by the runner, one atomic ``ds`` partition overwrite through the lake). Selected with
``--engine spark`` on ``headwater batch`` or the setting ``batch.engine = "spark"``; parity
with DuckDB is tested (``tests/models/test_spark_parity.py``).

Reading Delta without the Delta connector (no Maven jars here). A table's current snapshot
is the list of data files in its log (``add`` actions); Spark reads exactly those Parquet
files, never a directory listing (which would include files removed by later commits).
The partition column ``ds`` is not in the files: Delta keeps it in the log, and delta-rs
lays files out Hive-style (``ds=2024-03-01/part-….parquet``), so Spark reads the files with
``basePath`` = the table root and the table's full schema, and parses ``ds`` from the path.
That the path and the log agree is checked for every file (:func:`snapshot_files`), and
tables whose files Spark cannot read as plain Parquet (deletion vectors, column mapping)
are refused.

The result never passes through the driver. The executors write the result's files
straight into the model's table (:func:`headwater.spark_delta.write`: each task casts its
rows to the model's Arrow schema and writes Parquet in delta-rs' layout), and the driver
commits their add actions in one Delta transaction
(:meth:`headwater.lake.store.Lake.commit_files`): a partitioned model replaces the ``ds``
partitions ``[start, end]`` (``replaceWhere`` semantics, rows outside the range refused),
an unpartitioned one (or a rebuild) the whole table. A failed run commits nothing; the files
it wrote are unreferenced and go with the next vacuum.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING


from headwater import spark_delta
from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.lake import catalog
from headwater.lake.store import Lake
from headwater.models.dag import Model, parameters
from headwater.models.transpile import to_spark
from headwater.spark_delta import Target

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Reader features whose files Spark reads correctly as plain Parquet plus the log's file list.
# Deletion vectors (rows masked outside the file) and column mapping (physical column names
# differ from the schema) would give wrong rows silently, so tables using them are refused.
READABLE_FEATURES = frozenset({"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"})


@contextmanager
def _conf(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Set a runtime SQL setting of ``spark`` for the block, then restore it (the session is
    shared with other work, e.g. the streaming engine)."""
    before = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)


def view_name(table: str) -> str:
    """The Spark temporary view holding catalog table ``"layer.name"``: ``layer__name``."""
    layer, _, name = table.partition(".")
    return f"{layer}__{name}"


def _hive_segment(column: str, value: object) -> str:
    text = "__HIVE_DEFAULT_PARTITION__" if value is None else str(value)
    return f"{column}={text}"


def snapshot_files(lake: Lake, table: str) -> list[str]:
    """Absolute paths of the data files of ``table``'s current snapshot (``s3a://`` URIs for
    an S3 lake: :meth:`~headwater.lake.store.Lake.hadoop_uri`).

    :class:`InvalidInputError` if the table uses a reader feature outside
    :data:`READABLE_FEATURES` (naming it), or if a file of a partitioned table does not lie
    in the Hive-style directory of its partition values as recorded in the log (naming the
    file): Spark takes partition values from the path, so the two must agree."""
    unreadable = sorted(lake.reader_features(table) - READABLE_FEATURES)
    if unreadable:
        raise InvalidInputError(f"{table}: Delta reader features {unreadable} cannot be read by the Spark engine", field=table)
    adds = lake.add_actions(table)
    columns = [c.removeprefix("partition.") for c in adds.column_names if c.startswith("partition.")]
    root = lake.hadoop_uri(table)
    files = []
    for add in adds.to_pylist():
        rel = urllib.parse.unquote(add["path"])
        expected = [_hive_segment(c, add[f"partition.{c}"]) for c in columns]
        if list(Path(rel).parts[:-1]) != expected:
            raise InvalidInputError(f"{table}: file {rel!r} is not under {'/'.join(expected) or 'the table root'}", field=table)
        files.append(f"{root}/{rel}")
    return files


def register(spark: SparkSession, lake: Lake, table: str) -> str:
    """Register ``table``'s current snapshot as the temporary view :func:`view_name` in
    ``spark``; return the view name.

    Columns and types are the Delta table's (``timestamp[us, UTC]`` → ``TIMESTAMP``,
    ``date32`` → ``DATE``). A table the catalog declares ``empty_until_written`` (e.g. a
    cumulative state before its first run) reads as empty until it exists, as on DuckDB
    (:func:`headwater.lake.sql.register`). :class:`NotFoundError` naming the table if it does
    not exist otherwise, :class:`InvalidInputError` as :func:`snapshot_files`."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if not lake.exists(table):
        spec = catalog.spec(table)
        if not (spec.empty_until_written and spec.schema is not None):
            raise NotFoundError(f"{table}: no Delta table at {lake.uri(table)}", field=table)
        files, schema = [], from_arrow_schema(spec.schema)
    else:
        files, schema = snapshot_files(lake, table), from_arrow_schema(lake.schema(table))
    if files:
        # Above this many paths Spark lists them with a distributed job (one task per file,
        # seconds for a few hundred); these are known local files: stat them on the driver.
        # (The file index is built here, eagerly, so the setting is only needed for this call.)
        with _conf(spark, "spark.sql.sources.parallelPartitionDiscovery.threshold", str(len(files) + 1)):
            frame = spark.read.schema(schema).option("basePath", lake.hadoop_uri(table)).parquet(*files)
    else:
        frame = spark.createDataFrame([], schema)
    view = view_name(table)
    frame.createOrReplaceTempView(view)
    return view


def run(home: Home, lake: Lake, model: Model, start: dt.date, end: dt.date, *, whole: bool = False,
        spark: SparkSession | None = None) -> int:
    """Compute SQL ``model`` for ``ds`` in ``[start, end]`` on Spark SQL and write its table
    from the executors (see the module docstring); return the rows written.

    ``whole``: replace the whole table (an unpartitioned model, or a rebuild after a type
    change) instead of the partitions ``[start, end]``. ``spark`` defaults to
    :func:`headwater.spark.session` of ``home``'s settings (``spark.master``, S3A for an S3 lake). Every input of the
    model is registered at its current snapshot (:func:`register`) and the SQL is
    transpiled with its parameters (:func:`headwater.models.dag.parameters`) bound as ``DATE`` literals.
    :class:`InvalidInputError` if the result lacks a column of ``model.schema``, a row does
    not fit it (a null in a non-nullable column), a row's ``ds`` is outside the range, or
    Spark rejects the transpiled SQL (its ``AnalysisException`` as the cause);
    :class:`NotFoundError` if an input does not exist. Nothing is committed then."""
    from pyspark.errors import AnalysisException

    if spark is None:
        from headwater.spark import session

        spark = session(settings=home.settings)
    sql = model.sql(home)
    # a cumulative model also reads its own latest partition before start
    reads = model.inputs + ((model.table,) if model.cumulative else ())
    views = {table: register(spark, lake, table) for table in reads}
    try:
        frame = spark.sql(to_spark(sql, parameters(model, sql, start, end, lake.ds_days), views))
    except AnalysisException as e:
        raise InvalidInputError(f"{model.sql_file}: Spark SQL refused it: {str(e).splitlines()[0]}", field=model.table) from e
    missing = [n for n in model.schema.names if n not in frame.columns]
    if missing:
        raise InvalidInputError(f"{model.sql_file}: result lacks columns {missing} of {model.table}", field=model.table)
    (adds,) = spark_delta.write(frame.select(*model.schema.names), [Target.of(lake, model.table, model.schema)])
    days = (start, end) if model.partitioned and not whole else None
    lake.commit_files(model.table, adds, model.schema, mode="overwrite", days=days)
    return spark_delta.num_records(adds)
