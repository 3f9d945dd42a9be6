"""The batch layer's runner: SQL models over the catalog, written by atomic partition overwrite.

A :class:`Model` is one SQL file (``models/<layer>/<name>.sql``, its grain stated at the
top) that reads the catalog (:mod:`headwater.serve.catalog`) and returns the rows of its
target table for a ``ds`` range, given as the DuckDB prepared parameters ``$start`` and
``$end`` (dates, inclusive). :func:`run_model` runs one model for one range and replaces
exactly those ``ds`` partitions of the target (:func:`headwater.lake.tables.overwrite_partitions`,
one Delta commit, ``replaceWhere`` semantics): re-running a range rewrites it, it never
appends twice, so backfills are idempotent.

:func:`build` runs :data:`MODELS` in dependency order. A model that looks back (gold
``active_users`` reads ``silver.events`` from ``start - 27`` days) makes :func:`plan` widen
the range its inputs are built for, so after ``build(home, start, end)`` every target
partition in ``[start, end]`` is consistent with bronze, whatever was built before. The
reverse direction — a changed input day ``d`` also changes ``active_users`` on
``d .. d + 27`` — is the caller's to ask for (build a range that covers it).

Dagster orchestration (a later step) maps each :class:`Model` to a daily-partitioned asset:
``inputs`` are its upstream assets, ``lookback_days`` its partition mapping
(``TimeWindowPartitionMapping(start_offset=-lookback_days)``), :func:`run_model` its body.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake import tables
from headwater.serve import catalog

ACTIVE_USERS_SCHEMA = pa.schema(
    [
        pa.field("ds", pa.date32(), nullable=False),  # calendar day (UTC), end of the windows
        pa.field("dau", pa.int64(), nullable=False),  # distinct users active on ds
        pa.field("wau", pa.int64(), nullable=False),  # distinct users active in [ds-6, ds]
        pa.field("mau", pa.int64(), nullable=False),  # distinct users active in [ds-27, ds]
    ]
)


@dataclass(frozen=True)
class Model:
    """One batch model: ``sql_file`` (relative to the ``headwater.models`` package) computes
    the rows of ``table`` (``"<layer>.<name>"``, partitioned by ``ds``) for ``[$start, $end]``.

    ``inputs`` are the catalog tables it reads; ``lookback_days`` how many days before
    ``$start`` it reads them from (0: only the range itself). ``schema`` is the exact Arrow
    schema written (the query result is cast to it, columns selected by name)."""

    table: str
    sql_file: str
    schema: pa.Schema
    inputs: tuple[str, ...]
    lookback_days: int = 0

    def sql(self) -> str:
        """The model's SQL text."""
        return resources.files("headwater.models").joinpath(self.sql_file).read_text()


MODELS: tuple[Model, ...] = (
    Model("silver.events", "silver/events.sql", EVENT_SCHEMA, inputs=("bronze.events",)),
    Model(
        "gold.active_users",
        "gold/active_users.sql",
        ACTIVE_USERS_SCHEMA,
        inputs=("silver.events",),
        lookback_days=27,
    ),
)
"""All models, in dependency order (every model after the models it reads)."""


def source_range(home: Home, table: str = "bronze.events") -> tuple[dt.date, dt.date] | None:
    """Min and max ``ds`` holding data in ``table``, from the Delta log (no data read).

    ``None`` if the table does not exist or has no rows."""
    path = catalog.table_path(home, table)
    if not tables.exists(path):
        return None
    adds = pa.table(DeltaTable(str(path)).get_add_actions(flatten=True))
    counts = adds.column("num_records")  # null if a writer kept no statistics: assume rows
    adds = adds.filter(pc.or_kleene(pc.is_null(counts), pc.greater(counts, 0)))
    if adds.num_rows == 0:
        return None
    ds = adds.column("partition.ds").cast(pa.date32())
    return pc.min(ds).as_py(), pc.max(ds).as_py()


def plan(
    start: dt.date,
    end: dt.date,
    models: tuple[Model, ...] = MODELS,
    floor: dt.date | None = None,
) -> list[tuple[Model, dt.date, dt.date]]:
    """The ``(model, start, end)`` runs that make every model correct on ``[start, end]``.

    Every model runs on ``[start, end]``; a model read with a lookback is also run on the
    days its readers look back to (``start - lookback_days``), but not before ``floor``
    (the first day with source data: earlier partitions would be empty). Dependency order
    is kept. Raises ``ValueError`` if ``start > end``."""
    if start > end:
        raise ValueError(f"start: {start} is after end {end}")
    produced = {m.table for m in models}
    ranges = {m.table: (start, end) for m in models}
    for model in reversed(models):  # readers first, so widening reaches transitive inputs
        s, e = ranges[model.table]
        for table in model.inputs:
            if table not in produced:
                continue
            need = s - dt.timedelta(days=model.lookback_days)
            if floor is not None:
                need = max(need, floor)
            s0, e0 = ranges[table]
            ranges[table] = (min(s0, need), max(e0, e))
    return [(m, *ranges[m.table]) for m in models]


