"""``headwater backfill`` end to end through click's CliRunner: runs recorded in the home's
Dagster instance, a progress display, a JSON summary; and its errors."""

import datetime as dt
import json

from click.testing import CliRunner
from dagster import DagsterRunStatus, RunsFilter

from headwater.cli.main import cli
from headwater.orchestrate.instance import instance
from headwater.orchestrate.runs import BACKFILL_TAG
from tests.helpers import query


def invoke(home, *args, **env):
    return CliRunner().invoke(cli, ["backfill", *args], env={"HEADWATER_HOME": str(home.root), **env})


def test_backfill_command_builds_the_range_and_records_its_runs(bronze):
    home = bronze
    result = invoke(home, "--start", "2024-03-01", "--end", "2024-03-02", "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["start"], summary["end"]) == ("2024-03-01", "2024-03-02")
    assert summary["rows"]["gold.active_users"] == 2 and summary["rows"]["silver.events"] > 0
    assert "backfill" in result.stderr and "runs recorded in" in result.stderr  # the progress display
    days = query(home, "SELECT ds FROM gold.active_users ORDER BY ds")["ds"].to_pylist()
    assert days == [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
    with instance(home) as inst:
        runs = inst.get_runs(RunsFilter(tags={BACKFILL_TAG: summary["backfill"]}))
        assert sorted(r.run_id for r in runs) == sorted(summary["runs"])
        assert all(r.status == DagsterRunStatus.SUCCESS for r in runs)


def test_backfill_command_errors_name_the_problem(home):
    no_bronze = invoke(home, "--start", "2024-03-01", "--end", "2024-03-02")
    assert no_bronze.exit_code == 3 and "bronze.events has no rows: nothing to backfill" in no_bronze.stderr
    bad_date = invoke(home, "--start", "2024-13-01")
    assert bad_date.exit_code == 2 and "'2024-13-01' is not a date in YYYY-MM-DD form" in bad_date.stderr
    bad_engine = invoke(home, "--start", "2024-03-01", HEADWATER_ENGINE="bogus")
    assert bad_engine.exit_code == 2 and "batch.engine: Input should be 'duckdb' or 'spark' (got 'bogus'" in bad_engine.stderr
    bad_first = invoke(home, HEADWATER_FIRST_DS="March")
    assert bad_first.exit_code == 2 and "batch.first_ds: Input should be a valid date" in bad_first.stderr and "HEADWATER_FIRST_DS" in bad_first.stderr


def test_backfill_command_refuses_a_range_without_data(bronze):
    result = invoke(bronze, "--start", "2023-01-01", "--end", "2023-01-31")
    assert result.exit_code == 3
    assert "nothing to backfill in 2023-01-01..2023-01-31: bronze has 2024-02-24..2024-03-06" in result.stderr
    reversed_ = invoke(bronze, "--start", "2024-03-02", "--end", "2024-03-01")
    assert reversed_.exit_code == 2 and "--start 2024-03-02 is after --end 2024-03-01" in reversed_.stderr


def test_backfill_command_refuses_an_invalid_models_config_before_any_run(bronze):
    (bronze.root / "models.toml").write_text('[[funnels]]\nname = "too_long"\nwindow_hours = 500\nsteps = ["a", "b"]\n')
    result = invoke(bronze, "--start", "2024-03-01", "--end", "2024-03-01")
    assert result.exit_code == 2 and result.stdout == ""
    assert "models.toml: funnels[0].window_hours: must be in (0, 168], got 500" in result.stderr


def test_backfill_command_stops_at_a_failed_run_and_names_the_step(bronze, monkeypatch):
    from headwater.errors import ConflictError
    from headwater.models import identity

    def failing(*args, **kwargs):
        raise ConflictError("silver.identity_links changed under the build", field="silver.identity_links")

    monkeypatch.setattr(identity, "links", failing)  # the run's first step fails (in this process: CliRunner)
    result = invoke(bronze, "--start", "2024-03-01", "--end", "2024-03-01")
    assert result.exit_code == 1 and result.stdout == "", result.stderr
    assert "failed:\nsilver__identity_links: silver.identity_links (whole table): ConflictError" in result.stderr
    assert "changed under the build" in result.stderr