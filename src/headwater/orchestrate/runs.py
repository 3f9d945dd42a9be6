"""Running :class:`dagster.RunRequest` s in this process, recorded in the Dagster instance.

The backfill command and the tests execute the same run requests the sensor or the UI would
launch, with ``execute_in_process`` against the persistent instance of the home
(:func:`headwater.orchestrate.instance.instance`): runs, materialisations and asset check
results land in the same SQLite storage the Dagster UI reads.
"""

from __future__ import annotations

import datetime as dt
import uuid

from dagster import DagsterInstance, Definitions, ExecuteInProcessResult, RunRequest

from headwater.models.dag import Model, plan
from headwater.orchestrate.assets import asset_key
from headwater.orchestrate.sensor import range_tags

BACKFILL_TAG = "headwater/backfill"
# Dagster's console logger prints every event at DEBUG; the events are stored in the instance
# regardless, so the terminal only gets warnings and errors.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def execute(defs: Definitions, instance: DagsterInstance, request: RunRequest) -> ExecuteInProcessResult:
    """Execute ``request`` (asset selection + partition key or partition-range tags) as one run
    of the implicit asset job, with the checks of the selected assets. Never raises for a
    failed step: see ``result.success`` and :func:`failure_message`."""
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        run_config=QUIET,
        instance=instance,
        asset_selection=list(request.asset_selection) if request.asset_selection else None,
        partition_key=request.partition_key,
        tags=dict(request.tags),
        raise_on_error=False,
    )


def failure_message(result: ExecuteInProcessResult) -> str:
    """The failed steps' messages (and failed check names) of a run, one per line."""
    lines = []
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            # a Failure raised by the asset carries its own description; anything else its error
            message = data.user_failure_data.description if data.user_failure_data else None
            message = message or (data.error.message.strip() if data.error else "failed")
            lines.append(f"{event.step_key}: {message}")
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            if not evaluation.passed:
                lines.append(f"check {evaluation.asset_check_key.to_user_string()} failed: {evaluation.description or ''}")
    return "\n".join(lines) or f"run {result.run_id} failed"


def backfill_requests(
    models: tuple[Model, ...],
    start: dt.date,
    end: dt.date,
    floor: dt.date | None,
    ceiling: dt.date | None,
    backfill_id: str | None = None,
) -> list[tuple[dt.date, dt.date, list[Model], RunRequest]]:
    """The runs of a backfill of ``[start, end]``, in dependency order:
    ``[(start, end, models, request), ...]``.

    Each model is built over the range :func:`headwater.models.dag.plan` gives it —
    ``[start, end]``, widened for a model its readers read beyond that (within ``floor`` ..
    ``ceiling``, the days bronze has) — so every model is correct on ``[start, end]``
    afterwards. Consecutive models with the same range share one run, and so do
    unpartitioned models (replaced whole whatever the range) with the run they precede or
    follow. Every run carries the tag ``headwater/backfill=<backfill_id>`` (a new id if none)."""
    backfill_id = backfill_id or uuid.uuid4().hex[:8]
    groups: list[tuple[dt.date, dt.date, list[Model]]] = []
    pending: list[Model] = []  # unpartitioned models waiting for a run to join
    for model, s, e in plan(start, end, models, floor=floor, ceiling=ceiling):
        if not model.partitioned:
            (groups[-1][2] if groups else pending).append(model)
        elif groups and groups[-1][:2] == (s, e):
            groups[-1][2].append(model)
        else:
            groups.append((s, e, [*pending, model]))
            pending = []
    if pending:  # only unpartitioned models: the range is irrelevant
        groups.append((start, end, pending))
    return [
        (s, e, group, RunRequest(
            asset_selection=[asset_key(m.table) for m in group],
            tags={**range_tags(s, e), BACKFILL_TAG: backfill_id},
        ))
        for s, e, group in groups
    ]
