"""The build's runner of model runs (headwater.models.run._run_steps): two at a time, in dependency order."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from headwater.errors import TransientError
from headwater.lake.store import Lake
from headwater.models import run
from headwater.models.dag import Model, Output

DAY = dt.date(2024, 3, 1)


def python(run_: object) -> Output:
    return Output(None)


def steps(*models: Model) -> list[run._Step]:
    return [run._Step(m, DAY, DAY, False) for m in models]


class Recorder:
    """An ``execute`` recording each step's start and end, and the most steps in flight at once."""

    def __init__(self, fail: str | None = None, seconds: float = 0.2):
        self.lock = threading.Lock()
        self.events: list[tuple[str, str]] = []
        self.running = self.most = 0
        self.fail, self.seconds = fail, seconds
        self.shared: list[object] = []

    def __call__(self, step: run._Step, con: object) -> int:
        with self.lock:
            self.events.append(("start", step.model.table))
            self.running += 1
            self.most = max(self.most, self.running)
            if step.model.compute is not None:
                self.shared.append(con)
        time.sleep(self.seconds / 10 if step.model.table == self.fail else self.seconds)  # fails while the other runs
        with self.lock:
            self.running -= 1
            self.events.append(("end", step.model.table))
        if step.model.table == self.fail:
            raise TransientError(f"{step.model.table}: failed", field=step.model.table)
        return 1


@pytest.fixture
def lake(tmp_path, monkeypatch) -> Lake:
    monkeypatch.setattr(run.sql, "register", lambda con, lake, table: False)  # nothing is written here
    return Lake(tmp_path / "lake")


def test_independent_models_run_two_at_a_time_and_readers_after_what_they_read(lake):
    models = (Model("silver.events", ("bronze.events",)), Model("gold.sessions", ("silver.events",)),
              Model("gold.events_hourly", ("silver.events",)), Model("gold.sessions_daily", ("gold.sessions",)))
    record, done = Recorder(), []
    run._run_steps(steps(*models), lake, object(), record, lambda s, rows, t: done.append(s.model.table), workers=2)
    at = {e: i for i, e in enumerate(record.events)}
    assert at[("end", "silver.events")] < at[("start", "gold.sessions")]
    assert at[("end", "silver.events")] < at[("start", "gold.events_hourly")]
    assert at[("end", "gold.sessions")] < at[("start", "gold.sessions_daily")]
    assert record.most == 2  # sessions and events_hourly (or sessions_daily) overlapped
    assert sorted(done) == sorted(m.table for m in models) and done[0] == "silver.events"


def test_python_models_run_one_at_a_time_on_the_builds_connection(lake):
    con = object()
    models = (Model("silver.dim_user", ("silver.events",), compute=python),
              Model("silver.dim_device", ("silver.events",), compute=python))
    record = Recorder()
    run._run_steps(steps(*models), lake, con, record, lambda *a: None, workers=2)
    assert record.most == 1 and record.shared == [con, con]
    assert [t for _, t in record.events] == ["silver.dim_user", "silver.dim_user", "silver.dim_device", "silver.dim_device"]


def test_an_error_lets_running_steps_finish_starts_no_other_and_is_raised(lake):
    models = (Model("gold.sessions", ("silver.events",)), Model("gold.events_hourly", ("silver.events",)),
              Model("gold.sessions_daily", ("gold.sessions",)), Model("gold.funnels", ("silver.events",)))
    record, done = Recorder(fail="gold.sessions", seconds=0.3), []
    with pytest.raises(TransientError, match="gold.sessions: failed"):
        run._run_steps(steps(*models), lake, object(), record, lambda s, rows, t: done.append(s.model.table), workers=2)
    started = [t for kind, t in record.events if kind == "start"]
    assert sorted(started) == ["gold.events_hourly", "gold.sessions"]  # nothing started after the failure
    assert done == ["gold.events_hourly"]  # the step running beside it finished and was reported


def test_one_worker_runs_the_steps_in_order(lake):
    models = (Model("gold.sessions", ("silver.events",)), Model("gold.events_hourly", ("silver.events",)))
    record = Recorder(seconds=0)
    run._run_steps(steps(*models), lake, object(), record, lambda *a: None, workers=1)
    assert record.events == [("start", "gold.sessions"), ("end", "gold.sessions"),
                             ("start", "gold.events_hourly"), ("end", "gold.events_hourly")]
