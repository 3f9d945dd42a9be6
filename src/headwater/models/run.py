"""The batch layer's runner: the models of the DAG (:mod:`headwater.models.dag`) for a ``ds``
range, written through the lake (:class:`headwater.lake.store.Lake`).

:func:`run_model` runs one model for one range. A SQL model is its file
(``models/<layer>/<name>.sql``) with the models configuration (funnels, experiments, tracked
traits: :mod:`headwater.models.config`) rendered in and the range bound as the DuckDB
prepared parameters ``$start`` / ``$end`` (dates, inclusive), over a SQL catalog connection
(:mod:`headwater.lake.sql`) holding its inputs; a Python model is its ``compute``. The result
replaces exactly the ``ds`` partitions ``[start, end]`` of a partitioned table (one Delta
commit, ``replaceWhere`` semantics: re-running a range rewrites it, never appends twice, so
backfills are idempotent) and the whole of an unpartitioned one (identity, ``dim_user``,
the CDC dimensions: global over history). One exception: when a column of a partitioned
table changed type (a contract widened a typed table's property), partitions cannot be
merged, and the table is rebuilt whole over every day its inputs hold.

:func:`build` (``headwater batch``) runs every model of :func:`headwater.models.dag.dag` over
the ranges :func:`headwater.models.dag.plan` gives, so after ``build(home, start, end)`` every
partition in ``[start, end]`` is consistent with bronze, whatever was built before. Dagster
(:mod:`headwater.orchestrate`) runs the same models with the same :func:`run_model`.

Errors at this boundary are :mod:`headwater.errors` classes: a missing input table
:class:`NotFoundError`; SQL that does not bind, a result that does not fit the table, an
invalid models configuration :class:`InvalidInputError`; an I/O error or a lost Delta commit
race :class:`TransientError` (the one worth retrying). The library error is the
``__cause__``. In every error case the table is left as it was (no commit).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from headwater.config import Home
from headwater.errors import HeadwaterError, InvalidInputError, NotFoundError, TransientError
from headwater.lake import sql
from headwater.lake.store import Lake
from headwater.models import config as model_config
from headwater.models import restate
from headwater.models.dag import TRAILING_DAYS, Model, Output, Run, added_days, dag, parameters, plan


def _fits(have: pa.DataType, want: pa.DataType) -> bool:
    """Whether a stored column of type ``have`` takes values of ``want`` without a rewrite."""
    if have.equals(want):
        return True
    strings = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return any(k(have) for k in strings) and any(k(want) for k in strings)


def rebuild_range(lake: Lake, model: Model) -> tuple[dt.date, dt.date] | None:
    """``None`` if ``model``'s table takes a partition overwrite; else the range to rebuild it
    whole over — every ``ds`` its partitioned inputs hold — because a stored column has
    another type than the model's schema (Delta merges new columns, not new types)."""
    if not model.partitioned or not lake.exists(model.table):
        return None
    have = lake.schema(model.table)
    if all(_fits(have.field(f.name).type, f.type) for f in model.schema if f.name in have.names):
        return None
    spans = [r for t in model.inputs if (r := lake.ds_range(t)) is not None]
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None


