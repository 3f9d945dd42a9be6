"""``foreachBatch`` sinks: Spark micro-batches → Delta tables, written by the executors, exactly once.

No micro-batch passes through the driver. Each epoch's rows are written as Parquet files by
the executors (:func:`headwater.spark_delta.write`, ``mapInArrow``) into the tables'
directories; the driver collects only the files' add actions and commits them in one Delta
transaction per table (:meth:`headwater.lake.store.Lake.commit_files`).

Exactly once. Spark's own checkpoint (``offsets/N`` + ``commits/N``, the design headwater's
engine copies) replays an unfinished epoch N with the same input after a crash and calls the
``foreachBatch`` function again with the same ``epoch_id``. Each sink commit carries the
Delta application transaction ``(app_id, epoch_id)`` (Delta protocol "Transaction
Identifiers"; the pattern Spark's docs give for idempotent ``foreachBatch`` writes); before
writing, the sink reads ``transaction_version(app_id)`` and skips an epoch the table already
holds. Files written by an attempt that never committed (the driver died between the
executors' writes and the commit, or a task was retried) are referenced by no commit:
readers never see them and :meth:`~headwater.lake.store.Lake.vacuum` deletes them.

Output modes:

- ``append`` (bronze, bad rows, append-mode windows): the executors write the table's data files;
  one append commit per epoch.
- ``update`` (update-mode windows): a MERGE on the window key. The executors write the
  epoch's rows as staging Parquet files under ``_staging/`` in the table's directory (a
  directory Delta readers ignore); the driver runs delta-rs' MERGE with those files as a
  streamed source (a dataset scan, batch by batch; :meth:`~headwater.lake.store.Lake.upsert_once`),
  then deletes them. The MERGE itself runs in the driver process: delta-rs has no distributed
  MERGE and Spark's needs the Delta connector's JARs; an update-mode epoch is one row per
  changed window and group, small next to the events behind it. The table's first epoch is
  a plain executor-written append (nothing to merge with).

``distinct`` measures (a DataSketches HLL sketch ``<name>_sketch``): the estimate column
``<name>`` is computed on the executors, inside the writing task (:func:`with_estimates`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from headwater import spark_delta
from headwater.events import BAD_ROW_SCHEMA, BAD_ROWS_TOPIC, EVENT_SCHEMA, EVENTS_TOPIC
from headwater.lake.store import Lake
from headwater.spark_delta import Target
from headwater.stream import sketches
from headwater.stream.records import DEAD_LETTER_SCHEMA

BatchFn = Callable[[object, int], None]
STAGING = "_staging"  # under a table's directory: files of an update-mode epoch before its MERGE
# The bronze table of each topic's rows (as headwater's engine writes them).
BRONZE = {EVENTS_TOPIC: ("bronze.events", EVENT_SCHEMA), BAD_ROWS_TOPIC: ("bronze.bad_rows", BAD_ROW_SCHEMA)}
# The queries of the events and bad_rows topics both commit bronze.dead_letter, from two
# driver threads: one at a time, or the two first commits race to create the table.
_DEAD_LETTER_COMMIT = threading.Lock()


def _done(lake: Lake, table: str, app_id: str, epoch_id: int) -> bool:
    committed = lake.committed_batch(table, app_id)
    return committed is not None and committed >= epoch_id


def spark_schema(df) -> pa.Schema:
    """The Arrow schema of a Spark DataFrame's rows (timestamps ``timestamp[us, tz=UTC]``)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema, timezone="UTC")


# -- executor-side transforms (module level: Spark pickles them by reference) ---------------
def with_estimates(batch: pa.RecordBatch, distinct: tuple[str, ...]) -> tuple[pa.RecordBatch]:
    """``batch`` with each ``distinct`` column (float64) set to its ``<name>_sketch``'s HLL estimate."""
    for name in distinct:
        est = sketches.estimates(pl.Series(batch[f"{name}_sketch"])).to_arrow()
        batch = batch.set_column(batch.schema.get_field_index(name), pa.field(name, pa.float64()), est)
    return (batch,)


def split_bronze(batch: pa.RecordBatch, topic: str) -> tuple[pa.RecordBatch, pa.Table]:
    """Source rows of ``topic`` → (its rows for its bronze table, dead letters for ``bronze.dead_letter``)."""
    bad = pc.is_valid(batch["_error"])
    return batch.filter(pc.invert(bad)), dead_letters(batch.filter(bad), topic)


