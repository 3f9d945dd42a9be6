"""Scheduled vacuum: ``headwater maintain`` vacuums every written table with the retention
``lake.vacuum_retention_h`` and prints what it removed; Dagster's ``maintain_schedule`` runs
it every ``lake.vacuum_every_h`` hours. Time travel within the retention keeps working."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
from click.testing import CliRunner
from dagster import DagsterInstance, build_schedule_context
from deltalake import DeltaTable

from headwater.cli.main import cli
from headwater.config import Home
from headwater.lake.store import Lake
from tests.lake.test_store import _age_removes

D1 = dt.date(2024, 3, 1)


def maintain(home: Home, *args: str):
    result = CliRunner().invoke(cli, ["maintain", *args], env={"HEADWATER_HOME": str(home.root)})
    assert result.exit_code == 0, result.output
    return result


def vacuumed(result) -> list[dict]:
    """The vacuum part of ``maintain --format json``'s rows."""
    return [{k: r[k] for k in ("table", "files_vacuumed", "paths")} for r in json.loads(result.stdout)]


def test_maintain_vacuums_every_written_table_and_keeps_time_travel_within_the_retention(tmp_path):
    home = Home(tmp_path / "home")
    lake = Lake.of(home)
    table = "gold.events_hourly"
    for n in (1, 2, 3):  # versions 0..2, each superseding the last
        lake.overwrite_partitions(table, pa.table({"events": [n], "ds": pa.array([D1], pa.date32())}), D1, D1)
    superseded = lake.add_actions(table, 0).column("path").to_pylist()
    _age_removes(lake, table, 1, hours=200)  # version 0's file: superseded 200 h ago (> 168 h default retention)
    got = vacuumed(maintain(home, "--format", "json"))
    assert got == [{"table": table, "files_vacuumed": 1, "paths": superseded}]
    assert DeltaTable(lake.uri(table), version=1).to_pyarrow_table().column("events").to_pylist() == [2]  # within it
    text = maintain(home, "--retention-h", "0").stdout  # the option overrides the setting: version 1's file goes now
    assert f"{table}" in text and "1 files vacuumed" in text
    assert vacuumed(maintain(home, "--format", "json")) == [{"table": table, "files_vacuumed": 0, "paths": []}]
    assert lake.dataset(table).to_table().column("events").to_pylist() == [3]


def test_the_maintain_schedule_runs_every_vacuum_every_h_hours(tmp_path, monkeypatch):
    from headwater.orchestrate.definitions import MAINTAIN_JOB, definitions

    monkeypatch.setenv("HEADWATER_LAKE_VACUUM_EVERY_H", "6")
    home = Home(tmp_path / "home")
    assert home.settings.lake.vacuum_every_h == 6
    defs = definitions(home)
    schedule = defs.get_schedule_def(f"{MAINTAIN_JOB}_schedule")
    assert schedule.job_name == MAINTAIN_JOB
    ran = []
    with DagsterInstance.ephemeral() as instance:
        for hour in range(24):
            at = dt.datetime(2024, 3, 1, hour, tzinfo=dt.timezone.utc)
            data = schedule.evaluate_tick(build_schedule_context(instance, scheduled_execution_time=at))
            ran += [hour] if data.run_requests else []
    assert ran == [0, 6, 12, 18]
    lake, table = Lake.of(home), "gold.events_hourly"
    for n in (1, 2):
        lake.overwrite_partitions(table, pa.table({"events": [n], "ds": pa.array([D1], pa.date32())}), D1, D1)
    superseded = lake.add_actions(table, 0).column("path").to_pylist()
    _age_removes(lake, table, 1, hours=200)
    assert defs.get_job_def(MAINTAIN_JOB).execute_in_process().success
    assert not (Path(lake.uri(table)) / superseded[0]).exists()
    assert lake.dataset(table).to_table().column("events").to_pylist() == [2]