def write_result(lake: Lake, model: Model, output: Output, start: dt.date, end: dt.date, whole: bool = False) -> int:
    """Write ``output`` to ``model.table`` in one commit; return the rows written (0 and no
    commit if ``output.data`` is ``None``).

    A partitioned model overwrites ``ds`` partitions ``[start, end]``; an unpartitioned one,
    or any with ``whole``, replaces the table (with ``output.txn`` when given). Columns are
    selected by name and cast to ``model.schema`` batch by batch, streamed: the result is
    never held whole in Python memory, and delta-rs commits only after the last batch.
    :class:`InvalidInputError` if the result lacks a column of ``model.schema`` or a row
    does not fit it (a null in a non-nullable column, a ``ds`` outside the range)."""
    if output.data is None:
        return 0
    result = output.data.to_reader() if isinstance(output.data, pa.Table) else output.data
    missing = [n for n in model.schema.names if n not in result.schema.names]
    if missing:
        raise InvalidInputError(f"{model.sql_file or model.table}: result lacks columns {missing} of {model.table}", field=model.table)
    rows = 0
    failure: Exception | None = None

    def conformed() -> Iterator[pa.RecordBatch]:
        nonlocal rows, failure
        try:
            for batch in result:
                try:
                    batch = batch.select(model.schema.names).cast(model.schema)
                except (ValueError, pa.ArrowInvalid, pa.ArrowTypeError) as e:  # e.g. a null in a non-nullable column
                    raise InvalidInputError(f"{model.table}: the result does not fit the table: {e}", field=model.table) from e
                rows += batch.num_rows
                yield batch
        except Exception as e:
            failure = e
            raise

    data = pa.RecordBatchReader.from_batches(model.schema, conformed())
    try:
        if model.partitioned and not whole:
            lake.overwrite_partitions(model.table, data, start, end)
        else:
            app_id, batch_id = output.txn or (None, None)
            lake.replace_table(model.table, data, app_id=app_id, batch_id=batch_id)
    except HeadwaterError:
        # delta-rs reports an error raised while it read the stream as a generic one (the lake
        # can only call that transient): the stream's own error says what happened.
        if failure is not None:
            raise failure
        raise
    return rows