# -- the sinks -------------------------------------------------------------------------------
def window_sink(lake: Lake, table: str, app_id: str, output_mode: str, keys: Sequence[str], distinct: Sequence[str] = ()) -> BatchFn:
    """``foreachBatch`` function writing an aggregate's epoch output to ``table``
    (``realtime.<name>``): appended (``append``) or merged on ``keys`` (``update``); empty
    epochs commit nothing. Each ``distinct`` measure's column (float64) is set to the estimate
    of its ``<name>_sketch`` (serialized DataSketches HLL) on the executors."""
    transform = functools.partial(with_estimates, distinct=tuple(distinct)) if distinct else None

    def write(df, epoch_id: int) -> None:
        if _done(lake, table, app_id, epoch_id):
            return
        exists = lake.exists(table)
        schema = lake.schema(table) if exists else spark_schema(df)
        if output_mode == "append" or not exists:
            (adds,) = spark_delta.write(df, [Target.of(lake, table, schema)], transform)
            if adds:
                lake.commit_files(table, adds, schema, app_id=app_id, batch_id=epoch_id)
            return
        stage = Target.of(lake, table, schema, f"{STAGING}/{app_id}-{epoch_id}-{uuid.uuid4()}")
        try:
            (adds,) = spark_delta.write(df, [stage], transform)
            if adds:
                lake.upsert_once(table, staged(stage, adds), tuple(keys), app_id=app_id, batch_id=epoch_id)
        finally:
            _remove(stage)

    return write


def staged(stage: Target, adds) -> pa.RecordBatchReader:
    """The staging files of ``adds`` as a stream of ``stage.schema`` plus ``_delete`` (false)."""
    import pyarrow.dataset as pads

    paths = [urllib.parse.unquote(a.path) for a in adds]
    scan = pads.dataset(paths, schema=stage.schema, format="parquet", filesystem=stage.filesystem).to_batches()
    schema = stage.schema.append(pa.field("_delete", pa.bool_()))
    return pa.RecordBatchReader.from_batches(
        schema, (b.append_column("_delete", pa.array(np.zeros(b.num_rows, dtype=bool))) for b in scan)
    )


def _remove(stage: Target) -> None:
    """Delete the staging directory of ``stage`` (if the executors created it)."""
    import pyarrow.fs as pafs

    if stage.filesystem.get_file_info(stage.prefix).type != pafs.FileType.NotFound:
        stage.filesystem.delete_dir(stage.prefix)


def bronze_sink(lake: Lake, app_id: str, topic: str = EVENTS_TOPIC, committed: Callable[[int], None] | None = None) -> BatchFn:
    """``foreachBatch`` function of a topic's bronze query: rows of the topic's
    :func:`~headwater.stream.spark.source.source_schema` whose ``_error`` is null go to its
    bronze table (:data:`BRONZE`: ``events`` → ``bronze.events``, :data:`EVENT_SCHEMA`, the
    rows already deduplicated; ``bad_rows`` → ``bronze.bad_rows``, :data:`BAD_ROW_SCHEMA`, as
    they are, as headwater's engine writes them; both partitioned by ``ds``); the others are
    undecodable log records and go to ``bronze.dead_letter`` (``DEAD_LETTER_SCHEMA``, column
    ``topic``). One Spark job writes both tables' files; each table commits its own
    (``app_id``, epoch). ``committed(epoch_id)`` runs once both tables hold the epoch, also
    when a replayed epoch was already there (the runner commits the consumer group's offsets
    from it)."""
    tables = (BRONZE[topic], ("bronze.dead_letter", DEAD_LETTER_SCHEMA))
    transform = functools.partial(split_bronze, topic=topic)

    def write(df, epoch_id: int) -> None:
        todo = [not _done(lake, t, app_id, epoch_id) for t, _ in tables]
        if any(todo):
            adds = spark_delta.write(df, [Target.of(lake, t, schema) for t, schema in tables], transform)
            for (table, schema), files, needed in zip(tables, adds, todo):
                if files and needed:
                    with _DEAD_LETTER_COMMIT if table == "bronze.dead_letter" else contextlib.nullcontext():
                        lake.commit_files(table, files, schema, app_id=app_id, batch_id=epoch_id)
        if committed is not None:
            committed(epoch_id)

    return write


def dead_letters(rows: pa.RecordBatch | pa.Table, topic: str) -> pa.Table:
    """Dead-letter rows (``DEAD_LETTER_SCHEMA``) from the source's error rows."""
    appended = pc.cast(rows["_appended_ms"], pa.int64()).to_pylist()
    at = [dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc) for ms in appended]
    return pa.table(
        {
            "topic": [topic] * rows.num_rows,
            "partition": rows["_partition"],
            "offset": rows["_offset"],
            "count": pc.cast(rows["_count"], pa.int64()),
            "error": rows["_error"],
            "payload": rows["_payload"],
            "appended_at": at,
            "ds": [a.date() for a in at],
        },
        schema=DEAD_LETTER_SCHEMA,
    )
