"""`headwater tables`: the catalog with existence and row counts, in the three output formats."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
from click.testing import CliRunner

from headwater.cli import main
from headwater.config import Home
from headwater.lake import catalog
from headwater.lake.store import Lake


def run(home: Home, *args: str) -> str:
    r = CliRunner().invoke(main.cli, ["tables", *args], env={"HEADWATER_HOME": str(home.root)})
    assert r.exit_code == 0, (r.output, r.exception)
    return r.stdout


def test_tables_lists_the_catalog_with_existence_and_rows(tmp_path):
    home = Home(tmp_path)
    lake = Lake.of(home)
    lake.append("gold.events_hourly", pa.table({"events": [1, 2], "ds": [dt.date(2024, 3, 1)] * 2}))
    lake.append("silver.evt_signed_up", pa.table({"n": [1], "ds": [dt.date(2024, 3, 1)]}))
    rows = {r["name"]: r for r in json.loads(run(home, "--format", "json"))}
    assert [n for n in rows if "*" not in n and n != "silver.evt_signed_up"] == [t.name for t in catalog.TABLES if not t.is_family]
    hourly = rows["gold.events_hourly"]
    assert (hourly["exists"], hourly["rows"], hourly["layer"], hourly["partition_by"], hourly["writer"]) == (True, 2, "gold", "ds", "batch")
    assert hourly["description"] == catalog.spec("gold.events_hourly").description
    assert (rows["gold.sessions"]["exists"], rows["gold.sessions"]["rows"]) == (False, None)
    assert rows["silver.evt_*"]["exists"] is None and rows["silver.evt_signed_up"]["rows"] == 1
    csv = run(home, "--format", "csv").splitlines()
    assert csv[0] == '"name","layer","partition_by","grain","writer","description","exists","rows"'
    assert "gold.events_hourly" in run(home)
