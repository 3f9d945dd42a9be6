"""The batch layer's runner: models over the catalog, written by atomic partition overwrite.

A :class:`Model` is one SQL file (``models/<layer>/<name>.sql``, its grain stated at the
top) that reads the catalog (:mod:`headwater.serve.catalog`) and returns the rows of its
target table for a ``ds`` range, given as the DuckDB prepared parameters ``$start`` and
``$end`` (dates, inclusive); the models configuration (funnels, experiments, tracked
traits: :mod:`headwater.models.config`) is rendered into the text by :meth:`Model.sql`.
:func:`run_model` runs one model for one range and replaces exactly those ``ds`` partitions
of the target (:func:`headwater.lake.tables.overwrite_partitions`, one Delta commit,
``replaceWhere`` semantics): re-running a range rewrites it, it never appends twice, so
backfills are idempotent. Two models are not partitioned: ``silver.identity_map`` /
``silver.identity_refused`` (identity is global over history, :mod:`headwater.models.identity`,
a vectorised Python model on DuckDB) and ``silver.dim_user`` (SCD2 rebuilt from every
``identify``) are replaced whole on every run (``Model.partitioned`` false; ``start`` /
``end`` are ignored).

Which input days a model reads, for output partitions ``[start, end]``:
``[start - lookback_days, end + lookahead_days]``, or every day up to ``end +
lookahead_days`` when ``history`` is set (retention's first-active day, experiments'
cumulative exposures). :func:`plan` widens the range each input is built for accordingly
(within the days bronze has: ``floor`` .. ``ceiling``), so after ``build(home, start, end)``
every target partition in ``[start, end]`` is consistent with bronze, whatever was built
before. The reverse direction is :attr:`Model.affected_days`: a change of an input on day
``d`` changes partitions ``d + lo .. d + hi`` (the late-data sensor restates those).

Dagster (:mod:`headwater.orchestrate`) maps each :class:`Model` to a daily-partitioned asset
(an unpartitioned one for ``partitioned=False``): ``inputs`` are its upstream assets,
``lookback_days`` / ``lookahead_days`` / ``history`` its partition mapping,
:func:`run_model` its body.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from headwater.config import Home
from headwater.lake import tables
from headwater.models import config as model_config
from headwater.models import identity
from headwater.lake.schemas import (
    ACTIVE_USERS_BY_PLATFORM_SCHEMA,
    ACTIVE_USERS_SCHEMA,
    DIM_USER_SCHEMA,
    EVENTS_HOURLY_SCHEMA,
    EXPERIMENTS_SCHEMA,
    FUNNELS_SCHEMA,
    IDENTITY_MAP_SCHEMA,
    IDENTITY_REFUSED_SCHEMA,
    RETENTION_SCHEMA,
    SESSIONS_SCHEMA,
    SILVER_EVENTS_SCHEMA,
)
from headwater.serve import catalog

Compute = Callable[[duckdb.DuckDBPyConnection, model_config.ModelConfig], pa.Table]


@dataclass(frozen=True)
class Model:
    """One batch model: ``sql_file`` (relative to the ``headwater.models`` package) computes
    the rows of ``table`` (``"<layer>.<name>"``, partitioned by ``ds``) for ``[$start, $end]``.

    ``inputs`` are the catalog tables it reads. For output partitions ``[start, end]`` it
    reads input days ``start - lookback_days .. end + lookahead_days``, or every day up to
    ``end + lookahead_days`` if ``history``. ``schema`` is the exact Arrow schema written
    (the query result is cast to it, columns selected by name). ``partitioned=False``: the
    table has no ``ds`` and is replaced whole on every run (``start`` / ``end`` ignored).
    ``compute`` (instead of ``sql_file``): a Python model, ``compute(con, config) ->
    pa.Table`` over a DuckDB catalog connection; it runs on DuckDB whatever the engine."""

    table: str
    sql_file: str | None
    schema: pa.Schema
    inputs: tuple[str, ...]
    lookback_days: int = 0
    lookahead_days: int = 0
    history: bool = False
    partitioned: bool = True
    compute: Compute | None = None

    def sql(self, home: Home | None = None) -> str:
        """The model's SQL text with ``home``'s models configuration rendered in (the
        default configuration without ``home``). Raises ``TypeError`` for a Python model and
        :class:`headwater.models.config.ConfigError` for an invalid configuration."""
        if self.sql_file is None:
            raise TypeError(f"{self.table} is a Python model (compute), it has no SQL")
        text = resources.files("headwater.models").joinpath(self.sql_file).read_text()
        return model_config.render(text, model_config.load(home))

    @property
    def affected_days(self) -> tuple[int | None, int | None]:
        """``(lo, hi)``: a change of an input on day ``d`` may change this model's partitions
        ``d + lo .. d + hi`` (``None``: unbounded). A partition ``p`` reads ``p - lookback ..
        p + lookahead`` (all days before ``p`` with ``history``), so ``lo = -lookahead`` and
        ``hi = lookback`` (``None`` with ``history``). ``(None, None)`` if not partitioned."""
        if not self.partitioned:
            return (None, None)
        return (-self.lookahead_days, None if self.history else self.lookback_days)


# The two identity tables come from one resolution, run once per table: the link graph is
# small next to the events, and each model stays a plain function of the catalog.
def _identity_map(con: duckdb.DuckDBPyConnection, config: model_config.ModelConfig) -> pa.Table:
    """silver.identity_map — grain: one row per identifier (anonymous id or user id) linked by
    identify / alias, with the person_id it resolves to (union-find over the links; merging two
    identified users refused by default). Rebuilt whole from bronze.events on every run; see
    headwater.models.identity."""
    return identity.resolve(con, config.merge_identified_users)[0]


def _identity_refused(con: duckdb.DuckDBPyConnection, config: model_config.ModelConfig) -> pa.Table:
    """silver.identity_refused — grain: one row per refused link (an identify / alias that
    would merge two identified users), with the persons each side stays with. Rebuilt whole
    from bronze.events on every run; see headwater.models.identity."""
    return identity.resolve(con, config.merge_identified_users)[1]


SILVER = ("silver.events",)
MODELS: tuple[Model, ...] = (
    Model("silver.identity_map", None, IDENTITY_MAP_SCHEMA, ("bronze.events",), partitioned=False, compute=_identity_map),
    Model("silver.identity_refused", None, IDENTITY_REFUSED_SCHEMA, ("bronze.events",), partitioned=False, compute=_identity_refused),
    Model("silver.events", "silver/events.sql", SILVER_EVENTS_SCHEMA, ("bronze.events", "silver.identity_map")),
    Model("silver.dim_user", "silver/dim_user.sql", DIM_USER_SCHEMA, ("bronze.events", "silver.identity_map"), partitioned=False),
    Model("gold.events_hourly", "gold/events_hourly.sql", EVENTS_HOURLY_SCHEMA, SILVER),
    Model("gold.sessions", "gold/sessions.sql", SESSIONS_SCHEMA, SILVER, lookback_days=1, lookahead_days=1),
    Model("gold.active_users", "gold/active_users.sql", ACTIVE_USERS_SCHEMA, SILVER, lookback_days=27),
    Model("gold.active_users_by_platform", "gold/active_users_by_platform.sql", ACTIVE_USERS_BY_PLATFORM_SCHEMA, SILVER, lookback_days=27),
    Model("gold.retention", "gold/retention.sql", RETENTION_SCHEMA, SILVER, lookahead_days=90, history=True),
    Model("gold.funnels", "gold/funnels.sql", FUNNELS_SCHEMA, SILVER, lookahead_days=model_config.MAX_FUNNEL_WINDOW_HOURS // 24),
    Model("gold.experiments", "gold/experiments.sql", EXPERIMENTS_SCHEMA, SILVER, history=True),
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
    ceiling: dt.date | None = None,
) -> list[tuple[Model, dt.date, dt.date]]:
    """The ``(model, start, end)`` runs that make every model correct on ``[start, end]``.

    Every model runs on ``[start, end]``; a partitioned model read by others is also run on
    the days its readers read: ``start - lookback_days`` (from ``floor`` for a reader with
    ``history``) to ``end + lookahead_days``, clipped to ``[floor, ceiling]`` (the days with
    source data: other partitions would be empty) but never narrower than ``[start, end]``.
    Unpartitioned models keep ``[start, end]`` (ignored when run). Dependency order is kept.
    Raises ``ValueError`` if ``start > end``."""
    if start > end:
        raise ValueError(f"start: {start} is after end {end}")
    partitioned = {m.table for m in models if m.partitioned}
    ranges = {m.table: (start, end) for m in models}
    for model in reversed(models):  # readers first, so widening reaches transitive inputs
        s, e = ranges[model.table]
        for table in model.inputs:
            if table not in partitioned:
                continue
            lo = s - dt.timedelta(days=model.lookback_days)
            if model.history and floor is not None:
                lo = floor
            hi = e + dt.timedelta(days=model.lookahead_days)
            lo = max(lo, floor) if floor is not None else lo
            hi = min(hi, ceiling) if ceiling is not None else hi
            s0, e0 = ranges[table]
            ranges[table] = (min(s0, lo), max(e0, hi))
    return [(m, *ranges[m.table]) for m in models]


ENGINES = ("duckdb", "spark")
ENGINE_ENV = "HEADWATER_ENGINE"


def engine_from_env(engine: str | None = None) -> str:
    """The SQL engine to run models on: ``engine`` if given, else ``$HEADWATER_ENGINE``, else
    ``"duckdb"`` (the embedded default; ``"spark"`` runs the same SQL transpiled on Spark SQL,
    see :mod:`headwater.models.spark`). Raises ``ValueError`` for any other name."""
    name = engine or os.environ.get(ENGINE_ENV) or "duckdb"
    if name not in ENGINES:
        raise ValueError(f"engine: {name!r} is not one of {', '.join(ENGINES)} (from --engine or ${ENGINE_ENV})")
    return name


def write_result(home: Home, model: Model, result: pa.RecordBatchReader, start: dt.date, end: dt.date) -> int:
    """Overwrite ``ds`` partitions ``[start, end]`` of ``model.table`` with ``result`` (one
    commit); return the rows written. Shared by both engines. An unpartitioned model
    (``model.partitioned`` false) replaces the whole table instead
    (:func:`headwater.lake.tables.replace_table`), ``start`` / ``end`` unused.

    Columns are selected by name and cast to ``model.schema`` batch by batch. Raises
    ``ValueError`` if ``result`` lacks a column of ``model.schema``, and what
    :func:`headwater.lake.tables.overwrite_partitions` raises (nothing is committed then)."""
    missing = [n for n in model.schema.names if n not in result.schema.names]
    if missing:
        raise ValueError(f"{model.sql_file or model.table}: result lacks columns {missing} of {model.table}")
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
    if model.partitioned:
        tables.overwrite_partitions(catalog.table_path(home, model.table), data, start, end)
    else:
        tables.replace_table(catalog.table_path(home, model.table), data)
    return rows


def run_model(
    home: Home,
    model: Model,
    start: dt.date,
    end: dt.date,
    con: duckdb.DuckDBPyConnection | None = None,
    engine: str | None = None,
) -> int:
    """Run ``model`` for ``ds`` in ``[start, end]`` and overwrite those partitions of its table.

    ``con`` is a catalog connection (:func:`headwater.serve.catalog.connect`); a fresh one is
    opened (and closed) if not given. After the write the target table is re-registered in
    ``con`` at its new snapshot, so later models on the same connection read it.
    ``engine`` is resolved by :func:`engine_from_env`; on ``"spark"`` a SQL model runs through
    :func:`headwater.models.spark.run_spark` (which raises ``FileNotFoundError`` for a
    missing input table instead of ``duckdb.CatalogException``); a Python model (identity)
    always runs on DuckDB. An unpartitioned model replaces its whole table.
    Returns the number of rows written (0 empties the range).

    Raises ``duckdb.CatalogException`` if an input table does not exist, ``ValueError`` if
    ``start > end`` or the result lacks a column of ``model.schema``,
    ``deltalake.exceptions.DeltaError`` if a row does not fit the schema (a null in a
    non-nullable column, an uncastable value: the message names the field) or lies outside
    ``[start, end]``. In every error case the table is left as it was (no commit)."""
    if start > end:
        raise ValueError(f"start: {start} is after end {end}")
    engine = engine_from_env(engine)
    if engine == "spark" and model.compute is None:
        from headwater.models.spark import run_spark

        rows = run_spark(home, model, start, end)
        if con is not None:
            catalog.register(con, home, model.table)
        return rows
    own = con is None
    if own:
        con = catalog.connect(home)
    try:
        if model.compute is not None:
            result = model.compute(con, model_config.load(home)).to_reader()
        else:
            sql = model.sql(home)
            params = {k: v for k, v in (("start", start), ("end", end)) if f"${k}" in sql}  # unused ones are refused
            result = con.sql(sql, params=params).to_arrow_reader()
        rows = write_result(home, model, result, start, end)
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
    engine: str | None = None,
) -> dict[str, int]:
    """Build every model in :data:`MODELS` for ``ds`` in ``[start, end]`` (inclusive).

    ``start`` / ``end`` default to the first / last ``ds`` with rows in ``bronze.events``.
    Models run in dependency order (identity, ``silver.events``, ``silver.dim_user``, then
    gold) over one catalog connection; each run is one atomic partition overwrite (or table
    replace), so re-running any range gives the same tables. Inputs are built for every day
    their readers read (see :func:`plan`; retention and experiments read all history, so
    ``silver.events`` is rebuilt from the first bronze day, which also re-stitches earlier
    anonymous events to persons identified since). ``progress`` receives one line per model run, e.g.
    ``"silver.events 2024-01-04..2024-06-29: 31076 rows in 0.42 s"``. ``engine`` picks the
    SQL engine for every model (see :func:`engine_from_env`).

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
    runs = plan(start, end, MODELS, floor=bounds[0] if bounds else None, ceiling=bounds[1] if bounds else None)
    written: dict[str, int] = {}
    con = catalog.connect(home)
    try:
        for model, s, e in runs:
            t0 = time.perf_counter()
            rows = run_model(home, model, s, e, con, engine)
            written[model.table] = rows
            if progress:
                span = f"{s}..{e}" if model.partitioned else "(whole table)"
                progress(f"{model.table} {span}: {rows} rows in {time.perf_counter() - t0:.2f} s")
        from headwater.registry import typed_tables  # silver.evt_<name>: one typed table per registered event name

        written.update(typed_tables.build(home, start, end, con, progress=progress))
        from headwater.sources.cdc import scd2  # silver.dim_<table>: SCD2 of Postgres CDC records, rebuilt whole

        written.update(scd2.build(home))
    finally:
        con.close()
    return written


