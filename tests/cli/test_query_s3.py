"""The CLI on a home whose lake is on S3 (the ``s3`` fixture: moto's server), configured by
``headwater.toml`` alone: ``headwater query`` over gold built there, ``headwater maintain``
(retention, clustering, compaction, vacuum) and, for an unreachable endpoint, a one-line
error naming the setting with the transient exit code, never a traceback."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.demo import generate
from headwater.lake.store import Lake
from headwater.models.run import build

DAY = dt.date(2024, 3, 1)
UTC = pa.timestamp("us", tz="UTC")
NOW = dt.datetime.now(dt.timezone.utc)
YESTERDAY = NOW.date() - dt.timedelta(days=1)


def headwater(home: Home, *args: str):
    return CliRunner().invoke(cli, list(args), env={"HEADWATER_HOME": str(home.root)})


def s3_home(s3, root) -> Home:
    root.mkdir()
    (root / "headwater.toml").write_text(s3.lake_toml(s3.create_bucket()))
    (root / "models.toml").write_text(generate.MODELS_TOML)
    return Home(root)


def test_query_reads_gold_built_on_s3(s3, tmp_path):
    home = s3_home(s3, tmp_path / "home")
    generate.write_day(home, 800, DAY, users=60)
    build(home, DAY, DAY)
    out = headwater(home, "query", "SELECT ds, dau, wau, mau FROM gold.active_users ORDER BY ds", "--format", "json")
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    persons = Lake.of(home).dataset("silver.events").to_table(columns=["person_id"]).column("person_id").unique()
    assert rows == [{"ds": DAY.isoformat(), "dau": len(persons), "wau": len(persons), "mau": len(persons)}]
    assert 0 < len(persons) <= 60 + 60  # generated users, anonymous persons included
    assert not (home.root / "lake").exists()


def test_maintain_on_s3(s3, tmp_path):
    home = s3_home(s3, tmp_path / "home")
    lake = Lake.of(home)
    ends = [NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=3), NOW]
    lake.append("realtime.events_per_minute", pa.table({"window_end": pa.array(ends, UTC), "events": [1, 2, 3]}))
    for i in range(3):
        lake.append("bronze.late_events", pa.table({"event_id": [f"l{i}"], "ds": pa.array([YESTERDAY], pa.date32())}))
    lake.append("silver.events", pa.table({"event_name": ["b", "a"], "person_id": ["p1", "p2"], "ds": pa.array([YESTERDAY] * 2, pa.date32())}))

    out = headwater(home, "maintain", "--format", "json", "--min-files", "3", "--retention-h", "0")
    assert out.exit_code == 0, out.output
    got = {r["table"]: r for r in json.loads(out.stdout)}
    assert got["realtime.events_per_minute"]["rows_deleted"] == 1
    assert (got["bronze.late_events"]["files_before"], got["bronze.late_events"]["files_after"]) == (3, 1)
    assert got["bronze.late_events"]["files_vacuumed"] == 3
    assert got["silver.events"]["partitions_clustered"] == 1
    assert sorted(lake.dataset("bronze.late_events").to_table()["event_id"].to_pylist()) == ["l0", "l1", "l2"]
    assert lake.dataset("silver.events").to_table()["event_name"].to_pylist() == ["a", "b"]  # sorted by the clustering
    again = {r["table"]: r for r in json.loads(headwater(home, "maintain", "--format", "json", "--retention-h", "0").stdout)}
    assert all(r["files_vacuumed"] == 0 and r["partitions_clustered"] == 0 for r in again.values())


def test_an_unreachable_endpoint_is_one_line_naming_the_setting(tmp_path):
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "headwater.toml").write_text(
        '[lake]\nroot = "s3://lake-bucket/lake"\ns3_endpoint = "http://127.0.0.1:1"\ns3_region = "us-east-1"\n'
        's3_access_key_id = "AKIDEXAMPLE"\ns3_secret_access_key = "never-printed-secret"\n')
    for args in (["query", "SELECT * FROM gold.active_users"], ["maintain"], ["tables"]):
        out = headwater(home, *args)
        assert out.exit_code == 75, (args, out.output)  # TransientError
        assert "lake.s3_endpoint" in out.output and "Traceback" not in out.output, out.output
        assert len(out.output.strip().splitlines()) == 1 and "never-printed-secret" not in out.output
