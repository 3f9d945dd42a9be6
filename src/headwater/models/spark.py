"""The batch models on Spark SQL (local mode here, a cluster at scale): the scale-out engine.

The same model SQL as the DuckDB path (:mod:`headwater.models.run`), transpiled by
:func:`headwater.models.transpile.to_spark`, over the same Delta tables, written the same way
(one atomic ``ds`` partition overwrite through delta-rs). Selected with ``--engine spark`` on
``headwater batch`` or ``HEADWATER_ENGINE=spark``; parity with DuckDB is tested
(``tests/models/test_spark_parity.py``).

Reading Delta without the Delta connector (no Maven jars here). A table's current snapshot
is the list of data files in its log (``add`` actions); Spark reads exactly those Parquet
files, never a directory listing (which would include files removed by later commits).
The partition column ``ds`` is not in the files: Delta keeps it in the log, and delta-rs
lays files out Hive-style (``ds=2024-03-01/part-….parquet``), so Spark reads the files with
``basePath`` = the table root and the table's full schema, and parses ``ds`` from the path.
That the path and the log agree is checked for every file (:func:`snapshot_files`), and
tables whose files Spark cannot read as plain Parquet (deletion vectors, column mapping)
are refused.

Writing. Spark writes the query result as Parquet to a staging directory under
``<home>/tmp`` (timestamps as ``TIMESTAMP_MICROS``, i.e. ``timestamp[us, UTC]``); Arrow
streams those files batch by batch into :func:`headwater.models.run.write_result` (cast to
the model's schema, ``replaceWhere``-style overwrite of ``[start, end]``); the staging
directory is removed afterwards. The result never passes through the Python driver whole.
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.dataset as pads
import sqlglot
from deltalake import DeltaTable
from sqlglot import exp

from headwater.config import Home
from headwater.lake import tables
from headwater.serve import catalog
from headwater.models.transpile import to_spark

if TYPE_CHECKING:
    import datetime as dt

    from pyspark.sql import SparkSession

    from headwater.models.run import Model

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


def referenced_tables(sql: str) -> list[str]:
    """Catalog tables (``"layer.name"``) that DuckDB model ``sql`` reads, sorted.

    Raises ``sqlglot.errors.ParseError`` for invalid SQL."""
    found = set()
    for statement in sqlglot.parse(sql, read="duckdb"):
        if statement is None:
            continue
        for table in statement.find_all(exp.Table):
            if table.db and not table.catalog and table.name:
                found.add(f"{table.db}.{table.name}")
    return sorted(found)


def _hive_segment(column: str, value: object) -> str:
    text = "__HIVE_DEFAULT_PARTITION__" if value is None else str(value)
    return f"{column}={text}"


def snapshot_files(path: Path) -> list[str]:
    """Absolute paths of the data files of the Delta table at ``path`` (current snapshot).

    Raises ``ValueError`` if the table uses a reader feature outside
    :data:`READABLE_FEATURES` (naming it), or if a file of a partitioned table does not lie
    in the Hive-style directory of its partition values as recorded in the log (naming the
    file): Spark takes partition values from the path, so the two must agree."""
    table = DeltaTable(str(path))
    features = set(table.protocol().reader_features or ())
    unreadable = sorted(features - READABLE_FEATURES)
    if unreadable:
        raise ValueError(f"{path}: Delta reader features {unreadable} cannot be read by the Spark engine")
    columns = table.metadata().partition_columns
    adds = pa.table(table.get_add_actions(flatten=True)).to_pylist()
    root = Path(path).resolve()
    files = []
    for add in adds:
        rel = urllib.parse.unquote(add["path"])
        expected = [_hive_segment(c, add[f"partition.{c}"]) for c in columns]
        if list(Path(rel).parts[:-1]) != expected:
            raise ValueError(f"{path}: file {rel!r} is not under {'/'.join(expected) or 'the table root'}")
        files.append(str(root / rel))
    return files


def register(spark: SparkSession, home: Home, table: str) -> str:
    """Register ``table``'s current snapshot as the temporary view :func:`view_name` in
    ``spark``; return the view name.

    Columns and types are the Delta table's (``timestamp[us, UTC]`` → ``TIMESTAMP``,
    ``date32`` → ``DATE``). Raises ``FileNotFoundError`` naming the table if it does not
    exist, ``ValueError`` as :func:`snapshot_files`."""
    from pyspark.sql.pandas.types import from_arrow_schema

    path = catalog.table_path(home, table)
    if not tables.exists(path):
        raise FileNotFoundError(f"{table}: no Delta table at {path}")
    files = snapshot_files(path)
    schema = from_arrow_schema(pa.schema(DeltaTable(str(path)).schema().to_arrow()))
    if files:
        # Above this many paths Spark lists them with a distributed job (one task per file,
        # seconds for a few hundred); these are known local files: stat them on the driver.
        # (The file index is built here, eagerly, so the setting is only needed for this call.)
        with _conf(spark, "spark.sql.sources.parallelPartitionDiscovery.threshold", str(len(files) + 1)):
            frame = spark.read.schema(schema).option("basePath", str(Path(path).resolve())).parquet(*files)
    else:
        frame = spark.createDataFrame([], schema)
    view = view_name(table)
    frame.createOrReplaceTempView(view)
    return view


def run_spark(home: Home, model: Model, start: dt.date, end: dt.date, spark: SparkSession | None = None) -> int:
    """Run ``model`` on Spark SQL for ``ds`` in ``[start, end]`` and overwrite those partitions.

    ``spark`` defaults to :func:`headwater.spark.session` (local[2]). Every catalog table
    the SQL reads is registered at its current snapshot (:func:`register`), the SQL is
    transpiled with ``$start`` / ``$end`` bound as ``DATE`` literals, and the result is
    written by :func:`headwater.models.run.write_result`, as on DuckDB.
    Returns the number of rows written.

    Raises ``ValueError`` if ``start > end``, the result lacks a column of
    ``model.schema`` or an input cannot be read (see :func:`register`);
    ``FileNotFoundError`` if an input table does not exist;
    ``pyspark.errors.AnalysisException`` if Spark rejects the transpiled SQL;
    ``deltalake.exceptions.DeltaError`` if a row does not fit the schema or lies outside
    ``[start, end]``. In every error case the target table is left as it was."""
    from pyspark.sql.pandas.types import to_arrow_schema

    from headwater.models.run import write_result

    if start > end:
        raise ValueError(f"start: {start} is after end {end}")
    if spark is None:
        from headwater.spark import session

        spark = session()
    sql = model.sql(home)
    views = {table: register(spark, home, table) for table in referenced_tables(sql)}
    frame = spark.sql(to_spark(sql, {"start": start, "end": end}, views))
    missing = [n for n in model.schema.names if n not in frame.columns]
    if missing:
        raise ValueError(f"{model.sql_file or model.table}: result lacks columns {missing} of {model.table}")
    staging_root = home.root / "tmp"
    staging_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="spark-", dir=staging_root))
    try:
        frame = frame.select(*model.schema.names)
        # Spark's default INT96 timestamps would come back as naive nanoseconds.
        with _conf(spark, "spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS"):
            frame.write.mode("overwrite").parquet(str(staging / "result"))
        # Explicit schema: an empty result may have no files. Spark TIMESTAMP → timestamp[us, UTC].
        schema = to_arrow_schema(frame.schema, timezone="UTC")
        result = pads.dataset(str(staging / "result"), schema=schema, format="parquet").scanner().to_reader()
        return write_result(home, model, result, start, end)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
