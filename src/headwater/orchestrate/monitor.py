"""The data-quality checks on their own schedule (:mod:`headwater.quality`), run by the daemon.

* job ``quality_checks`` (daily partitions): :func:`headwater.quality.alerts.check` of the
  partition's ``ds`` — every check of the day into ``quality.results``, warnings and failures
  to ``quality.webhook_url``; the run fails when a check fails, so the Dagster UI shows it;
* sensor ``quality_after_build``: a ``quality_checks`` run for ``ds`` after each run of the
  daily job for ``ds`` finishes (succeeded, or failed: a blocking check that stopped gold
  is exactly what to report);
* schedule ``quality_checks_schedule``: the same for yesterday at ``quality.gold_ready_by_utc``,
  when ``freshness_gold`` can first fail — a day whose build never ran is reported too;
* sensor ``realtime_freshness``, every :data:`REALTIME_INTERVAL_S`: the realtime freshness SLA
  (:func:`headwater.quality.alerts.watch_realtime`). It checks inside the sensor tick rather
  than in a run: runs queue one at a time behind the batch (``max_concurrent_runs: 1``), and
  a minute-scale SLA must not wait for a backfill;
* :func:`gold_freshness`: the gold SLA as a Dagster ``FreshnessPolicy`` on the partitioned gold
  assets, which the daemon evaluates and the UI shows as asset health. Dagster's policy sees
  materialisations, not partitions — any gold build between midnight and the deadline
  satisfies it — so the exact per-``ds`` SLA stays ``freshness_gold`` in ``quality.results``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from dagster import (
    AssetSpec,
    DailyPartitionsDefinition,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Failure,
    FreshnessPolicy,
    JobDefinition,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    build_schedule_from_partitioned_job,
    job,
    op,
    sensor,
)
from dagster._core.storage.tags import PARTITION_NAME_TAG

from headwater.config import Home
from headwater.quality import alerts

QUALITY_JOB = "quality_checks"
AFTER_BUILD_SENSOR = "quality_after_build"
REALTIME_SENSOR = "realtime_freshness"
REALTIME_INTERVAL_S = 60  # the SLA's own scale (quality.realtime_max_delay_s defaults to 1 min)
AFTER_BUILD_INTERVAL_S = 60
FIRST_LOOKBACK = dt.timedelta(days=1)  # without a cursor: daily runs finished in the last day
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]


def quality_job(home: Home, partitions: DailyPartitionsDefinition) -> JobDefinition:
    """Job ``quality_checks``: the checks of the partition's ``ds`` (module docstring)."""

    @op(name="check_day")
    def check_day(context) -> None:  # unannotated: dagster checks the type at runtime
        ds = dt.date.fromisoformat(context.partition_key)
        report = alerts.check(home, ds)
        for r in [*report.failed, *report.warned]:
            context.log.warning(f"{r.status} {r.check} {r.table} {r.subject or ''}: {r.message}")
        counts = {"failed": len(report.failed), "warned": len(report.warned), "checks": len(report.results)}
        context.log.info(f"quality of {ds}: {counts}; webhook: {report.webhook or 'not sent'}")
        if report.failed:
            blocking = sum(r.blocking for r in report.failed)
            raise Failure(f"{len(report.failed)} check(s) failed for {ds} ({blocking} blocking)",
                          metadata={**counts, "blocking_failed": blocking}, allow_retries=False)

    @job(name=QUALITY_JOB, partitions_def=partitions,
         description="The data-quality checks of one ds into quality.results, and the webhook (`headwater check`).")
    def quality_checks() -> None:
        check_day()

    return quality_checks


def quality_schedule(home: Home, quality: JobDefinition) -> ScheduleDefinition:
    """``quality_checks`` of yesterday, daily at ``quality.gold_ready_by_utc``."""
    due = home.settings.quality.gold_ready_by_utc
    return build_schedule_from_partitioned_job(
        quality, hour_of_day=due.hour, minute_of_hour=due.minute, default_status=DefaultScheduleStatus.RUNNING,
        description=f"Checks yesterday at {due:%H:%M} UTC, the gold SLA (quality.gold_ready_by_utc).",
    )


