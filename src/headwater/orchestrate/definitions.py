"""The Dagster :class:`~dagster.Definitions` of one installation, derived from its batch DAG.

* assets: one per model of :func:`headwater.models.dag.dag` (silver, gold, typed tables, CDC
  dimensions: :mod:`headwater.orchestrate.assets`) and the external inputs;
* asset checks for the invariants (:mod:`headwater.orchestrate.checks`);
* job ``daily`` (every model, daily partitions) and its schedule ``daily_schedule``: at
  01:00 UTC it builds the day that just ended;
* sensor ``late_data`` (:mod:`headwater.orchestrate.sensor`).

Backfills of any range work from the UI (asset page → Materialize → partition range: one run
per range, ``BackfillPolicy.single_run``) and from ``headwater backfill``.
"""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    RetryPolicy,
    build_schedule_from_partitioned_job,
    define_asset_job,
)

from headwater.config import Home
from headwater.models import run as models_run
from headwater.models.dag import Model, dag
from headwater.orchestrate.assets import DEFAULT_RETRY, Runner, asset_key, daily_partitions, first_ds, model_assets
from headwater.orchestrate.checks import invariant_checks
from headwater.orchestrate.sensor import late_data_sensor

DAILY_JOB = "daily"
SCHEDULE_HOUR_UTC = 1


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
    return Definitions(
        assets=[*external, *assets],
        asset_checks=invariant_checks(home, models),
        jobs=[daily],
        schedules=schedules,
        sensors=[late_data_sensor(home, models, partitions)],
    )