@contextmanager
def _errors(model: Model) -> Iterator[None]:
    """Library errors of a model run as :mod:`headwater.errors` classes naming the model."""
    try:
        yield
    except HeadwaterError:
        raise
    except duckdb.CatalogException as e:
        raise NotFoundError(f"{model.table}: {str(e).splitlines()[0]}", field=model.table) from e
    except (duckdb.IOException, OSError) as e:
        raise TransientError(f"{model.table}: {str(e).splitlines()[0]}", field=model.table) from e
    except (duckdb.Error, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InvalidInputError(f"{model.table}: {str(e).splitlines()[0]}", field=model.table) from e


def _registered(con: duckdb.DuckDBPyConnection, lake: Lake, tables: tuple[str, ...], reader: str) -> None:
    """Register each of ``tables`` not yet in ``con`` (those already there keep their
    snapshot). :class:`NotFoundError` naming ``reader`` and the table if one does not exist."""
    have = sql.registered(con)
    for table in tables:
        if table not in have and not sql.register(con, lake, table):
            raise NotFoundError(f"{reader}: input table {table} is not built yet", field=table)


def run_model(
    home: Home,
    model: Model,
    start: dt.date,
    end: dt.date,
    con: duckdb.DuckDBPyConnection | None = None,
    engine: str | None = None,
    lake: Lake | None = None,
    full: bool = False,
    stitched: frozenset[dt.date] = frozenset(),
) -> int:
    """Run ``model`` for ``ds`` in ``[start, end]`` and write its table (see the module
    docstring); return the rows written (0 empties the range).

    ``con``: a SQL catalog connection (:func:`headwater.lake.sql.connect`) shared by several
    runs, a fresh one if not given; inputs it does not hold yet are registered at their
    current snapshot, and the written table is re-registered, so later models on the same
    connection read it. ``engine`` (default the setting ``batch.engine``): ``"spark"`` runs a
    SQL model on Spark SQL (:mod:`headwater.models.spark`); a Python model always runs on
    DuckDB. ``lake``: ``home``'s lake, to share its open tables between runs (a new one if
    not given). ``full``: part of a full rebuild (a model that updates its own table from its
    inputs' new rows starts over, :attr:`headwater.models.dag.Run.full`). ``stitched``: the
    ``silver.events`` days the build only re-stitched (:attr:`headwater.models.dag.Run.stitched`). Raises the classes of
    the module docstring, and :class:`InvalidInputError` if ``start > end``."""
    if start > end:
        raise InvalidInputError(f"start: {start} is after end {end}", field="start")
    engine = engine or home.settings.batch.engine
    lake = lake or Lake.of(home)
    own = con is None
    con = con or sql.connect(lake, files=True)
    try:
        with _errors(model):
            whole = rebuild_range(lake, model)
            if whole is not None:
                start, end = whole
            if engine == "spark" and model.compute is None:
                from headwater.models import spark

                rows = spark.run(home, lake, model, start, end, whole=whole is not None)  # written by the executors
            else:
                _registered(con, lake, model.inputs, model.table)
                if model.cumulative:  # its own latest partition before start: fresh, it was just written
                    sql.register(con, lake, model.table)
                if model.compute is not None:
                    output = model.compute(Run(lake, con, model_config.load(home), start, end, full, stitched))
                else:
                    text = model.sql(home)
                    params = parameters(model, text, start, end, lake.ds_days)
                    output = Output(con.sql(text, params=params).to_arrow_reader())
                rows = write_result(lake, model, output, start, end, whole is not None)
        sql.register(con, lake, model.table)
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
    full: bool = False,
) -> dict[str, int]:
    """Build every model of :func:`headwater.models.dag.dag` for ``ds`` in ``[start, end]``
    (inclusive): silver, the cumulative states, gold, the typed tables and the CDC dimensions.

    Without ``start`` and ``end`` (or with one of them), the days built are bounded to those
    holding data: the ``ds`` values of ``bronze.events`` (from its Delta log), grouped into
    spans by :func:`data_spans` (days less than a lookback window apart form one span, so a
    quiet day keeps its zero row and its trailing metrics), each span planned and built on its
    own. An explicit ``[start, end]`` is built whole.

    Incremental (the default): partitions already stored are taken as correct (this function
    and the late-data sensor keep them so), so a daily build of day N runs silver on N, the
    cumulative states on N from their partition of N-1, and gold on what N changes (the
    retention cohorts of the year before N, yesterday's sessions, the funnels of the week
    before): the states and gold do not grow with history, nor do silver's dedup (a window of
    days), the identity links (updated from the new bronze days) or the user and device
    dimensions (updated from the new silver days), nor do the experiment dimension and the
    variants of conversions (from ``silver.exposure_state``). What still does: the identity
    map is resolved over the whole link graph (it grows with the identifiers), the states
    hold every person seen (they grow with the persons), ``gold.retention`` rewrites the
    cohorts of up to a year before, and opening a table reads one log entry per data file
    (a file or more per day; a Delta checkpoint every :data:`CHECKPOINT_EVERY` commits keeps
    the JSON replayed short). The build runs in one :meth:`Lake.pinned` scope: each table
    is opened once and read at one version (bronze as of the build's start, a model table as
    of its last write by the build), not listed again for every question. An earlier range (a
    backfill, late data) restates the states and their readers forward to the last day they
    hold; a state that holds nothing yet, or stops before ``start``, is built from where it
    stops (or the first bronze day) first.
    Rows that landed in bronze since the last build (its version is kept in
    ``<home>/checkpoints/batch``) for days built before, the days sharing a dedup key with
    them, and silver days whose ``person_id`` the identity map now gives otherwise (a late
    identify stitching anonymous days) are restated with everything after them in the
    states and gold, so the result equals a full rebuild (:mod:`headwater.models.restate`
    finds those days without reading all history).
    ``full``: trust nothing built before, rebuild every span of bronze from its first day
    (``headwater batch --full-rebuild``); :class:`InvalidInputError` with a range.

    Models run in dependency order, on DuckDB up to two at once (:func:`_run_steps`: a model
    starts once those it reads are written; the same tables as one after another); each run
    is one atomic partition overwrite (or table replace), so re-running any range gives the same tables,
    and a build killed midway and run again ends as a clean one. ``progress`` receives one
    line per model run, e.g. ``"silver.events 2024-01-04..2024-06-29: 31076 rows in 0.42 s"``.
    ``engine`` as for :func:`run_model`.

    Returns ``{table: rows written}`` (a model run on a widened range, or on several spans, counts all of it);
    ``{}`` if bronze.events has no rows and no range was given. Raises
    :class:`NotFoundError` if ``bronze.events`` does not exist, :class:`InvalidInputError`
    if ``start > end``, and whatever :func:`run_model` raises (models already written stay
    written: each is consistent on its own)."""
    if full and (start is not None or end is not None):
        raise InvalidInputError("full: a full rebuild covers every day of bronze.events; give no range", field="full")
    lake = Lake.of(home)
    with lake.pinned():  # each table opened once, read at one version: the start's or the build's own write
        return _build(home, lake, start, end, progress, engine, full)