def after_build_requests(context: SensorEvaluationContext, daily_job: str) -> SensorResult:
    """One ``quality_checks`` request per single-partition run of ``daily_job`` that finished
    since the cursor (an update timestamp; without one, :data:`FIRST_LOOKBACK` ago). The run
    key is the build's run id: a re-evaluated tick launches nothing twice. Ranged runs
    (backfills) are left to ``headwater check``: one run per day of a year would flood the queue."""
    since = float(context.cursor) if context.cursor else (dt.datetime.now(dt.timezone.utc) - FIRST_LOOKBACK).timestamp()
    records = context.instance.get_run_records(
        RunsFilter(job_name=daily_job, statuses=FINISHED, updated_after=dt.datetime.fromtimestamp(since, dt.timezone.utc)),
        order_by="update_timestamp", ascending=True,
    )
    requests = [
        RunRequest(run_key=r.dagster_run.run_id, partition_key=r.dagster_run.tags[PARTITION_NAME_TAG],
                   tags={"headwater/after_run": r.dagster_run.run_id})
        for r in records if PARTITION_NAME_TAG in r.dagster_run.tags
    ]
    cursor = str(max([since, *(_epoch(r.update_timestamp) for r in records)]))
    if not requests:
        return SensorResult(skip_reason=SkipReason(f"no {daily_job} run finished since the last tick"), cursor=cursor)
    return SensorResult(run_requests=requests, cursor=cursor)


def _epoch(t: dt.datetime) -> float:
    """Seconds since the epoch of a run record's time (naive: UTC)."""
    return (t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)).timestamp()


def after_build_sensor(quality: JobDefinition, daily_job: str) -> SensorDefinition:
    """Sensor ``quality_after_build`` (:func:`after_build_requests`)."""

    @sensor(name=AFTER_BUILD_SENSOR, job=quality, minimum_interval_seconds=AFTER_BUILD_INTERVAL_S,
            default_status=DefaultSensorStatus.RUNNING,
            description=f"Runs {QUALITY_JOB} for a ds after each {daily_job} run of that ds finishes.")
    def quality_after_build(context: SensorEvaluationContext) -> SensorResult:
        return after_build_requests(context, daily_job)

    return quality_after_build


def realtime_tick(home: Home, cursor: str | None) -> tuple[SkipReason, str]:
    """One evaluation of ``realtime_freshness``: :func:`~headwater.quality.alerts.watch_realtime`
    with its state kept in the cursor (JSON of :class:`~headwater.quality.alerts.Watch`);
    returns what happened, for the tick's log, and the new cursor."""
    state = alerts.Watch(**{k: tuple(v) if k == "failing" else v for k, v in json.loads(cursor).items()}) if cursor else alerts.Watch()
    report, state = alerts.watch_realtime(home, state)
    if not report.results:
        said = "no realtime tables yet"
    else:
        worst = max(r.observed or 0.0 for r in report.results)
        said = (f"failing: {', '.join(state.failing)}" if state.failing else "all realtime tables within the SLA") + \
            f" (oldest waiting event {worst:.1f} s)" + (f"; webhook {report.webhook}" if report.webhook else "")
    return SkipReason(said), json.dumps(dataclasses.asdict(state))


def realtime_sensor(home: Home) -> SensorDefinition:
    """Sensor ``realtime_freshness`` (:func:`realtime_tick`); it launches no runs."""

    @sensor(name=REALTIME_SENSOR, minimum_interval_seconds=REALTIME_INTERVAL_S, default_status=DefaultSensorStatus.RUNNING,
            description="Checks the realtime freshness SLA (quality.realtime_max_delay_s) into quality.results; "
            "the webhook when a realtime table starts failing it.")
    def realtime_freshness(context: SensorEvaluationContext) -> SensorResult:
        skip, cursor = realtime_tick(home, context.cursor)
        return SensorResult(skip_reason=skip, cursor=cursor)

    return realtime_freshness


def gold_freshness(home: Home) -> FreshnessPolicy:
    """The gold SLA as a ``FreshnessPolicy``: materialised each day between midnight UTC (when
    yesterday's partition comes to exist) and ``quality.gold_ready_by_utc``."""
    due = home.settings.quality.gold_ready_by_utc
    since_midnight = dt.timedelta(hours=due.hour, minutes=due.minute)
    return FreshnessPolicy.cron(deadline_cron=f"{due.minute} {due.hour} * * *",
                                lower_bound_delta=max(since_midnight, dt.timedelta(minutes=1)), timezone="UTC")


def with_gold_freshness(policy: FreshnessPolicy):
    """An ``AssetSpec`` mapper giving partitioned gold assets ``policy``."""
    def mapped(spec: AssetSpec) -> AssetSpec:
        gold = spec.key.path[0] == "gold" and spec.partitions_def is not None
        return spec.replace_attributes(freshness_policy=policy) if gold else spec

    return mapped