def run_model(
    home: Home,
    model: Model,
    start: dt.date,
    end: dt.date,
    con: duckdb.DuckDBPyConnection | None = None,
) -> int:
    """Run ``model`` for ``ds`` in ``[start, end]`` and overwrite those partitions of its table.

    ``con`` is a catalog connection (:func:`headwater.serve.catalog.connect`); a fresh one is
    opened (and closed) if not given. After the write the target table is re-registered in
    ``con`` at its new snapshot, so later models on the same connection read it.
    Returns the number of rows written (0 empties the range).

    Raises ``duckdb.CatalogException`` if an input table does not exist, ``ValueError`` if
    ``start > end`` or the result lacks a column of ``model.schema``,
    ``deltalake.exceptions.DeltaError`` if a row does not fit the schema (a null in a
    non-nullable column, an uncastable value: the message names the field) or lies outside
    ``[start, end]``. In every error case the table is left as it was (no commit)."""
    if start > end:
        raise ValueError(f"start: {start} is after end {end}")
    own = con is None
    if own:
        con = catalog.connect(home)
    try:
        result = con.sql(model.sql(), params={"start": start, "end": end}).to_arrow_reader()
        missing = [n for n in model.schema.names if n not in result.schema.names]
        if missing:
            raise ValueError(f"{model.sql_file}: result lacks columns {missing} of {model.table}")
        rows = 0

        def conformed() -> Iterator[pa.RecordBatch]:
            nonlocal rows
            for batch in result:
                batch = batch.select(model.schema.names).cast(model.schema)
                rows += batch.num_rows
                yield batch

        # Streamed: the result is never held whole in Python memory; delta-rs commits only
        # after the last batch, so an error in any batch leaves the table untouched.
        data = pa.RecordBatchReader.from_batches(model.schema, conformed())
        tables.overwrite_partitions(catalog.table_path(home, model.table), data, start, end)
        catalog.register(con, home, model.table)
        return rows
    finally:
        if own:
            con.close()


def build(
    home: Home,
    start: dt.date | None = None,
    end: dt.date | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Build every model in :data:`MODELS` for ``ds`` in ``[start, end]`` (inclusive).

    ``start`` / ``end`` default to the first / last ``ds`` with rows in ``bronze.events``.
    Models run in dependency order (``silver.events``, then ``gold.active_users``) over one
    catalog connection; each run is one atomic partition overwrite, so re-running any range
    gives the same tables. Inputs of models with a lookback are built for the extra days
    too (see :func:`plan`). ``progress`` receives one line per model run, e.g.
    ``"silver.events 2024-01-04..2024-06-29: 31076 rows in 0.42 s"``.

    Returns ``{table: rows written}`` (a model run on a widened range counts all of it);
    ``{}`` if bronze.events has no rows and no range was given.
    Raises ``FileNotFoundError`` if ``bronze.events`` does not exist, ``ValueError`` if
    ``start > end``, and whatever :func:`run_model` raises (models already written stay
    written: each is consistent on its own)."""
    if not tables.exists(catalog.table_path(home, "bronze.events")):
        raise FileNotFoundError(f"bronze.events: no Delta table at {catalog.table_path(home, 'bronze.events')}")
    bounds = source_range(home, "bronze.events")
    if bounds is None and (start is None or end is None):
        if progress:
            progress("bronze.events has no rows: nothing to build")
        return {}
    start = start if start is not None else bounds[0]
    end = end if end is not None else bounds[1]
    runs = plan(start, end, MODELS, floor=bounds[0] if bounds else None)
    written: dict[str, int] = {}
    con = catalog.connect(home)
    try:
        for model, s, e in runs:
            t0 = time.perf_counter()
            rows = run_model(home, model, s, e, con)
            written[model.table] = rows
            if progress:
                progress(f"{model.table} {s}..{e}: {rows} rows in {time.perf_counter() - t0:.2f} s")
    finally:
        con.close()
    return written