def _build(home: Home, lake: Lake, start: dt.date | None, end: dt.date | None,
           progress: Callable[[str], None] | None, engine: str | None, full: bool) -> dict[str, int]:
    """:func:`build` inside its :meth:`Lake.pinned` scope of ``lake``."""
    if not lake.exists("bronze.events"):
        raise NotFoundError(f"bronze.events does not exist yet in {lake.root}: nothing to build (ingest events first)",
                            field="bronze.events")
    days = lake.ds_days("bronze.events")
    bounds = (days[0], days[-1]) if days else None
    if bounds is None and (start is None or end is None):
        if progress:
            progress("bronze.events has no rows: nothing to build")
        return {}
    models = dag(home)
    if start is not None and end is not None:
        spans = [(start, end)]  # an explicit range is built as asked, empty days included
    else:
        # Only where data is: an outlier day (a clock in 2100, a stray 1970) must not make
        # the gold models generate a row per day over decades between it and the rest.
        gap = max([TRAILING_DAYS, *(m.lookback_days for m in models)]) + 1
        spans = data_spans(days, start, end, gap) or [(start or bounds[0], end or bounds[1])]
    floor, ceiling = bounds or (None, None)
    workers = _workers(lake, spans) if (engine or home.settings.batch.engine) == "duckdb" else 1
    version, base = lake.version("bronze.events"), restate.load_baseline(home)
    config = model_config.load(home)
    map_version = lake.version("silver.identity_map") if lake.exists("silver.identity_map") else None
    trusted_map = base.trusted_map(map_version, config.stitch_lookback_days)
    written: dict[str, int] = {}
    commits: dict[str, int] = {}  # commits per table made by this build
    con = sql.connect(lake, files=True)
    if workers > 1:
        con.execute(_MEMORY_LIMIT)
    try:
        rebuilt: list[tuple[dt.date, dt.date]] = []  # the silver.events ranges run so far
        # silver days whose rows are up to date but for their persons: re-stitched, not rebuilt,
        # and the dimensions only correct what that changes (set by the restatement below)
        restitched: frozenset[dt.date] = frozenset()

        def run(runs: list[tuple[Model, dt.date, dt.date]], first_span: bool = False) -> None:
            steps = []
            for model, s, e in runs:
                stitch = model.table == "silver.events" and all(s + dt.timedelta(days=i) in restitched
                                                                for i in range((e - s).days + 1))
                if model.table == "silver.events" and not stitch:
                    rebuilt.append((s, e))
                steps.append(_Step(model, s, e, stitch))

            def execute(step: _Step, c: duckdb.DuckDBPyConnection) -> int:
                if step.stitch:
                    return restitch(lake, c, step.model, step.start, step.end, config)
                return run_model(home, step.model, step.start, step.end, c, engine, lake=lake, full=full and first_span,
                                 stitched=restitched)

            def done(step: _Step, rows: int, seconds: float) -> None:
                written[step.model.table] = written.get(step.model.table, 0) + rows
                commits[step.model.table] = commits.get(step.model.table, 0) + 1
                if progress:
                    span = f"{step.start}..{step.end}" if step.model.partitioned else "(whole table)"
                    what = "rows re-stitched" if step.stitch else "rows"
                    progress(f"{step.model.table} {span}: {rows} {what} in {seconds:.2f} s")

            _run_steps(steps, lake, con, execute, done, workers=workers)

        # the whole-table readers of silver.events (the dimensions; nothing reads them) run once,
        # at the end: a run before a restatement would be thrown away by the one after it
        last = () if full else tuple(m for m in _downstream(models, "silver.events") if not m.partitioned)
        for i, (s, e) in enumerate(spans):
            # A full build trusts what it built itself only (its earlier spans). A later span
            # is its own floor: no data lies between spans, so a state is rolled over the gap.
            stored = None if full and i == 0 else _stored(lake, models)
            run([r for r in plan(s, e, models, floor=floor if i == 0 else s, ceiling=ceiling, stored=stored)
                 if r[0] not in last], first_span=i == 0)
        if not full:
            # Late rows for days built before, the days sharing a dedup key with them, and
            # retroactive stitching (silver days whose person_id the identity map now gives
            # otherwise): those silver days, and the states and gold after them, are restated.
            t0 = time.perf_counter()
            held = lake.ds_range("silver.events")
            added = [] if base.bronze_version is None else added_days(lake, "bronze.events", base.bronze_version)
            added = days if added is None else added
            late = set(added) | set(restate.dedup_neighbor_days(con, added) if held and added else [])
            late = {d for d in late if held and held[0] <= d <= held[1] and not any(s <= d <= e for s, e in rebuilt)}
            _registered(con, lake, ("silver.events", "silver.identity_map", "silver.person_state"), "build")
            if trusted_map is not None:
                state_ds = (lake.ds_range("silver.person_state") or (None, None))[1]
                remapped = restate.remapped_days(con, trusted_map, state_ds, config)
            else:
                remapped = identity_stale_days(home, con)
            if progress:
                progress(f"restatement check: {len(late)} late, {len(remapped)} re-stitched days in {time.perf_counter() - t0:.2f} s")
            if stale := sorted(late | set(remapped)):
                # silver and what reads it day by day on the stale days only; the states (and
                # what reads them) forward from the first; the whole-table models once
                readers = _downstream(models, "silver.events")
                stateful = {t for m in readers if m.cumulative for t in (x.table for x in _downstream(models, m.table))}
                flat = tuple(m for m in readers if m.table not in stateful and m.partitioned)
                stored = _stored(lake, models)
                spans_runs = [r for s, e in data_spans(stale, None, None, 1)
                              for r in plan(s, e, flat, floor=floor, ceiling=ceiling, stored=stored)]
                # days only re-stitched keep their silver rows: only their person_id is rewritten
                restitched = frozenset(set(remapped) - late)  # bronze unchanged there: only person_id moves
                run(_merged(flat, spans_runs))
                states = tuple(m for m in readers if m.table in stateful)
                run(plan(stale[0], stale[0], states, floor=floor, ceiling=ceiling, stored=_stored(lake, models)))
            run([(m, *spans[-1]) for m in last])
        restate.save_baseline(home, lake, con, version, config.stitch_lookback_days)  # only once everything above is written
        # bronze too: every build opens it (its writers, one commit a batch, leave delta-rs'
        # checkpoint every 100 commits: up to 99 JSON commits replayed per open)
        if base.bronze_version is not None:
            commits["bronze.events"] = version - base.bronze_version
        checkpoint(lake, commits)
    finally:
        con.close()
    return written


