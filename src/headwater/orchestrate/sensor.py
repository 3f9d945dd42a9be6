"""The late-data sensor: restate built partitions when their inputs change after the build.

Every evaluation (each 30 s under ``dagster-daemon``) looks at what changed since its cursor
(``{table: Delta version, "materializations": storage id}`` as JSON):

1. for every external input of the models (``bronze.events``: whatever no model produces),
   the days whose rows landed since the cursor (:func:`late_data.changed_days`). Without a
   cursor the sensor starts from the
   oldest ``input_versions[table]`` recorded by the latest materialisation of each model
   reading the table (what the last build saw), else from the current version;
2. when ``silver.identity_map`` has a new version since the cursor (it is updated by
   any run — a late ``identify``, or one today that stitches last week's anonymous events),
   the ``silver.events`` days whose stored ``person_id`` no longer matches it
   (:func:`headwater.models.run.identity_stale_days`): retroactive stitching, restated;
3. the daily partitions materialised since the cursor (the event log's storage id): a
   reader partition whose input was materialised after it is stale
   (:func:`late_data.stale_readers`) — the daily run of day ``D`` builds ``D`` only, but the
   retention cohorts ``D-96 .. D-1``, the sessions of ``D-1`` and funnels started in the week
   before read ``D`` too;
4. the partitions to restate (:func:`late_data.restatement`): all of the above and everything
   downstream (trailing windows: ``d .. d+27`` for ``gold.active_users``; retention cohorts
   ``d-96 ..``), clipped to what each model has been built for — Dagster's materialised
   partitions together with the ``ds`` range in the model's Delta table, so builds made by
   ``headwater batch`` count too — and to the partitions that exist. Rows landing for a day
   no model has built yet (today's events) restate nothing: the schedule builds that day;
5. run requests (:func:`late_data.runs`): models that read one another share a run (Dagster
   orders steps within a run, not runs), one per contiguous range of days, given by
   Dagster's partition-range tags (``dagster/asset_partition_range_start`` / ``_end``);
   ``run_key`` names the cursor, so a re-evaluated tick launches nothing twice. The
   restatement runs' own materialisations come after their inputs', so they make nothing
   stale: the sensor settles.

The changed input days are also reported as ``AssetObservation`` s of the input asset (one
per ``ds``, with the Delta version), so the UI shows when late rows landed.
"""

from __future__ import annotations

import datetime as dt
import json

