"""The main job end to end: `headwater demo` in a subprocess, checked against the CSV itself.

The expected numbers are computed here with pandas straight from the dataset, not with
any of the platform's code.
"""

import datetime as dt
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.demo.replay import dataset_path
from headwater.lake.store import Lake


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "HEADWATER_HOME": str(home)}
    env.pop("HEADWATER_PORT", None)
    run = subprocess.run([sys.executable, "-m", "headwater", "demo"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return home, env, run.stdout


@pytest.fixture(scope="module")
def csv():
    df = pd.read_csv(dataset_path())
    df["ds"] = pd.to_datetime(df["timestamp"]).dt.date
    return df


def expected_active_users(csv: pd.DataFrame) -> pd.DataFrame:
    """DAU / WAU / MAU: distinct users active on the trailing 1 / 7 / 28 days ending at ds."""
    days = pd.date_range(csv["ds"].min(), csv["ds"].max(), freq="D").date
    active = csv.groupby("ds")["user_id"].apply(set).to_dict()
    rows = []
    for d in days:
        def users(n):
            return set().union(*(active.get(d - dt.timedelta(days=k), set()) for k in range(n)))
        rows.append({"ds": d, "dau": len(users(1)), "wau": len(users(7)), "mau": len(users(28))})
    return pd.DataFrame(rows)


def read(home, layer, name) -> pd.DataFrame:
    return DeltaTable(Lake.of(Home(home)).uri(f"{layer}.{name}")).to_pandas()


def test_silver_has_one_row_per_distinct_event_of_the_dataset(demo_home, csv):
    home, _, _ = demo_home
    silver = read(home, "silver", "events")
    distinct = csv.drop(columns="ds").drop_duplicates()
    assert len(csv) == 31106 and len(distinct) == 31076
    assert len(silver) == len(distinct)
    assert silver["event_id"].is_unique
    assert sorted(silver["event_name"].value_counts().items()) == sorted(distinct["event"].value_counts().items())
    assert (silver["ds"].value_counts().sort_index() == distinct.assign(ds=pd.to_datetime(distinct["timestamp"]).dt.date)["ds"].value_counts().sort_index()).all()


def test_no_raw_identifier_reaches_the_lake(demo_home, csv):
    home, _, _ = demo_home
    silver = read(home, "silver", "events")
    assert not set(silver["user_id"]) & set(csv["user_id"])
    assert silver["user_id"].nunique() == csv["user_id"].nunique() == 600


def test_active_users_equal_an_independent_computation_for_every_day(demo_home, csv):
    home, _, _ = demo_home
    got = read(home, "gold", "active_users").sort_values("ds").reset_index(drop=True)
    want = expected_active_users(csv)
    assert list(got["ds"]) == list(want["ds"])
    for col in ("dau", "wau", "mau"):
        assert got[col].astype(int).tolist() == want[col].tolist(), col


def test_demo_prints_what_happened(demo_home):
    _, _, stdout = demo_home
    assert "31,106" in stdout  # sent and accepted
    assert "31,076" in stdout  # bronze and silver
    assert "busiest day" in stdout


def test_tables_stay_queryable_from_the_cli(demo_home):
    home, env, _ = demo_home
    out = subprocess.run(
        [sys.executable, "-m", "headwater", "query", "SELECT count(*) AS n FROM silver.events", "--format", "json"],
        env=env, capture_output=True, text=True, check=True,
    )
    assert json.loads(out.stdout) == [{"n": 31076}]
    status = json.loads(
        subprocess.run([sys.executable, "-m", "headwater", "status", "--format", "json"], env=env, capture_output=True, text=True, check=True).stdout
    )
    assert status["lag"] == 0
    assert status["tables"]["bronze.events"] == 31076
    assert status["stream"]["totals"]["input_events"] == 31106
    assert status["stream"]["totals"]["duplicates"] == 30
