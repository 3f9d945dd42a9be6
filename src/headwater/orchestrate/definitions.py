"""The Dagster :class:`~dagster.Definitions` of one installation, derived from its batch DAG.

* assets: one per model of :func:`headwater.models.dag.dag` (silver, gold, typed tables, CDC
  dimensions: :mod:`headwater.orchestrate.assets`) and the external inputs;
* asset checks for the invariants and the blocking data-quality gate of gold
  (:mod:`headwater.orchestrate.checks`);
* job ``daily`` (every model, daily partitions) and its schedule ``daily_schedule``: at
  01:00 UTC it builds the day that just ended;
* sensor ``late_data`` (:mod:`headwater.orchestrate.sensor`);
* the data-quality checks on their own: job ``quality_checks``, its schedule and the sensors
  ``quality_after_build`` and ``realtime_freshness``, and the gold ``FreshnessPolicy``
  (:mod:`headwater.orchestrate.monitor`);
* job ``maintain`` (what ``headwater maintain`` does: retention, clustering, compaction and
  vacuum of every table, :func:`headwater.lake.maintenance.maintain`) and its schedule ``maintain_schedule``, every
  ``lake.vacuum_every_h`` hours.

Backfills of any range work from the UI (asset page → Materialize → partition range: one run
per range, ``BackfillPolicy.single_run``) and from ``headwater backfill``.
"""

from __future__ import annotations

import datetime as dt
import math

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    JobDefinition,
    RetryPolicy,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    build_schedule_from_partitioned_job,
    define_asset_job,
    job,
    op,
)

from headwater.config import Home
from headwater.lake.maintenance import CLUSTER_STATE, ClusterState
from headwater.lake.maintenance import maintain as upkeep
from headwater.lake.store import Lake
from headwater.models import run as models_run
from headwater.models.dag import Model, dag
from headwater.orchestrate.assets import DEFAULT_RETRY, Runner, asset_key, daily_partitions, first_ds, model_assets
from headwater.orchestrate.checks import invariant_checks
from headwater.orchestrate.monitor import (
    after_build_sensor, gold_freshness, quality_job, quality_schedule, realtime_sensor, with_gold_freshness,
)
from headwater.orchestrate.sensor import late_data_sensor

DAILY_JOB = "daily"
SCHEDULE_HOUR_UTC = 1
MAINTAIN_JOB = "maintain"


def definitions(
    home: Home,
    models: tuple[Model, ...] | None = None,
    retry_policy: RetryPolicy = DEFAULT_RETRY,
    runner: Runner | None = None,
) -> Definitions:
    """Everything Dagster needs to orchestrate ``home``'s batch layer.

    ``models`` defaults to :func:`headwater.models.dag.dag` of ``home`` as it is when called
    (a new model, a newly registered event name or CDC dimension is a new asset without any
    change here); ``runner`` to :func:`headwater.models.run.run_model`. Partitions start at
    :func:`first_ds`."""
    models = models if models is not None else dag(home)
    partitions = daily_partitions(first_ds(home))
    assets, external = model_assets(home, models, partitions, retry_policy, runner or models_run.run_model)
    assets = [a.map_asset_specs(with_gold_freshness(gold_freshness(home))) for a in assets]
    daily = define_asset_job(
        DAILY_JOB,
        selection=AssetSelection.assets(*(asset_key(m.table) for m in models)),
        description="Every batch model for one ds (the schedule's job).",
    )
    # the schedule runs the job once per daily partition: only if some model is partitioned
    schedules = (
        [build_schedule_from_partitioned_job(daily, hour_of_day=SCHEDULE_HOUR_UTC, default_status=DefaultScheduleStatus.RUNNING)]
        if any(m.partitioned for m in models)
        else []
    )
    maintain = maintain_job(home)
    quality = quality_job(home, partitions)
    return Definitions(
        assets=[*external, *assets],
        asset_checks=invariant_checks(home, models),
        jobs=[daily, maintain, quality],
        schedules=[*schedules, maintain_schedule(home, maintain), quality_schedule(home, quality)],
        sensors=[late_data_sensor(home, models, partitions), after_build_sensor(quality, DAILY_JOB), realtime_sensor(home)],
    )


def maintain_job(home: Home) -> JobDefinition:
    """Job ``maintain``: the upkeep ``headwater maintain`` does on every table of ``home``'s
    lake (:func:`headwater.lake.maintenance.maintain`: realtime retention, clustering,
    compaction, vacuum; the same clustering state file); each table's figures and vacuumed
    paths go to the run's log."""

    @op(name="maintain_tables")
    def maintain_tables(context) -> None:  # unannotated: dagster checks the type at runtime
        state = ClusterState(home.root / CLUSTER_STATE)
        for r in upkeep(Lake.of(home), home.settings.lake, dt.datetime.now(dt.timezone.utc), state):
            context.log.info(f"{r.table}: files {r.files_before} -> {r.files_after}, {r.rows_deleted} rows deleted, "
                             f"{r.partitions_compacted} compacted, {r.partitions_clustered} clustered, "
                             f"{r.files_vacuumed} vacuumed" + (f": {', '.join(r.paths)}" if r.paths else ""))

    @job(name=MAINTAIN_JOB, description="Retention, clustering, compaction and vacuum of every table; `headwater maintain`.")
    def maintain() -> None:
        maintain_tables()

    return maintain


def maintain_schedule(home: Home, maintain: JobDefinition) -> ScheduleDefinition:
    """Runs ``maintain`` every ``lake.vacuum_every_h`` hours (rounded up to whole hours).

    Cron cannot say "every N hours" for an N that does not divide 24, so the schedule ticks
    hourly and runs on the ticks whose hour since the epoch is a multiple of N: exactly every
    N hours, with no state to keep."""
    every = max(1, math.ceil(home.settings.lake.vacuum_every_h))

    def due(context: ScheduleEvaluationContext) -> bool:
        return int(context.scheduled_execution_time.timestamp() // 3600) % every == 0

    return ScheduleDefinition(
        name=f"{MAINTAIN_JOB}_schedule", job=maintain, cron_schedule="0 * * * *", execution_timezone="UTC",
        should_execute=due, default_status=DefaultScheduleStatus.RUNNING,
        description=f"Vacuum every {every} h (lake.vacuum_every_h).",
    )
