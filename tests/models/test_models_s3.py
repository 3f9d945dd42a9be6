"""The DuckDB batch models building silver and gold on an S3 lake (the ``s3`` fixture: moto's
server) equal the same builds on local disk: the same generated bronze, built day by day
and then a late day restated, gives the same rows in every table of the lake, the
cumulative states included."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import pytest

from headwater.config import Home
from headwater.demo import generate
from headwater.lake import sql
from headwater.lake.store import Lake
from headwater.models.run import build

FIRST = dt.date(2024, 3, 1)
DAYS = 3
EVENTS, USERS = 1_500, 120


def checksums(home: Home) -> dict[str, tuple[int, str]]:
    """Row count and sha256 of the sorted rows (as text) of every table of ``home``'s lake."""
    lake = Lake.of(home)
    con = sql.connect(lake)
    try:
        out = {}
        for table in lake.tables():
            sql.register(con, lake, table)
            rows = con.sql(f"SELECT CAST(t AS VARCHAR) AS r FROM {table} AS t ORDER BY r")["r"].fetchall()
            out[table] = (len(rows), hashlib.sha256("\n".join(r for (r,) in rows).encode()).hexdigest())
        return out
    finally:
        con.close()


def daily_builds(home: Home) -> float:
    """Generate and build :data:`DAYS` days one by one, then late rows for day 1 and its
    restatement; return the seconds the builds took."""
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / "models.toml").write_text(generate.MODELS_TOML)
    took = 0.0
    for k in range(DAYS):
        day = FIRST + dt.timedelta(days=k)
        generate.write_day(home, EVENTS, day, users=USERS)
        start = time.perf_counter()
        build(home, day, day)
        took += time.perf_counter() - start
    late = FIRST + dt.timedelta(days=1)
    generate.write_day(home, 200, late, seed=1, users=USERS)
    start = time.perf_counter()
    build(home, late, FIRST + dt.timedelta(days=DAYS - 1))
    return took + time.perf_counter() - start


@pytest.fixture
def s3_home(s3, tmp_path) -> Home:
    root = tmp_path / "s3home"
    root.mkdir()
    (root / "headwater.toml").write_text(s3.lake_toml(s3.create_bucket()))
    return Home(root)


def test_daily_builds_on_an_s3_lake_equal_the_same_builds_on_local_disk(s3_home, tmp_path):
    local = Home(tmp_path / "local")
    local_s = daily_builds(local)
    s3_s = daily_builds(s3_home)
    want = checksums(local)
    assert {"silver.events", "gold.active_users", "gold.conversions"} <= want.keys(), sorted(want)
    assert checksums(s3_home) == want
    assert not (s3_home.root / "lake").exists()  # only the tables live in the bucket
    print(f"\n{DAYS} daily builds + a restatement: local {local_s:.1f} s, s3 (moto) {s3_s:.1f} s")