_WORKERS = 2
"""Model runs of a DuckDB build in flight at once. One run leaves much of a core idle (its
Delta write and Arrow casts are serial, as are parts of DuckDB's plans: sorts' finalisation,
window partitions), and the machine the build targets has two."""
# Each connection is a DuckDB instance of its own, by default allowed 80 % of the memory: the
# runs in flight share that (a run spills to disk sooner; the machine does not swap).
_MEMORY_LIMIT = f"SET memory_limit = '{80 // _WORKERS}%'"


PARALLEL_MIN_ROWS = 1_000_000
"""Bronze rows in a build's range from which its model runs go :data:`_WORKERS` at once. Below,
one at a time on one connection: a run on a connection of its own registers its inputs again
(measured at 20k events a day: twice the CPU, and 1.6x the wall time, of one at a time)."""


def _workers(lake: Lake, spans: list[tuple[dt.date, dt.date]]) -> int:
    """Model runs at once for a DuckDB build of ``spans``: :data:`_WORKERS` when bronze holds at
    least :data:`PARALLEL_MIN_ROWS` rows on their days (from the Delta log's file statistics), else 1."""
    adds = lake.add_actions("bronze.events")
    ds = adds.column("partition.ds").cast(pa.date32())
    inside = pa.array([False] * len(ds))
    for s, e in spans:
        inside = pc.or_(inside, pc.and_(pc.greater_equal(ds, s), pc.less_equal(ds, e)))
    rows = pc.sum(adds.column("num_records").filter(inside)).as_py() or 0
    return _WORKERS if rows >= PARALLEL_MIN_ROWS else 1