def identity_stale_days(home: Home, con: duckdb.DuckDBPyConnection | None = None) -> list[dt.date]:
    """The ``ds`` of ``silver.events`` holding an event whose stored ``person_id`` differs from
    what the current ``silver.identity_map`` gives (the rule of ``silver/events.sql``): the
    days to restate after identity changed (a late ``identify`` stitches earlier anonymous
    events). Sorted; ``[]`` if either table does not exist."""
    own = con is None
    if own:
        con = catalog.connect(home)
    try:
        names = {r[0] for r in con.sql("SELECT schema_name || '.' || view_name FROM duckdb_views()").fetchall()}
        if not {"silver.events", "silver.identity_map"} <= names:
            return []
        rows = con.sql(
            """
            SELECT DISTINCT e.ds
            FROM silver.events AS e
            LEFT JOIN silver.identity_map AS mu ON mu.id = e.user_id
            LEFT JOIN silver.identity_map AS ma ON ma.id = e.anonymous_id
            WHERE e.person_id IS DISTINCT FROM CASE WHEN e.user_id IS NOT NULL THEN coalesce(mu.person_id, e.user_id)
                                                    ELSE coalesce(ma.person_id, e.anonymous_id) END
            ORDER BY e.ds
            """
        ).fetchall()
        return [r[0] for r in rows]
    finally:
        if own:
            con.close()
