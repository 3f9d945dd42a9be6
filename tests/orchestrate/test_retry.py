"""Retries: a transient failure (I/O error) is retried with backoff and the run succeeds; an
error a retry cannot fix (a missing input table, SQL that does not bind) fails at once,
naming the model."""

import datetime as dt

from dagster import Backoff, RetryPolicy, RunRequest

from headwater.models.run import MODELS, run_model
from headwater.orchestrate.assets import DEFAULT_RETRY, asset_key
from headwater.orchestrate.definitions import definitions
from headwater.orchestrate.instance import instance
from headwater.orchestrate.runs import execute, failure_message
from headwater.orchestrate.sensor import range_tags

DAY = dt.date(2024, 3, 1)
IDENTITY_AND_SILVER = tuple(m for m in MODELS if m.table in ("silver.identity_map", "silver.events"))
FAST = RetryPolicy(max_retries=2, delay=0.05, backoff=Backoff.EXPONENTIAL)


def step_events(result, step: str) -> list[str]:
    return [e.event_type_value for e in result.all_events if e.step_key == step]


def request(models) -> RunRequest:
    return RunRequest(asset_selection=[asset_key(m.table) for m in models], tags=range_tags(DAY, DAY))


def test_default_policy_backs_off_exponentially():
    assert DEFAULT_RETRY.max_retries == 3 and DEFAULT_RETRY.backoff == Backoff.EXPONENTIAL and DEFAULT_RETRY.delay > 0


def test_a_transient_failure_is_retried_and_the_run_succeeds(bronze):
    calls = []

    def flaky(home, model, start, end):
        calls.append(model.table)
        if model.table == "silver.events" and calls.count("silver.events") == 1:
            raise OSError("disk hiccup")  # transient: the retry finds the disk fine
        return run_model(home, model, start, end)

    defs = definitions(bronze, models=IDENTITY_AND_SILVER, retry_policy=FAST, runner=flaky)
    with instance(bronze) as inst:
        result = execute(defs, inst, request(IDENTITY_AND_SILVER))
    assert result.success
    assert calls.count("silver.events") == 2
    events = step_events(result, "silver__events")
    assert "STEP_UP_FOR_RETRY" in events and "STEP_RESTARTED" in events and events[-1] == "STEP_SUCCESS"


def test_an_error_a_retry_cannot_fix_fails_at_once(bronze):
    # gold.events_hourly without silver.events built: its input table does not exist
    gold = tuple(m for m in MODELS if m.table == "gold.events_hourly")
    defs = definitions(bronze, models=gold, retry_policy=FAST)
    with instance(bronze) as inst:
        result = execute(defs, inst, request(gold))
    assert not result.success
    assert "STEP_UP_FOR_RETRY" not in step_events(result, "gold__events_hourly")
    message = failure_message(result)
    assert message == "gold__events_hourly: gold.events_hourly 2024-03-01..2024-03-01: input tables not built yet: silver.events"


def test_a_model_error_is_not_retried_and_names_the_model(bronze):
    def broken(home, model, start, end):
        raise ValueError("result lacks columns ['person_id'] of silver.events")  # what run_model raises

    defs = definitions(bronze, models=IDENTITY_AND_SILVER[:1], retry_policy=FAST, runner=broken)
    with instance(bronze) as inst:
        result = execute(defs, inst, request(IDENTITY_AND_SILVER[:1]))
    assert not result.success
    assert "STEP_UP_FOR_RETRY" not in step_events(result, "silver__identity_map")
    assert failure_message(result) == (
        "silver__identity_map: silver.identity_map (whole table): ValueError: result lacks columns ['person_id'] of silver.events"
    )
