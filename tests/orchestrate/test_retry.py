"""Retries key on the error class: a TransientError (a lost Delta commit race, an I/O error) is
retried with backoff and the run succeeds; an InvalidInputError or a missing input fails at
once, naming the model."""

import datetime as dt

import pytest
from dagster import Backoff, RetryPolicy, RunRequest
from deltalake.exceptions import CommitFailedError

from headwater.errors import InvalidInputError, TransientError
from headwater.lake import store
from headwater.models.dag import MODELS
from headwater.models.run import run_model
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


def test_a_lost_commit_race_is_transient_and_retried(bronze, monkeypatch):
    """delta-rs loses the commit of silver.events once (another writer won): the lake reports a
    TransientError, the step is retried and the run succeeds."""
    real = store.write_deltalake
    lost = []

    def racing(uri, data, **kw):
        if uri.endswith("/silver/events") and not lost:
            lost.append(uri)
            raise CommitFailedError("Transaction conflict: a concurrent transaction wrote first")
        return real(uri, data, **kw)

    monkeypatch.setattr(store, "write_deltalake", racing)
    run_model(bronze, IDENTITY_AND_SILVER[0], DAY, DAY)
    with pytest.raises(TransientError, match="silver.events: a concurrent commit won"):  # the class the policy keys on
        run_model(bronze, IDENTITY_AND_SILVER[1], DAY, DAY)
    lost.clear()

    defs = definitions(bronze, models=IDENTITY_AND_SILVER, retry_policy=FAST)
    with instance(bronze) as inst:
        result = execute(defs, inst, request(IDENTITY_AND_SILVER))
    assert result.success and len(lost) == 1
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
    assert failure_message(result) == (
        "gold__events_hourly: gold.events_hourly 2024-03-01..2024-03-01: "
        "NotFoundError: gold.events_hourly: input table silver.events is not built yet"
    )


def test_an_invalid_input_error_is_not_retried_and_names_the_model(bronze):
    calls = []

    def broken(home, model, start, end):
        calls.append(model.table)
        raise InvalidInputError("silver.identity_map: result lacks columns ['person_id'] of silver.identity_map")

    defs = definitions(bronze, models=IDENTITY_AND_SILVER[:1], retry_policy=FAST, runner=broken)
    with instance(bronze) as inst:
        result = execute(defs, inst, request(IDENTITY_AND_SILVER[:1]))
    assert not result.success and calls == ["silver.identity_map"]
    assert "STEP_UP_FOR_RETRY" not in step_events(result, "silver__identity_map")
    assert failure_message(result) == (
        "silver__identity_map: silver.identity_map (whole table): InvalidInputError: "
        "silver.identity_map: result lacks columns ['person_id'] of silver.identity_map"
    )


def test_a_transient_error_is_retried_until_the_policy_gives_up(bronze):
    calls = []

    def down(home, model, start, end):
        calls.append(model.table)
        raise TransientError("disk unavailable")

    defs = definitions(bronze, models=IDENTITY_AND_SILVER[:1], retry_policy=FAST, runner=down)
    with instance(bronze) as inst:
        result = execute(defs, inst, request(IDENTITY_AND_SILVER[:1]))
    assert not result.success and len(calls) == 1 + FAST.max_retries
