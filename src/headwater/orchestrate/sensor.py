"""The late-data sensor: restate built partitions when their inputs change after the build.

Every evaluation (each 30 s under ``dagster-daemon``):

1. for every external input of the models (``bronze.events``: whatever no model produces),
   the days whose rows landed since the cursor (:func:`late_data.changed_days`; the cursor
   is ``{table: Delta version}`` as JSON). Without a cursor the sensor starts from the
   oldest ``input_versions[table]`` recorded by the latest materialisation of each model
   reading the table (what the last build saw), else from the current version;
2. when ``silver.identity_map`` has a new version since the cursor (it is rebuilt whole by
   any run — a late ``identify``, or one today that stitches last week's anonymous events),
   the ``silver.events`` days whose stored ``person_id`` no longer matches it
   (:func:`headwater.models.run.identity_stale_days`): retroactive stitching, restated;
3. the partitions to restate (:func:`late_data.restatement`): those days and everything
   downstream (trailing windows: ``d .. d+27`` for ``gold.active_users``; retention cohorts
   ``d-96 ..``), clipped to what each model has been built for — Dagster's materialised
   partitions together with the ``ds`` range in the model's Delta table, so builds made by
   ``headwater batch`` count too — and to the partitions that exist;
4. one :class:`dagster.RunRequest` per contiguous range (:func:`late_data.runs`), selecting
   the models to restate; the range is given by Dagster's partition-range tags
   (``dagster/asset_partition_range_start`` / ``_end``), ``run_key`` names the cursor so a
   re-evaluated tick launches nothing twice.

The changed input days are also reported as ``AssetObservation`` s of the input asset (one
per ``ds``, with the Delta version), so the UI shows when late rows landed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from dagster import (
    AssetObservation,
    AssetSelection,
    DagsterInstance,
    DailyPartitionsDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG
from deltalake import DeltaTable

from headwater.config import Home
from headwater.lake import tables
from headwater.models.run import Model, identity_stale_days, source_range
from headwater.orchestrate import late_data
from headwater.orchestrate.assets import asset_key
from headwater.serve import catalog

SENSOR_NAME = "late_data"
INTERVAL_S = 30
TRIGGER_TAG = "headwater/trigger"
# Unpartitioned tables whose change reaches a partitioned reader only on the days a content
# check finds stale, after the table was rebuilt: {table: (reader, stale days of the reader)}.
STALE_READER_DAYS = {"silver.identity_map": ("silver.events", identity_stale_days)}


def range_tags(start: dt.date, end: dt.date) -> dict[str, str]:
    """Tags that make a run of daily-partitioned assets cover ``[start, end]`` (inclusive)."""
    return {ASSET_PARTITION_RANGE_START_TAG: start.isoformat(), ASSET_PARTITION_RANGE_END_TAG: end.isoformat()}


def _version(path: Path) -> int:
    return DeltaTable(str(path)).version()


def built_range(instance: DagsterInstance, home: Home, model: Model) -> tuple[dt.date, dt.date] | None:
    """What ``model`` has been built for: for a partitioned model the first and last ``ds`` of
    Dagster's materialised partitions together with the ``ds`` range holding rows in its Delta
    table; :data:`late_data.ALWAYS` for an unpartitioned one whose table exists; ``None`` if
    never built."""
    if not model.partitioned:
        return late_data.ALWAYS if tables.exists(catalog.table_path(home, model.table)) else None
    days = [dt.date.fromisoformat(k) for k in instance.get_materialized_partitions(asset_key(model.table))]
    days += list(source_range(home, model.table) or ())
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


def evaluate(
    instance: DagsterInstance,
    home: Home,
    models: tuple[Model, ...],
    partitions: DailyPartitionsDefinition,
    cursor: str | None,
) -> SensorResult:
    """One evaluation of the sensor (see the module docstring). Reads only; the runs it
    requests do the writing."""
    state: dict[str, int] = json.loads(cursor) if cursor else {}
    produced = {m.table for m in models}
    watched = sorted({t for m in models for t in m.inputs if t not in produced})
    changed: dict[str, set[dt.date]] = {}
    observations = []
    for table in watched:
        path = catalog.table_path(home, table)
        if not tables.exists(path):
            continue
        since = state.get(table)
        if since is None:
            since = baseline_version(instance, table, [m for m in models if table in m.inputs], _version(path))
        state[table], days = late_data.changed_days(path, since)
        if days:
            changed[table] = days
            observations += [
                AssetObservation(asset_key(table), partition=d.isoformat(), metadata={"delta_version": state[table]})
                for d in sorted(days)
                if partitions.has_partition_key(d.isoformat())
            ]
    seeds: dict[str, set[dt.date]] = {}
    deferred = frozenset(t for t, (reader, _) in STALE_READER_DAYS.items() if t in produced and reader in produced)
    for table in deferred:
        path = catalog.table_path(home, table)
        if tables.exists(path) and state.get(table) != (version := _version(path)):
            reader, stale_days = STALE_READER_DAYS[table]
            state[table] = version
            if days := set(stale_days(home)):
                seeds[reader] = days
    new_cursor = json.dumps(state, sort_keys=True)
    if not changed and not seeds:
        return SensorResult(skip_reason=SkipReason(f"nothing new in {', '.join(watched)}"), cursor=new_cursor)
    built = {m.table: built_range(instance, home, m) for m in models}
    built = {t: b if b is late_data.ALWAYS else clip(b, partitions) for t, b in built.items()}
    plan = late_data.restatement(models, changed, built, seeds, deferred)
    late = ",".join(sorted({d.isoformat() for days in changed.values() for d in days}))
    requests = []
    for start, end, targets in late_data.runs(plan, models):
        span = f"{start}..{end}" if start else "whole"
        requests.append(
            RunRequest(
                run_key=f"{SENSOR_NAME}:{new_cursor}:{span}",
                asset_selection=[asset_key(t) for t in targets],
                tags={
                    **(range_tags(start, end) if start else {}),
                    TRIGGER_TAG: SENSOR_NAME,
                    "headwater/late_ds": late[:200] or "none",
                    "headwater/stale_ds": ",".join(sorted(d.isoformat() for ds in seeds.values() for d in ds))[:200] or "none",
                },
            )
        )
    if not requests:
        return SensorResult(skip_reason=SkipReason(f"changed days {late} are not built yet"), cursor=new_cursor, asset_events=observations)
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
