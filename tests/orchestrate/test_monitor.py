"""The data-quality checks on their own schedule, and the gate of gold publication, through
Dagster's in-process execution on real tables and a real SQLite log and instance:

* a day with events lost between the log and bronze fails its blocking ``complete_from_log``
  check: its gold partitions are not written while the next day's are; once the events are
  in bronze the day publishes;
* the ``quality_after_build`` sensor asks for the day's checks after each daily run, and
  the ``quality_checks`` job stores them in ``quality.results`` and fires the webhook;
* the ``realtime_freshness`` sensor, the gold-deadline schedule and the gold FreshnessPolicy."""

from __future__ import annotations

import datetime as dt
import json
import time

import pyarrow as pa
from dagster import AssetKey, build_schedule_context, build_sensor_context

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.models.dag import MODELS
from headwater.orchestrate.definitions import DAILY_JOB, definitions
from headwater.orchestrate.instance import instance
from headwater.orchestrate.monitor import AFTER_BUILD_SENSOR, QUALITY_JOB, REALTIME_SENSOR, after_build_requests, gold_freshness
from headwater.orchestrate.runs import QUIET, failure_message
from headwater.settings import load as load_settings
from tests.helpers import logged, query
from tests.orchestrate.conftest import append_bronze
from tests.quality.webhook import Hook, serve_webhook

UTC = dt.timezone.utc
DAY = dt.date(2024, 3, 1)
NEXT = DAY + dt.timedelta(days=1)
GATED = ("silver.identity_map", "silver.events", "silver.person_state", "silver.person_platform_state", "gold.events_hourly", "gold.active_users")


def with_settings(home: Home, **settings) -> Home:
    return Home(home.root, load_settings(home=home.root, **settings))


def gold_days(home: Home, table: str) -> list[dt.date]:
    if not Lake.of(home).exists(table):
        return []
    return query(home, f"SELECT DISTINCT ds FROM {table} ORDER BY ds")["ds"].to_pylist()


def run_daily(defs, inst, day: dt.date):
    return defs.resolve_job_def(DAILY_JOB).execute_in_process(
        run_config=QUIET, instance=inst, partition_key=day.isoformat(), raise_on_error=False)


def test_a_blocking_check_on_one_day_stops_only_that_days_gold(bronze, window_events):
    # Three events of DAY the collector accepted and the stream consumed, but bronze lost.
    template = next(e for e in window_events if e["ds"] == DAY)
    lost = [{**template, "event_id": f"lost-{i}", "received_at": dt.datetime(2024, 3, 1, 12, i, tzinfo=UTC)} for i in range(3)]
    logged(bronze, lost)
    with serve_webhook() as url:
        home = with_settings(bronze, **{"quality.webhook_url": url})
        defs = definitions(home, models=tuple(m for m in MODELS if m.table in GATED))
        with instance(home) as inst:
            blocked, published = run_daily(defs, inst, DAY), run_daily(defs, inst, NEXT)
            assert not blocked.success and published.success
            assert "check silver/events:complete_from_log failed: 3 events the stream consumed" in failure_message(blocked)
            for table in ("gold.events_hourly", "gold.active_users"):
                assert gold_days(home, table) == [NEXT], table
            assert DAY in gold_days(home, "silver.events")  # silver was built; gold was not published from it

            # The sensor asks for the checks of each day a daily run finished for; the checks
            # of DAY fail (the run fails, quality.results and the webhook have it).
            evaluation = after_build_requests(build_sensor_context(instance=inst, cursor="0"), DAILY_JOB)
            assert sorted(r.partition_key for r in evaluation.run_requests) == [DAY.isoformat(), NEXT.isoformat()]
            assert {r.run_key for r in evaluation.run_requests} == {blocked.run_id, published.run_id}
            again = after_build_requests(build_sensor_context(instance=inst, cursor=evaluation.cursor), DAILY_JOB)
            assert not again.run_requests  # the cursor moved past both runs
            checked = defs.resolve_job_def(QUALITY_JOB).execute_in_process(
                run_config=QUIET, instance=inst, partition_key=DAY.isoformat(), raise_on_error=False)
            assert not checked.success and "check(s) failed for 2024-03-01" in failure_message(checked)
            [sent] = Hook.received
            assert sent["ds"] == DAY.isoformat() and sent["blocking_failed"] >= 1
            stored = query(home, "SELECT check_name, status, sum(observed) AS missing FROM quality.results "
                                 "WHERE check_name = 'completeness_bronze' AND ds = $d GROUP BY ALL", {"d": DAY}).to_pylist()
            assert stored == [{"check_name": "completeness_bronze", "status": "fail", "missing": 3.0}]

            # The lost events reach bronze (say, replayed): DAY's run passes and publishes.
            append_bronze(home, lost, 1)
            assert run_daily(defs, inst, DAY).success
            assert gold_days(home, "gold.events_hourly") == [DAY, NEXT]


