"""Daily builds read day N and the cumulative state of N-1, and still equal a full rebuild.

Generated days (headwater.demo.generate: the same users every day, logging in on some days
and not others, so anonymous days are stitched to persons later; shared devices, aliases,
exposures, re-sends) are built one day at a time the way the daily schedule builds them;
then late rows land for an earlier day and the next day is built. Every model table —
the states included — equals a full rebuild (``build(full=True)``) of the same bronze.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil

import pytest
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.demo import generate
from headwater.errors import InvalidInputError
from headwater.lake import sql
from headwater.lake.store import Lake
from headwater.models.dag import MODELS
from headwater.models.run import build

FIRST = dt.date(2024, 3, 1)
DAYS = 6
EVENTS, USERS = 2_000, 150


def day(k: int) -> dt.date:
    return FIRST + dt.timedelta(days=k)


def checksums(home: Home) -> dict[str, tuple[int, str]]:
    """Row count and sha256 of the sorted rows (as text) of every fixed model's table."""
    lake = Lake.of(home)
    con = sql.connect(lake)
    try:
        out = {}
        for model in MODELS:
            sql.register(con, lake, model.table)
            rows = con.sql(f"SELECT CAST(t AS VARCHAR) AS r FROM {model.table} AS t ORDER BY r")["r"].fetchall()
            out[model.table] = (len(rows), hashlib.sha256("\n".join(r for (r,) in rows).encode()).hexdigest())
        return out
    finally:
        con.close()


def new_home(root) -> Home:
    home = Home(root)
    home.root.mkdir(parents=True, exist_ok=True)
    (home.root / "models.toml").write_text(generate.MODELS_TOML)
    return home


def full_rebuild(home: Home, root) -> Home:
    """A copy of ``home``'s bronze built from scratch."""
    other = new_home(root)
    shutil.copytree(Lake.of(home).uri("bronze.events"), Lake.of(other).uri("bronze.events"))
    build(other, full=True)
    return other


def add_late_and_next_day(home: Home) -> None:
    """Late rows for day 2 (another seed: new events of the same users) and the next day."""
    generate.write_day(home, 300, day(2), seed=1, users=USERS)
    generate.write_day(home, EVENTS, day(DAYS), users=USERS)


@pytest.fixture(scope="module")
def daily(tmp_path_factory) -> Home:
    """Days 0 .. DAYS-1 built one by one, incrementally."""
    home = new_home(tmp_path_factory.mktemp("daily") / "home")
    for k in range(DAYS):
        generate.write_day(home, EVENTS, day(k), users=USERS)
        build(home, day(k), day(k))
    return home


def copy(home: Home, root) -> Home:
    shutil.copytree(home.root, root)
    return Home(root)


def test_daily_builds_equal_a_full_rebuild(daily, tmp_path):
    lines: list[str] = []
    home = copy(daily, tmp_path / "home")
    generate.write_day(home, EVENTS, day(DAYS), users=USERS)
    build(home, day(DAYS), day(DAYS), progress=lines.append)
    # day N reads day N: silver and the states run on that day only (identity stitching aside)
    ran = [line.split(":")[0] for line in lines]
    for table in ("silver.events", "silver.person_state", "silver.exposure_state", "silver.conversions"):
        assert f"{table} {day(DAYS)}..{day(DAYS)}" in ran, (table, ran)
    want = checksums(full_rebuild(home, tmp_path / "full"))
    assert all(want[t][0] > 0 for t in ("silver.person_state", "silver.exposure_state", "gold.retention", "gold.experiments"))
    # conversions on day N take variants from exposures of earlier days: through the state
    lake = Lake.of(home)
    con = sql.connect(lake)
    try:
        sql.register(con, lake, "silver.conversions")
        sql.register(con, lake, "silver.exposures")
        from_earlier_days = con.sql(
            "SELECT count(*) FROM silver.conversions AS c WHERE c.ds = $d AND c.experiment_variants <> '{}' "
            "AND NOT EXISTS (SELECT 1 FROM silver.exposures AS x WHERE x.person_id = c.person_id AND x.ds = $d)",
            params={"d": day(DAYS)},
        ).fetchall()[0][0]
    finally:
        con.close()
    assert from_earlier_days > 0
    assert checksums(home) == want


def test_late_rows_restate_the_states_forward_and_equal_a_full_rebuild(daily, tmp_path):
    home = copy(daily, tmp_path / "home")
    add_late_and_next_day(home)
    lines: list[str] = []
    build(home, day(DAYS), day(DAYS), progress=lines.append)
    # restated forward from the late day (or an earlier day stitched to a person since)
    restated = [line.split(":")[0].split()[1].split("..") for line in lines if line.startswith("silver.person_state")]
    assert any(dt.date.fromisoformat(a) <= day(2) and b == day(DAYS).isoformat() for a, b in restated), lines
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_a_backfill_of_an_old_day_restates_forward(daily, tmp_path):
    """What ``headwater import`` does after writing old days to bronze: build those days."""
    home = copy(daily, tmp_path / "home")
    generate.write_day(home, 500, day(1), seed=2, users=USERS)
    build(home, day(1), day(1))
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_a_full_rebuild_takes_no_range(daily, monkeypatch):
    with pytest.raises(InvalidInputError, match="full rebuild"):
        build(daily, day(0), day(1), full=True)
    monkeypatch.setenv("HEADWATER_HOME", str(daily.root))
    result = CliRunner().invoke(cli, ["batch", "--full-rebuild", "--start", str(day(0))])
    assert result.exit_code == 2 and "--full-rebuild covers every day of bronze" in result.output



def test_a_large_range_runs_two_models_at_once_and_equals_a_full_rebuild_run_one_at_a_time(daily, tmp_path, monkeypatch):
    from headwater.models import run

    seen: list[int] = []
    steps = run._run_steps

    def spy(*args, workers: int) -> None:
        seen.append(workers)
        steps(*args, workers=workers)

    monkeypatch.setattr(run, "_run_steps", spy)
    home = copy(daily, tmp_path / "home")
    generate.write_day(home, EVENTS, day(DAYS), users=USERS)
    full = full_rebuild(home, tmp_path / "full")  # a small range: one model at a time
    assert set(seen) == {1}
    seen.clear()
    monkeypatch.setattr(run, "PARALLEL_MIN_ROWS", EVENTS)  # the day's rows make this range "large"
    build(home, day(DAYS), day(DAYS))
    assert set(seen) == {run._WORKERS}
    assert checksums(home) == checksums(full)
