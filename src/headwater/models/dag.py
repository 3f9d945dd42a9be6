"""The batch layer's one DAG: every table the batch layer writes is a :class:`Model` here.

Four kinds of model, discovered by :func:`dag` in dependency order:

* the SQL models, ``models/<layer>/<name>.sql`` (silver and gold, :data:`MODELS`);
* the Python models: identity (``silver.identity_links``, ``silver.identity_map``,
  ``silver.identity_refused``, :mod:`headwater.models.identity`) and the dimensions updated
  in place (``silver.dim_user``, ``silver.dim_device``: their SQL file run over the new
  ``silver.events`` days merged into the stored table, :func:`_merged_from_silver`);
* one typed model per event name registered in the contract registry, ``silver.evt_<name>``
  (:mod:`headwater.registry.typed_tables`), discovered when the DAG is built;
* one SCD2 model per Postgres CDC dimension, ``silver.dim_<name>`` rebuilt from
  ``bronze.cdc_<table>`` (:mod:`headwater.sources.cdc.scd2`), discovered from the
  dimension specs the CDC readers saved.

A model holds only DAG facts: its ``inputs``, how far around its range it reads them
(``lookback_days`` / ``lookahead_days`` / ``history``), whether it is cumulative state
(``cumulative``: it also reads its own partition of the day before) and how it computes (its
SQL file, or ``compute``). Its grain, schema and partitioning are its table's declaration in
:mod:`headwater.lake.catalog` — or, for a family member, the declaration its family derives
(contract → typed schema, captured table → dimension schema), held in ``derived``.

``headwater batch`` (:func:`headwater.models.run.build`), ``headwater backfill``, the Dagster
assets and the late-data sensor (:mod:`headwater.orchestrate`) all walk :func:`dag` and plan
ranges with :func:`plan`.

Cumulative state keeps a daily build's cost flat in history. ``silver.person_state`` (per
person: first / last active day, retention cohort and the periods active in it),
``silver.exposure_state`` (per experiment, variant and person: first and latest exposure),
``silver.person_platform_state`` (per person and platform: a 32-day activity bitmap) and
``silver.experiment_state`` (per experiment and person: first exposure, first conversion
after it) hold, in partition ``ds``, the state as of the end of ``ds``; each is computed from
its latest partition before the run and the input days of the run. DAU / WAU / MAU,
calendar-month actives, retention, experiments, the experiment dimension and the variants
of conversions read those states only, so day N reads day N's events plus the state of N-1,
never all history (the day of a state to read comes from the Delta log, :func:`parameters`). The tables updated in place (the
identity links, ``silver.dim_user``, ``silver.dim_device``) record in their Delta commit
(an app transaction) the version of the input they hold, and read only what was added since.

"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from typing import Callable

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.lake import catalog, sql
from headwater.lake.catalog import TableSpec
from headwater.lake.store import Lake
from headwater.models import config as model_config
from headwater.models import identity
from headwater.registry import typed_tables
from headwater.registry.registry import Registry
from headwater.sources.cdc import scd2


@dataclass(frozen=True)
class Run:
    """What a Python model's ``compute`` gets: the ``lake``; ``con``, a SQL catalog connection
    (:mod:`headwater.lake.sql`) holding the model's inputs; the models ``config``; the ``ds``
    range ``[start, end]`` (dates, inclusive; ignored by an unpartitioned model); ``full``: a
    full rebuild (a model updating its own table from its inputs' new rows starts over)."""

    lake: Lake
    con: duckdb.DuckDBPyConnection
    config: model_config.ModelConfig
    start: dt.date
    end: dt.date
    full: bool = False  # a full rebuild: trust nothing the model stored before
    # silver.events days this build only re-stitched: their rows are as before but for person_id
    stitched: frozenset[dt.date] = frozenset()


@dataclass(frozen=True)
class Output:
    """A Python model's result: ``data`` to write (``None``: nothing to write, the table is
    left as it is), and the Delta app transaction ``(app_id, version)`` the write carries, if
    any (a CDC dimension records the bronze version it was rebuilt from)."""

    data: pa.Table | pa.RecordBatchReader | None
    txn: tuple[str, int] | None = None


Compute = Callable[[Run], Output]


@dataclass(frozen=True)
class Model:
    """One batch model writing ``table`` (``"<layer>.<name>"``).

    ``inputs``: the lake tables it reads. For output partitions ``[start, end]`` it reads
    input days ``start - lookback_days .. end + lookahead_days``, or every day up to ``end +
    lookahead_days`` if ``history``. ``cumulative``: partition ``ds`` is a state as of the end
    of ``ds``, computed from the model's own latest partition before ``start`` (rolled forward
    over days without input rows; none before the first run) and the inputs' days in
    ``[start, end]``: a change on day ``d`` changes every later partition. ``state``: a
    cumulative input whose partitions from its latest before ``start`` on it reads (the
    parameter ``$prior``; a cumulative model's is its own table). ``compute`` makes it a Python model (it runs on DuckDB
    whatever the engine); without it the model is the SQL file :attr:`sql_file`. ``derived``:
    a family member's table declaration (``None`` for a table the catalog declares itself).
    """

    table: str
    inputs: tuple[str, ...]
    lookback_days: int = 0
    lookahead_days: int = 0
    history: bool = False
    cumulative: bool = False
    state: str | None = None
    compute: Compute | None = None
    derived: TableSpec | None = None

    @property
    def spec(self) -> TableSpec:
        """The table's declaration: ``derived``, else the catalog's entry."""
        return self.derived or catalog.spec(self.table)

    @property
    def schema(self) -> pa.Schema:
        """The exact Arrow schema written (results are cast to it, columns selected by name)."""
        return self.spec.schema

    @property
    def partitioned(self) -> bool:
        """Partitioned by ``ds`` (runs overwrite ``[start, end]``), else replaced whole."""
        return bool(self.spec.partition_by)

    @property
    def sql_file(self) -> str | None:
        """``<layer>/<name>.sql`` in the ``headwater.models`` package; ``None`` for a Python model."""
        return None if self.compute else self.table.replace(".", "/") + ".sql"

    def sql(self, home: Home | None = None, config: model_config.ModelConfig | None = None) -> str:
        """The model's SQL text with a models configuration rendered in: ``config`` if given
        (the query API computes an ad-hoc funnel or retention on read with the gold model's
        own SQL this way), else ``home``'s (the default configuration without ``home``).
        A Python model that runs a SQL file of its own (a dimension updated in place) has
        that file's text. :class:`InvalidInputError` for a Python model without one and
        :class:`headwater.models.config.ConfigError` for an invalid configuration."""
        return _sql_text(self.table, config or model_config.load(home))

    @property
    def affected_days(self) -> tuple[int | None, int | None]:
        """``(lo, hi)``: a change of an input on day ``d`` may change this model's partitions
        ``d + lo .. d + hi`` (``None``: unbounded). A partition ``p`` reads ``p - lookback ..
        p + lookahead`` (all days before ``p`` with ``history``), so ``lo = -lookahead`` and
        ``hi = lookback`` (``None`` with ``history``, or a ``cumulative`` state, whose every
        later partition carries the change). ``(None, None)`` if not partitioned."""
        if not self.partitioned:
            return (None, None)
        return (-self.lookahead_days, None if self.history or self.cumulative else self.lookback_days)


def parameters(model: Model, text: str, start: dt.date, end: dt.date,
               days: Callable[[str], list[dt.date]]) -> dict[str, object]:
    """The prepared parameters ``model``'s SQL ``text`` uses, by name (an engine refuses a
    parameter the text does not use): ``start`` and ``end``, the range; ``prior``, the latest
    ``ds`` before ``start`` holding rows of the model's own table if cumulative (the state of
    the day before, rolled forward), else of its ``state`` input (``None`` if none);
    ``horizon``, the latest ``ds`` at most ``end + lookahead_days`` (any, for an
    unpartitioned model) holding rows of its first input (the state ``gold.retention`` and
    ``silver.dim_experiment`` read; ``None`` if none). ``days(table)``: the sorted ``ds`` holding rows of a
    table as the query sees it (from the Delta log for a stored table).

    Why not ``WHERE ds = (SELECT max(ds) ...)`` in the SQL: a partition filter reaches the
    scan only as a constant, so that form reads every partition of the state (its size times
    the days of history); with the day bound, one partition is read."""
    found: dict[str, object] = {k: v for k, v in (("start", start), ("end", end)) if f"${k}" in text}
    if "$prior" in text:
        found["prior"] = max((d for d in days(model.table if model.cumulative else model.state or "") if d < start), default=None)
    if "$horizon" in text:
        limit = end + dt.timedelta(days=model.lookahead_days) if model.partitioned else dt.date.max
        found["horizon"] = max((d for d in days(model.inputs[0]) if d <= limit), default=None)
    return found


LINKS_APP = "headwater-identity-links"
"""The Delta app id of ``silver.identity_links`` commits: its txn version is the
``bronze.events`` version whose rows the links hold."""


def _sql_text(table: str, config: model_config.ModelConfig) -> str:
    """``models/<layer>/<name>.sql`` of ``table`` with ``config`` rendered in;
    :class:`InvalidInputError` if there is no such file."""
    path = resources.files("headwater.models").joinpath(table.replace(".", "/") + ".sql")
    if not path.is_file():
        raise InvalidInputError(f"{table} is a Python model (compute), it has no SQL", field="model")
    return model_config.render(path.read_text(), config)


def _diff(lake: Lake, table: str, since: int) -> tuple[list[dt.date], dt.date | None] | None:
    """``(days with rows added since version since, the last ds holding rows then)``; ``None``
    as for :func:`added_days`."""
    files = lake.add_actions(table)
    try:
        before = lake.add_actions(table, since)
    except NotFoundError:
        return None
    counts: dict[dt.date, int] = {}
    for adds, sign in ((files, 1), (before, -1)):
        for ds, n in zip(adds.column("partition.ds").cast(pa.date32()).to_pylist(), adds.column("num_records").to_pylist()):
            counts[ds] = counts.get(ds, 0) + sign * (n or 0)
    if any(n < 0 for n in counts.values()):
        return None
    held = [ds for ds, n in zip(before.column("partition.ds").cast(pa.date32()).to_pylist(),
                                before.column("num_records").to_pylist()) if n is None or n > 0]
    files = files.filter(pc.invert(pc.is_in(files.column("path"), value_set=before.column("path"))))
    n = files.column("num_records")
    files = files.filter(pc.or_kleene(pc.is_null(n), pc.greater(n, 0)))
    return pc.unique(files.column("partition.ds").cast(pa.date32())).sort().to_pylist(), max(held, default=None)


def added_days(lake: Lake, table: str, since: int) -> list[dt.date] | None:
    """The ``ds`` of rows added to ``table`` after its version ``since``: those of the data
    files of the current snapshot that are not in that one (exact for appends, more than
    needed after a compaction or a partition overwrite). ``None`` (every day) if that version
    cannot be loaded any more, or a ``ds`` holds fewer rows than then (rows were deleted: what
    was derived from them cannot be updated by adding)."""
    diff = _diff(lake, table, since)
    return None if diff is None else diff[0]


def _appended_days(lake: Lake, table: str, since: int | None,
                   stitched: frozenset[dt.date] = frozenset()) -> tuple[list[dt.date], list[dt.date]] | None:
    """The days of ``table`` to merge into a model last built from its version ``since``:
    ``(new, restitched)``, the days of :func:`added_days` that come after every day it held
    then, and the others, if those are all in ``stitched`` (days whose rows changed only in
    ``person_id``); ``None`` (rebuild from every day) otherwise, or without ``since``."""
    diff = None if since is None else _diff(lake, table, since)
    if diff is None:
        return None
    days, last = diff
    old = [d for d in days if last is not None and d <= last]
    return ([d for d in days if d not in old], old) if set(old) <= stitched else None


def _identity_links(run: Run) -> Output:
    """``silver.identity_links`` updated from the bronze days with rows newer than the
    version its last commit records (all of bronze without one, or on a full rebuild)."""
    lake = run.lake
    since = None if run.full else lake.committed_batch("silver.identity_links", LINKS_APP)
    version = lake.version("bronze.events")
    for table in ("bronze.events", "silver.identity_links"):  # bronze at `version` or newer: never misses a row
        sql.register(run.con, lake, table)
    days = added_days(lake, "bronze.events", since) if since is not None else None
    return Output(identity.links(run.con, days, prior=days is not None), (LINKS_APP, version))


Restitch = Callable[[duckdb.DuckDBPyConnection, pa.Table, list[dt.date]], pa.Table]


def _merged_from_silver(table: str, run: Run, check: Callable[[duckdb.DuckDBPyConnection], bool] | None = None,
                        restitch: Restitch | None = None) -> Output:
    """A dimension ``table`` (its SQL file, parameters ``$start``, ``$end``, ``$merge``)
    updated from ``silver.events``: merged with the days that changed since the version its
    last commit records (the txn of app ``"headwater-<table>"``), when those are new days (a
    daily build); else, and when ``check`` (given the catalog connection holding the stored
    table) says the stored table no longer fits, rebuilt from all of silver (a restated day:
    a late event may change any row). Days this build only re-stitched (:attr:`Run.stitched`)
    are not new but changed only ``person_id``: ``restitch(con, merged, days)`` corrects the
    table merged with the new days for them (without ``restitch``: rebuilt)."""
    lake, con, app = run.lake, run.con, f"headwater-{table}"
    since = None if run.full else lake.committed_batch(table, app)
    version = lake.version("silver.events")
    sql.register(con, lake, "silver.events")  # at `version` or newer: never misses a row
    appended = _appended_days(lake, "silver.events", since, run.stitched if restitch else frozenset())
    days, stitched = appended if appended is not None else (None, [])
    if not sql.register(con, lake, table):  # a first run: an empty stored table
        layer, name = table.split(".")
        con.register(f"_hw_empty_{name}", catalog.spec(table).schema.empty_table())
        con.execute(f"CREATE OR REPLACE VIEW {layer}.{name} AS SELECT * FROM _hw_empty_{name}")
    merge = days is not None and (check is None or check(con))
    if not merge:  # every day of silver
        start, end = dt.date.min, dt.date.max
    elif days:
        start, end = days[0], days[-1]
    else:  # no new day: the stored table is written again as it is (every run commits once)
        start, end = dt.date.max, dt.date.min
    text = _sql_text(table, run.config)
    result = con.sql(text, params={"start": start, "end": end, "merge": merge}).to_arrow_table()
    if merge and stitched and restitch is not None:
        result = restitch(con, result, stitched)
    return Output(result, (app, version))


def _same_traits(run: Run, con: duckdb.DuckDBPyConnection) -> bool:
    """Whether silver.dim_user's stored traits are the tracked traits configured now."""
    stored = con.execute("SELECT traits FROM silver.dim_user LIMIT 1").fetchall()
    return not stored or sorted(json.loads(stored[0][0])) == sorted(run.config.tracked_traits)


# A re-stitched day's rows changed only person_id, which silver.dim_device takes from the
# device's latest event: a device whose latest event (last_seen_at, unchanged) lies on such a
# day takes that event's person as it stands now (arg_max over the same order key as the SQL
# file; events sharing that time share its day), every other device keeps its row.
_DEVICE_PERSONS = """
SELECT d.* REPLACE (CASE WHEN d.last_seen_at = s.last_ts THEN s.person_id ELSE d.person_id END AS person_id)
FROM _hw_merged AS d
LEFT JOIN (
    SELECT anonymous_id, arg_max(person_id, {'ts': event_ts, 'id': event_id, 'source': source}) AS person_id,
           max(event_ts) AS last_ts
    FROM silver.events
    WHERE ds IN ({days}) AND anonymous_id IS NOT NULL AND person_id IS NOT NULL
    GROUP BY anonymous_id
) AS s ON s.anonymous_id = d.anonymous_id
"""


def _device_persons(con: duckdb.DuckDBPyConnection, merged: pa.Table, days: list[dt.date]) -> pa.Table:
    """``merged`` (silver.dim_device) with the persons of the re-stitched ``days`` (see above)."""
    con.register("_hw_merged", merged)
    try:
        listed = ", ".join(f"DATE '{d.isoformat()}'" for d in days)
        return con.sql(_DEVICE_PERSONS.replace("{days}", listed)).to_arrow_table()
    finally:
        con.unregister("_hw_merged")


def _dim_device(run: Run) -> Output:
    return _merged_from_silver("silver.dim_device", run, restitch=_device_persons)


def _dim_user(run: Run) -> Output:
    # dim_user reads identify events only, whose person is that of their user_id: an identified
    # id, its own person whatever is stitched, unless identified users merge
    unchanged = None if run.config.merge_identified_users else (lambda con, merged, days: merged)
    return _merged_from_silver("silver.dim_user", run, partial(_same_traits, run), restitch=unchanged)


# The two identity tables come from one resolution per build: the first of them to run
# resolves, the second reads what it left in the connection, keyed by the links' Delta
# version (the version the connection holds: run_model re-registers a table after writing
# it, and a build reads every table at one version, Lake.pinned), so a resolution is reused
# only for the very links it was computed from.
def _links_key(run: Run) -> str | None:
    """None (resolve anyway) while the links table does not exist."""
    lake = run.lake
    return str(lake.version("silver.identity_links")) if lake.exists("silver.identity_links") else None


def _identity_map(run: Run) -> Output:
    return Output(identity.identity_map(run.con, run.config.merge_identified_users, _links_key(run)))


def _identity_refused(run: Run) -> Output:
    return Output(identity.refused(run.con, run.config.merge_identified_users, _links_key(run)))


TRAILING_DAYS = 30
"""The longest trailing window a gold model reports (a calendar month to date: its first day
is at most 30 days before ``ds``; silver.person_platform_state's 32-day bitmap holds it)."""

SILVER = ("silver.events",)
PERSON_PLATFORM = ("silver.person_platform_state",)
MODELS: tuple[Model, ...] = (
    Model("silver.identity_links", ("bronze.events",), compute=_identity_links),
    Model("silver.identity_map", ("silver.identity_links",), compute=_identity_map),
    Model("silver.identity_refused", ("silver.identity_links",), compute=_identity_refused),
    Model("silver.events", ("bronze.events", "silver.identity_map")),
    Model("silver.dim_user", SILVER, history=True, compute=_dim_user),
    Model("silver.dim_device", SILVER, history=True, compute=_dim_device),
    Model("silver.exposures", SILVER),
    Model("silver.exposure_state", ("silver.exposures",), cumulative=True),
    Model("silver.dim_experiment", ("silver.exposure_state",)),
    # the exposures of the days before, from the state of the day before (lookback_days = 1)
    Model("silver.conversions", ("silver.events", "silver.exposures", "silver.exposure_state"), lookback_days=1,
          state="silver.exposure_state"),
    Model("silver.person_state", SILVER, cumulative=True),
    Model("silver.person_platform_state", SILVER, cumulative=True),
    Model("silver.experiment_state", ("silver.events", "silver.exposures"), cumulative=True),
    Model("gold.events_hourly", SILVER),
    Model("gold.sessions", SILVER, lookback_days=1, lookahead_days=1),
    Model("gold.sessions_daily", ("gold.sessions",)),
    Model("gold.active_users", PERSON_PLATFORM),
    Model("gold.active_users_by_platform", PERSON_PLATFORM),
    Model("gold.active_users_monthly", PERSON_PLATFORM),
    Model("gold.retention", ("silver.person_state",), lookahead_days=366),  # the state at month 12 of a month cohort
    # the longest window the config allows; dag() narrows it to the configured funnels'
    Model("gold.funnels", SILVER, lookahead_days=model_config.MAX_FUNNEL_WINDOW_HOURS // 24),
    Model("gold.experiments", ("silver.experiment_state",)),
    # a conversion's session may have started the day before (history stays in
    # silver.conversions, so gold.sessions is not rebuilt over all history for it)
    Model("gold.conversions", ("silver.conversions", "gold.sessions"), lookback_days=1),
    Model("gold.revenue", ("gold.conversions", "gold.active_users_by_platform")),
)
"""The fixed models (every table the catalog declares with writer ``batch``), in dependency
order (every model after the models it reads)."""


def _typed(subject: str, columns: tuple[typed_tables.Column, ...], run: Run) -> Output:
    return Output(typed_tables.extract(run.con, subject, columns, run.start, run.end))


def typed_models(home: Home) -> tuple[Model, ...]:
    """One model per subject of ``home``'s contract registry: ``silver.evt_<name>`` from
    ``silver.events``, its schema derived from the subject's versions. Sorted by table."""
    registry = Registry.from_home(home)
    try:
        subjects = {s: [v.schema for v in registry.versions(s)] for s in registry.subjects()}
    finally:
        registry.close()
    models = []
    for subject, schemas in subjects.items():
        columns = tuple(typed_tables.property_columns(schemas))
        spec = typed_tables.table_spec(subject, columns)
        models.append(Model(spec.name, SILVER, compute=partial(_typed, subject, columns), derived=spec))
    return tuple(sorted(models, key=lambda m: m.table))


def _dim(spec: scd2.DimSpec, run: Run) -> Output:
    rebuilt = scd2.rebuilt(spec, run.lake, run.con)
    if rebuilt is None:
        return Output(None)
    rows, version = rebuilt
    return Output(rows, (spec.app_id, version))


def dim_models(home: Home) -> tuple[Model, ...]:
    """One model per CDC dimension of ``home`` whose change records exist (the specs its CDC
    readers saved): the SCD2 ``silver.dim_<name>`` rebuilt whole from ``bronze.cdc_<table>``.
    Sorted by table."""
    lake = Lake.of(home)
    return tuple(
        Model(s.table, (s.bronze,), compute=partial(_dim, s), derived=scd2.table_spec(s))
        for s in sorted(scd2.specs(home), key=lambda s: s.table)
        if lake.exists(s.bronze)
    )


def configured(config: model_config.ModelConfig) -> tuple[Model, ...]:
    """:data:`MODELS` with ``gold.funnels``' lookahead narrowed to ``config``'s funnels
    (:func:`headwater.models.config.funnel_lookahead_days`, what its SQL reads): a daily
    build restates the entries of the days a conversion window reaches back, not a week."""
    lookahead = model_config.funnel_lookahead_days(config)
    return tuple(replace(m, lookahead_days=lookahead) if m.table == "gold.funnels" else m for m in MODELS)


def dag(home: Home) -> tuple[Model, ...]:
    """Every model of ``home`` in dependency order: :data:`MODELS` as ``home``'s models
    configuration sets them (:func:`configured`), the typed models, the CDC dimensions. Reads
    the models configuration, the contract registry and ``<home>/cdc/`` (the families'
    members are those that exist now)."""
    return configured(model_config.load(home)) + typed_models(home) + dim_models(home)


def plan(
    start: dt.date,
    end: dt.date,
    models: tuple[Model, ...] = MODELS,
    floor: dt.date | None = None,
    ceiling: dt.date | None = None,
    stored: dict[str, tuple[dt.date, dt.date] | None] | None = None,
) -> list[tuple[Model, dt.date, dt.date]]:
    """The ``(model, start, end)`` runs that make every model correct on ``[start, end]``.

    Every model runs on ``[start, end]``. Without ``stored`` (a full build: nothing built
    before is trusted) a partitioned model read by others is also run on the days its readers
    read: ``start - lookback_days`` (from ``floor`` for a reader with ``history``, and a
    ``cumulative`` model itself runs from ``floor``: its state starts there) to ``end +
    lookahead_days``, clipped to ``[floor, ceiling]`` (the days with source data: other
    partitions would be empty) but never narrower than ``[start, end]``.

    With ``stored`` (``{table: (first, last) ds it holds, or None}`` for the partitioned
    models; an incremental build), stored partitions are taken as correct: an input is widened
    only over days its readers read that lie outside what it holds, and a model's run is
    widened *forward* over the partitions a change of its inputs' runs reaches
    (:attr:`Model.affected_days`), within what it holds — a cumulative state to its last
    stored day, and its readers with it; ``gold.retention``'s cohorts back to ``d - 366``;
    and a cumulative state that stops before ``start`` resumes the day after (from ``floor``
    if it holds nothing; ``floor`` is then also the first day with data after its last). A
    daily build of day N so runs silver on N only and restates exactly what N changes.

    Unpartitioned models keep ``[start, end]`` (ignored when run). Dependency order is kept.
    :class:`InvalidInputError` if ``start > end``."""
    if start > end:
        raise InvalidInputError(f"start: {start} is after end {end}", field="start")
    partitioned = {m.table for m in models if m.partitioned}
    ranges = {m.table: (start, end) for m in models}
    day = dt.timedelta(days=1)
    if stored is not None:
        for model in models:  # inputs first: a change flows to the readers
            held = stored.get(model.table)
            if not model.partitioned or held is None:
                continue
            lo, hi = model.affected_days
            s, e = ranges[model.table]
            for table in model.inputs:
                if table not in partitioned:
                    continue
                a, b = ranges[table]
                first = held[0] if lo is None else max(held[0], a + lo * day)
                last = held[1] if hi is None else min(held[1], b + hi * day)
                if first <= last:
                    s, e = min(s, first), max(e, last)
            if model.cumulative:  # its later partitions are computed from this one
                e = max(e, held[1])
            ranges[model.table] = (s, e)
        for model in models:  # a state resumes where it stops (from floor if it holds nothing)
            held = stored.get(model.table)
            s, e = ranges[model.table]
            if model.cumulative and (held is None or held[1] + day < s):
                resume = held[1] + day if held is not None else floor
                if resume is not None:
                    ranges[model.table] = (min(s, max(resume, floor) if floor is not None else resume), e)
    elif floor is not None:
        for model in models:
            if model.cumulative:
                ranges[model.table] = (min(floor, start), end)
    for model in reversed(models):  # readers first, so widening reaches transitive inputs
        s, e = ranges[model.table]
        for table in model.inputs:
            if table not in partitioned:
                continue
            lo = s - model.lookback_days * day
            if model.history and floor is not None:
                lo = floor
            hi = e + model.lookahead_days * day
            lo = max(lo, floor) if floor is not None else lo
            hi = min(hi, ceiling) if ceiling is not None else hi
            held = stored.get(table) if stored is not None else None
            if held is not None:  # only what the input does not hold yet
                before, after = (lo, min(hi, held[0] - day)), (max(lo, held[1] + day), hi)
                needed = [r for r in (before, after) if r[0] <= r[1]]
                if not needed:
                    continue
                lo, hi = needed[0][0], needed[-1][1]
            s0, e0 = ranges[table]
            ranges[table] = (min(s0, lo), max(e0, hi))
    return [(m, *ranges[m.table]) for m in models]
