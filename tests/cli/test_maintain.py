"""``headwater maintain``: realtime retention, compaction of small-file partitions, clustering
of closed silver days and vacuum, reported per table as text or JSON; options override the
lake settings for one run."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.lake.store import Lake

UTC = pa.timestamp("us", tz="UTC")
NOW = dt.datetime.now(dt.timezone.utc)
YESTERDAY = NOW.date() - dt.timedelta(days=1)


def maintain(home: Home, *args: str) -> str:
    result = CliRunner().invoke(cli, ["maintain", *args], env={"HEADWATER_HOME": str(home.root)})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_maintain_expires_compacts_clusters_and_reports_each_table(tmp_path):
    home = Home(tmp_path / "home")
    lake = Lake(home.settings.lake_root)
    ends = [NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=3), NOW]
    lake.append("realtime.events_per_minute", pa.table({"window_end": pa.array(ends, UTC), "events": [1, 2, 3]}))
    for i in range(3):
        lake.append("bronze.late_events", pa.table({"event_id": [f"l{i}"], "ds": pa.array([YESTERDAY], pa.date32())}))
    lake.append("silver.events", pa.table({"event_name": ["b", "a"], "person_id": ["p1", "p2"], "ds": pa.array([YESTERDAY] * 2, pa.date32())}))

    got = {r["table"]: r for r in json.loads(maintain(home, "--format", "json", "--min-files", "3", "--retention-h", "0"))}
    assert set(got) == {"realtime.events_per_minute", "bronze.late_events", "silver.events"}
    assert set(got["bronze.late_events"]) == {"table", "files_before", "files_after", "rows_deleted", "partitions_compacted",
                                             "partitions_clustered", "files_vacuumed", "paths"}
    assert got["realtime.events_per_minute"]["rows_deleted"] == 1  # older than lake.realtime_retention_days (7)
    late = got["bronze.late_events"]
    assert (late["files_before"], late["files_after"], late["partitions_compacted"], late["files_vacuumed"]) == (3, 1, 1, 3)
    assert got["silver.events"]["partitions_clustered"] == 1
    assert lake.dataset("silver.events").to_table().column("event_name").to_pylist() == ["a", "b"]
    assert (home.root / "maintain" / "clustered.json").exists()

    text = maintain(home, "--realtime-retention-days", "1")  # the option overrides the setting for this run
    assert "realtime.events_per_minute" in text and "1 rows deleted" in text
    assert text.splitlines()[-1].endswith("1 rows deleted in 3 tables")
    again = {r["table"]: r for r in json.loads(maintain(home, "--format", "json"))}
    assert all(r["rows_deleted"] == r["partitions_compacted"] == r["partitions_clustered"] == 0 for r in again.values())