@dataclass(frozen=True)
class _Step:
    """One run of a build: ``model`` over ``[start, end]``; ``stitch``: re-stitched only (:func:`restitch`)."""

    model: Model
    start: dt.date
    end: dt.date
    stitch: bool


def _run_steps(steps: list[_Step], lake: Lake, con: duckdb.DuckDBPyConnection,
               execute: Callable[[_Step, duckdb.DuckDBPyConnection], int],
               done: Callable[[_Step, int, float], None], workers: int) -> None:
    """Run ``steps`` (in dependency order) with ``execute(step, connection)`` -> rows, up to
    ``workers`` at once, calling ``done(step, rows, seconds)`` as each finishes (in the
    calling thread).

    A step starts once every earlier step writing a table it reads, or its own, is done: each
    result is what running them one after another gives. SQL models run on a fresh catalog
    connection each (their inputs registered there at the snapshot the pinned ``lake`` reads:
    the one its writes left); Python models and re-stitching run on ``con``, one at a time
    and in order, as they may keep state in it (the identity resolution does). Each written
    table is registered again in ``con`` before a step reading it starts. On an error no
    other step starts, those running finish (each is one commit, consistent on its own), and
    the error of the earliest failed step is raised."""
    if workers <= 1:
        for step in steps:
            t0 = time.perf_counter()
            rows = execute(step, con)
            done(step, rows, time.perf_counter() - t0)
        return
    shared = [s.stitch or s.model.compute is not None for s in steps]
    needs = []
    for j, step in enumerate(steps):
        reads = {*step.model.inputs, step.model.table, *([step.model.state] if step.model.state else [])}
        needs.append({i for i in range(j) if steps[i].model.table in reads or (shared[i] and shared[j])})
    con_lock = threading.Lock()

    def work(j: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        step = steps[j]
        if shared[j]:
            with con_lock:
                rows = execute(step, con)
        else:
            own = sql.connect(lake, files=True)
            own.execute(_MEMORY_LIMIT)
            try:
                rows = execute(step, own)
            finally:
                own.close()
            with con_lock:
                sql.register(con, lake, step.model.table)  # for the Python models to come
        return rows, time.perf_counter() - t0

    finished: set[int] = set()
    running: dict[Future, int] = {}
    failed: dict[int, BaseException] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headwater-build") as pool:
        while True:
            if not failed:
                for j in range(len(steps)):
                    if len(running) < workers and j not in finished and j not in running.values() and needs[j] <= finished:
                        running[pool.submit(work, j)] = j
            if not running:
                break
            complete, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in sorted(complete, key=running.__getitem__):
                j = running.pop(future)
                try:
                    rows, seconds = future.result()
                except BaseException as e:  # noqa: BLE001 - raised below, once the running steps are done
                    failed[j] = e
                    continue
                finished.add(j)
                done(steps[j], rows, seconds)
    if failed:
        raise failed[min(failed)]


CHECKPOINT_EVERY = 10
"""Commits between two Delta checkpoints of a table a build writes or reads. Opening a table
replays its log from the last checkpoint (delta-rs writes one every 100 commits by default:
~0.2 ms per JSON commit replayed here, against ~1.5 ms to read a checkpoint of 100 files),
paid per table and build; a daily build makes one to three commits per model table."""


def checkpoint(lake: Lake, commits: dict[str, int]) -> None:
    """Write a Delta checkpoint (:meth:`Lake.checkpoint`) of each table of ``commits``
    (``{table: commits made since the caller last checked}``, by anyone) whose version crossed a
    multiple of :data:`CHECKPOINT_EVERY` with them. :class:`TransientError` if one cannot
    be written (the tables are as built: only the next open is slower)."""
    for table, n in commits.items():
        if n and lake.exists(table) and CHECKPOINT_EVERY <= (version := lake.version(table)) and version % CHECKPOINT_EVERY < n:
            lake.checkpoint(table)


def _stored(lake: Lake, models: tuple[Model, ...]) -> dict[str, tuple[dt.date, dt.date] | None]:
    """``{table: (first, last) ds holding rows}`` of the partitioned models (from the Delta logs)."""
    return {m.table: lake.ds_range(m.table) for m in models if m.partitioned}


def _merged(models: tuple[Model, ...], runs: list[tuple[Model, dt.date, dt.date]]) -> list[tuple[Model, dt.date, dt.date]]:
    """``runs`` (of several plans) as one run per model and run of overlapping or adjacent
    days, in ``models`` order: a model whose change reaches every later day (an exposure: the
    later conversions) runs once from its first day, not once per plan."""
    out = []
    for model in models:
        spans = sorted((s, e) for m, s, e in runs if m.table == model.table)
        joined: list[list[dt.date]] = []
        for s, e in spans:
            if joined and s <= joined[-1][1] + dt.timedelta(days=1):
                joined[-1][1] = max(joined[-1][1], e)
            else:
                joined.append([s, e])
        out += [(model, s, e) for s, e in joined]
    return out


def _downstream(models: tuple[Model, ...], table: str) -> tuple[Model, ...]:
    """``table``'s model and every model reading it, directly or not, in dependency order."""
    reached = {table}
    for model in models:
        if reached & set(model.inputs):
            reached.add(model.table)
    return tuple(m for m in models if m.table in reached)


def data_spans(days: list[dt.date], start: dt.date | None, end: dt.date | None, gap: int) -> list[tuple[dt.date, dt.date]]:
    """Inclusive ``(first, last)`` spans covering the sorted ``days`` within ``[start, end]``
    (either open when None): consecutive days at most ``gap`` days apart share a span, so
    no span has ``gap`` or more days in a row without data."""
    spans: list[list[dt.date]] = []
    for d in days:
        if (start is not None and d < start) or (end is not None and d > end):
            continue
        if spans and (d - spans[-1][1]).days <= gap:
            spans[-1][1] = d
        else:
            spans.append([d, d])
    return [(a, b) for a, b in spans]


# silver.events rows next to their id's silver.identity_map row, for the person rule {{person_id}}
_MAPPED = "FROM silver.events AS e LEFT JOIN silver.identity_map AS m ON m.id = coalesce(e.user_id, e.anonymous_id)"


def restitch(lake: Lake, con: duckdb.DuckDBPyConnection, model: Model, start: dt.date, end: dt.date,
             config: model_config.ModelConfig) -> int:
    """Rewrite ``silver.events`` (``model``) days ``[start, end]`` from themselves with the
    ``person_id`` the current ``silver.identity_map`` gives under ``config``'s rule (both
    tables held by ``con``; the table is re-registered after): what running the model gives on
    days whose bronze rows did not change, without reading bronze or deduplicating again. One
    partition overwrite; returns the rows written."""
    person = model_config.render("{{person_id}}", config)
    rows = con.sql(
        f"SELECT e.* REPLACE ({person} AS person_id) {_MAPPED} WHERE e.ds BETWEEN $start AND $end",
        params={"start": start, "end": end},
    ).to_arrow_reader()
    with _errors(model):
        written = write_result(lake, model, Output(rows), start, end)
    sql.register(con, lake, model.table)
    return written


def identity_stale_days(home: Home, con: duckdb.DuckDBPyConnection | None = None) -> list[dt.date]:
    """The ``ds`` of ``silver.events`` holding an event whose stored ``person_id`` differs from
    what the current ``silver.identity_map`` gives (the rule of ``silver/events.sql``): the
    days to restate after identity changed (a late ``identify`` stitches earlier anonymous
    events). Sorted; ``[]`` if either table does not exist. ``con``: a catalog connection to
    read through (tables it holds keep their snapshot), a fresh one if not given."""
    lake = Lake.of(home)
    needs = ("silver.events", "silver.identity_map")
    if not all(lake.exists(t) for t in needs):
        return []
    own = con is None
    con = con or sql.connect(lake, files=True)
    try:
        _registered(con, lake, needs, "identity_stale_days")
        person = model_config.render("{{person_id}}", model_config.load(home))
        rows = con.sql(f"SELECT DISTINCT e.ds {_MAPPED} WHERE e.person_id IS DISTINCT FROM {person} ORDER BY e.ds").fetchall()
        return [r[0] for r in rows]
    finally:
        if own:
            con.close()