def test_silver_losing_rows_of_a_day_blocks_that_days_gold(bronze):
    """complete_from_bronze over the run's day: a silver model that loses an event of DAY (a
    bug) blocks DAY's gold; NEXT, built by the same model without loss, publishes."""
    defs = definitions(bronze, models=tuple(m for m in MODELS if m.table in GATED), runner=losing_first_event_of(DAY))
    with instance(bronze) as inst:
        blocked = run_daily(defs, inst, DAY)
        assert not blocked.success and run_daily(defs, inst, NEXT).success
    assert "check silver/events:complete_from_bronze failed: 1 bronze events missing" in failure_message(blocked)
    assert gold_days(bronze, "gold.events_hourly") == [NEXT]


def losing_first_event_of(day: dt.date):
    """A runner that builds each model, then deletes the first event of ``day`` from silver.events."""
    from headwater.models.run import run_model

    def run(home, model, start, end):
        rows = run_model(home, model, start, end)
        if model.table == "silver.events" and start <= day <= end:
            first = query(home, "SELECT min(event_id) AS e FROM silver.events WHERE ds = $d", {"d": day})["e"][0].as_py()
            Lake.of(home).delete(model.table, f"ds = '{day}' AND event_id = '{first}'")
        return rows

    return run


def test_realtime_freshness_sensor_records_and_alerts(home):
    with serve_webhook() as url:
        home = with_settings(home, **{"quality.webhook_url": url, "quality.realtime_max_delay_s": 0.001})
        sensor = definitions(home).resolve_sensor_def(REALTIME_SENSOR)
        with instance(home) as inst:
            quiet = sensor(build_sensor_context(instance=inst))
            assert "no realtime tables yet" in quiet.skip_reason.skip_message
            Lake.of(home).append("realtime.counts", pa.table({"n": [1]}))
            now = dt.datetime.now(UTC)
            logged(home, [{"event_id": "e", "event_type": "track", "event_name": "Viewed", "anonymous_id": "a",
                               "user_id": None, "event_ts": now, "received_at": now, "source": "test", "surface": "web",
                               "platform": "web", "properties": "{}", "context": "{}", "schema_version": "1",
                               "ds": now.date()}], consumed=False)
            time.sleep(0.01)  # older than the 1 ms SLA
            first = sensor(build_sensor_context(instance=inst, cursor=quiet.cursor))
            assert "failing: realtime.counts" in first.skip_reason.skip_message
            assert json.loads(first.cursor)["failing"] == ["realtime.counts"]
            second = sensor(build_sensor_context(instance=inst, cursor=first.cursor))  # still failing: no new alert
            assert json.loads(second.cursor) == json.loads(first.cursor)
    assert len(Hook.received) == 1 and Hook.received[0]["results"][0]["check"] == "freshness_realtime"
    stored = query(home, "SELECT check_name, \"table\", status FROM quality.results").to_pylist()
    assert stored == [{"check_name": "freshness_realtime", "table": "realtime.counts", "status": "fail"}]


def test_quality_schedule_checks_yesterday_at_the_gold_deadline_and_gold_has_a_freshness_policy(bronze):
    defs = definitions(with_settings(bronze, **{"quality.gold_ready_by_utc": "05:30"}))
    schedule = defs.resolve_schedule_def(f"{QUALITY_JOB}_schedule")
    assert schedule.cron_schedule == "30 5 * * *" and schedule.execution_timezone == "UTC"
    with instance(bronze) as inst:
        context = build_schedule_context(instance=inst, scheduled_execution_time=dt.datetime(2024, 3, 2, 5, 30, tzinfo=UTC))
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == "2024-03-01"
    graph = defs.get_repository_def().asset_graph
    policy = graph.get(AssetKey(["gold", "active_users"])).freshness_policy
    assert policy == gold_freshness(with_settings(bronze, **{"quality.gold_ready_by_utc": "05:30"}))
    assert (policy.deadline_cron, policy.lower_bound_delta) == ("30 5 * * *", dt.timedelta(hours=5, minutes=30))
    assert graph.get(AssetKey(["silver", "events"])).freshness_policy is None
    assert {AFTER_BUILD_SENSOR, REALTIME_SENSOR} <= {s.name for s in defs.get_repository_def().sensor_defs}