from dagster import (
    AssetObservation,
    AssetRecordsFilter,
    AssetSelection,
    DagsterInstance,
    DagsterRunStatus,
    DailyPartitionsDefinition,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.events import DagsterEventType
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.models.dag import Model
from headwater.models.run import identity_stale_days
from headwater.orchestrate import late_data
from headwater.orchestrate.assets import asset_key

SENSOR_NAME = "late_data"
INTERVAL_S = 30
TRIGGER_TAG = "headwater/trigger"
IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
MATERIALIZATIONS = "materializations"  # cursor key: the newest event-log storage id seen
# Unpartitioned tables whose change reaches a partitioned reader only on the days a content
# check finds stale, after the table was rebuilt: {table: (reader, stale days of the reader)}.
STALE_READER_DAYS = {"silver.identity_map": ("silver.events", identity_stale_days)}


def range_tags(start: dt.date, end: dt.date) -> dict[str, str]:
    """Tags that make a run of daily-partitioned assets cover ``[start, end]`` (inclusive)."""
    return {ASSET_PARTITION_RANGE_START_TAG: start.isoformat(), ASSET_PARTITION_RANGE_END_TAG: end.isoformat()}


def built_range(instance: DagsterInstance, home: Home, model: Model) -> tuple[dt.date, dt.date] | None:
    """What ``model`` has been built for: for a partitioned model the first and last ``ds`` of
    Dagster's materialised partitions together with the ``ds`` range holding rows in its Delta
    table; :data:`late_data.ALWAYS` for an unpartitioned one whose table exists; ``None`` if
    never built."""
    lake = Lake.of(home)
    if not model.partitioned:
        return late_data.ALWAYS if lake.exists(model.table) else None
    days = [dt.date.fromisoformat(k) for k in instance.get_materialized_partitions(asset_key(model.table))]
    days += list(lake.ds_range(model.table) or ())
    return (min(days), max(days)) if days else None


def baseline_version(instance: DagsterInstance, table: str, readers: list[Model], current: int) -> int:
    """Where to start without a cursor: the oldest version of ``table`` that the latest
    materialisation of a reader recorded in ``input_versions``; ``current`` if none did."""
    seen = []
    for model in readers:
        event = instance.get_latest_materialization_event(asset_key(model.table))
        if event is None or event.asset_materialization is None:
            continue
        versions = event.asset_materialization.metadata.get("input_versions")
        if versions is not None and table in versions.value:
            seen.append(int(versions.value[table]))
    return min(seen) if seen else current


def clip(bounds: tuple[dt.date, dt.date] | None, partitions: DailyPartitionsDefinition) -> tuple[dt.date, dt.date] | None:
    """``bounds`` intersected with the partitions that exist now (first .. last complete day)."""
    last_key = partitions.get_last_partition_key()
    if bounds is None or last_key is None:
        return None
    first = max(bounds[0], partitions.start.date())
    last = min(bounds[1], dt.date.fromisoformat(last_key))
    return (first, last) if first <= last else None


def _days_tag(days) -> str:
    """Comma-separated ISO days for a run tag (bounded: tags are for people, not machines)."""
    return ",".join(sorted(d.isoformat() for d in days))[:200] or "none"


def input_changes(
    instance: DagsterInstance, home: Home, models: tuple[Model, ...], state: dict[str, int]
) -> dict[str, set[dt.date]]:
    """Step 1: ``{external input: days with rows added since state[table]}``; advances ``state``."""
    lake = Lake.of(home)
    produced = {m.table for m in models}
    changed = {}
    for table in sorted({t for m in models for t in m.inputs if t not in produced}):
        if not lake.exists(table):
            continue
        since = state.get(table)
        if since is None:
            since = baseline_version(instance, table, [m for m in models if table in m.inputs], lake.version(table))
        state[table], days = late_data.changed_days(lake, table, since)
        if days:
            changed[table] = days
    return changed


def stale_seeds(home: Home, deferred: frozenset[str], state: dict[str, int]) -> dict[str, set[dt.date]]:
    """Step 2: ``{reader: stale days}`` for each table in ``deferred`` rebuilt since ``state``;
    advances ``state``."""
    lake = Lake.of(home)
    seeds = {}
    for table in sorted(deferred):
        if lake.exists(table) and state.get(table) != (version := lake.version(table)):
            state[table] = version
            reader, stale_days = STALE_READER_DAYS[table]
            if days := set(stale_days(home)):
                seeds[reader] = days
    return seeds


def new_materialisations(
    instance: DagsterInstance, models: tuple[Model, ...], after: int | None
) -> tuple[dict[str, dict[dt.date, int]], int | None]:
    """Step 3 input: ``({model: {day: storage id}}, newest storage id)`` of the daily
    partitions materialised after event-log storage id ``after`` (all, if ``None``), for
    models that partitioned models read."""
    read = {t for m in models if m.partitioned for t in m.inputs}
    out: dict[str, dict[dt.date, int]] = {}
    newest = after
    for model in models:
        if not model.partitioned or model.table not in read:
            continue
        cursor = None
        while True:
            page = instance.fetch_materializations(
                AssetRecordsFilter(asset_key(model.table), after_storage_id=after), limit=1000, cursor=cursor, ascending=True
            )
            for record in page.records:
                if record.partition_key:
                    day = dt.date.fromisoformat(record.partition_key)
                    out.setdefault(model.table, {})[day] = record.storage_id
                newest = max(newest or 0, record.storage_id)
            if not page.has_more:
                break
            cursor = page.cursor
    return out, newest


def latest_materialisations(instance: DagsterInstance, models: tuple[Model, ...]) -> dict[str, dict[dt.date, int]]:
    """``{model: {day: storage id of its latest materialisation}}`` for partitioned models."""
    return {
        m.table: {
            dt.date.fromisoformat(k): v
            for k, v in instance.get_latest_storage_id_by_partition(asset_key(m.table), DagsterEventType.ASSET_MATERIALIZATION).items()
        }
        for m in models
        if m.partitioned
    }


def evaluate(
    instance: DagsterInstance,
    home: Home,
    models: tuple[Model, ...],
    partitions: DailyPartitionsDefinition,
    cursor: str | None,
) -> SensorResult:
    """One evaluation of the sensor (see the module docstring). Reads only; the runs it
    requests do the writing."""
    # A run in flight has materialised some partitions and not yet their readers: looked at
    # now, those readers would seem stale. Wait for it (runs are serial here anyway).
    active = instance.get_runs(RunsFilter(statuses=IN_FLIGHT), limit=1)
    if active:
        return SensorResult(skip_reason=SkipReason(f"run {active[0].run_id} is in flight: looking again after it"))
    state: dict[str, int] = json.loads(cursor) if cursor else {}
    produced = {m.table for m in models}
    deferred = frozenset(t for t, (reader, _) in STALE_READER_DAYS.items() if {t, reader} <= produced)
    changed = input_changes(instance, home, models, state)
    seeds = stale_seeds(home, deferred, state)
    materialised, state[MATERIALIZATIONS] = new_materialisations(instance, models, state.get(MATERIALIZATIONS))
    new_cursor = json.dumps(state, sort_keys=True)
    if not changed and not seeds and not materialised:
        return SensorResult(skip_reason=SkipReason("no new input rows or materialisations"), cursor=new_cursor)
    observations = [
        AssetObservation(asset_key(table), partition=d.isoformat(), metadata={"delta_version": state[table]})
        for table, days in changed.items()
        for d in sorted(days)
        if partitions.has_partition_key(d.isoformat())
    ]
    built = {m.table: built_range(instance, home, m) for m in models}
    built = {t: b if b is late_data.ALWAYS else clip(b, partitions) for t, b in built.items()}
    # days after everything built are the schedule's to build, not late (today's events)
    horizon = max((b[1] for t, b in built.items() if b is not None and b is not late_data.ALWAYS), default=None)
    changed = {t: late for t, days in changed.items() if (late := {d for d in days if horizon and d <= horizon})}
    if materialised:
        outdated = late_data.stale_readers(models, materialised, latest_materialisations(instance, models), built)
        for table, days in outdated.items():
            seeds[table] = seeds.get(table, set()) | days
    plan = late_data.restatement(models, changed, built, seeds, deferred)
    late = _days_tag(d for days in changed.values() for d in days)
    stale = _days_tag(d for days in seeds.values() for d in days)
    requests = [
        RunRequest(
            run_key=f"{SENSOR_NAME}:{new_cursor}:{start or 'whole'}..{end or ''}",
            asset_selection=[asset_key(t) for t in targets],
            tags={
                **(range_tags(start, end) if start else {}),
                TRIGGER_TAG: SENSOR_NAME,
                "headwater/late_ds": late,
                "headwater/stale_ds": stale,
            },
        )
        for start, end, targets in late_data.runs(plan, models)
    ]
    if not requests:
        skip = SkipReason(f"new rows on {late}, stale {stale}: nothing built to restate")
        return SensorResult(skip_reason=skip, cursor=new_cursor, asset_events=observations)
    return SensorResult(run_requests=requests, cursor=new_cursor, asset_events=observations)


def late_data_sensor(home: Home, models: tuple[Model, ...], partitions: DailyPartitionsDefinition) -> SensorDefinition:
    """The sensor over ``models`` (running by default under ``dagster-daemon``)."""

    @sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=INTERVAL_S,
        asset_selection=AssetSelection.assets(*(asset_key(m.table) for m in models)),
        default_status=DefaultSensorStatus.RUNNING,
        description="Restates built ds partitions and their downstream gold partitions when late rows land in "
        "bronze, and silver days whose person_id changed when the identity map did.",
    )
    def late_data_(context: SensorEvaluationContext) -> SensorResult:
        return evaluate(context.instance, home, models, partitions, context.cursor)

    return late_data_
