"""``foreachBatch`` sinks: Spark micro-batches → Delta tables through delta-rs, exactly once.

Spark's own checkpoint (``offsets/N`` + ``commits/N``, the design headwater's engine
copies) replays an unfinished epoch N with the same input after a crash and calls the
``foreachBatch`` function again with the same ``epoch_id``. Each sink commit here carries the
Delta application transaction ``(app_id, epoch_id)`` (Delta protocol "Transaction
Identifiers"; the pattern Spark's docs give for idempotent ``foreachBatch`` writes); before
writing, the sink reads ``transaction_version(app_id)`` and skips an epoch the table
already holds. Together: every epoch lands once.

Output modes: ``append`` → one appended file set per epoch (:meth:`headwater.lake.store.Lake.append_once`);
``update`` → a MERGE on the window key (:meth:`headwater.lake.store.Lake.upsert_once`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from headwater.events import EVENT_SCHEMA, EVENTS_TOPIC
from headwater.lake.store import Lake
from headwater.stream import sketches
from headwater.stream.records import DEAD_LETTER_SCHEMA

BatchFn = Callable[[object, int], None]


def _done(lake: Lake, table: str, app_id: str, epoch_id: int) -> bool:
    committed = lake.committed_batch(table, app_id)
    return committed is not None and committed >= epoch_id


def arrow(df) -> pa.Table:
    """A Spark DataFrame's rows as Arrow (``DataFrame.toArrow``, Spark ≥ 4.0): timestamps
    come back as ``timestamp[us, tz=UTC]`` since the session time zone is UTC."""
    return df.toArrow()


def window_sink(lake: Lake, table: str, app_id: str, output_mode: str, keys: Sequence[str], distinct: Sequence[str] = ()) -> BatchFn:
    """``foreachBatch`` function writing an aggregate's epoch output to ``table``
    (``realtime.<name>``): appended (``append``) or merged on ``keys`` (``update``); empty epochs write
    nothing. Each ``distinct`` measure's column (float64) is set to the estimate of its
    ``<name>_sketch`` (serialized DataSketches HLL)."""

    def write(df, epoch_id: int) -> None:
        data = arrow(df)
        if data.num_rows == 0 or _done(lake, table, app_id, epoch_id):
            return
        for name in distinct:
            est = sketches.estimates(pl.Series(data[f"{name}_sketch"])).to_arrow()
            data = data.set_column(data.schema.get_field_index(name), pa.field(name, pa.float64()), est)
        if output_mode == "append":
            lake.append_once(table, data, app_id=app_id, batch_id=epoch_id)
        else:
            data = data.append_column("_delete", pa.array(np.zeros(data.num_rows, dtype=bool)))
            lake.upsert_once(table, data, tuple(keys), app_id=app_id, batch_id=epoch_id)

    return write


def bronze_sink(lake: Lake, app_id: str, topic: str = EVENTS_TOPIC) -> BatchFn:
    """``foreachBatch`` function of the bronze query: rows of
    :data:`headwater.stream.spark.source.SCHEMA` (already deduplicated) whose ``_error`` is
    null go to ``bronze.events`` (:data:`EVENT_SCHEMA`, partitioned by ``ds``); the others are
    undecodable log records and go to ``bronze.dead_letter`` (``DEAD_LETTER_SCHEMA``)."""

    def write(df, epoch_id: int) -> None:
        data = arrow(df)
        bad = pc.is_valid(data["_error"])
        events = data.filter(pc.invert(bad))
        dead = data.filter(bad)
        if events.num_rows and not _done(lake, "bronze.events", app_id, epoch_id):
            lake.append_once("bronze.events", events.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA), app_id=app_id, batch_id=epoch_id)
        if dead.num_rows and not _done(lake, "bronze.dead_letter", app_id, epoch_id):
            lake.append_once("bronze.dead_letter", dead_letters(dead, topic), app_id=app_id, batch_id=epoch_id)

    return write


def dead_letters(rows: pa.Table, topic: str) -> pa.Table:
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
