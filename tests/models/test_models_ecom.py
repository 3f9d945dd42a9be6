"""The batch models on the real ecom dataset, written to real Delta tables (no mocks).

Every gold table is compared with an independent pandas computation straight from the CSV
(:mod:`tests.models.ecom_reference`), and the dataset's planted stories are asserted on the
gold tables: a mobile checkout bug, a payment incident and an activity spike.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil

from collections.abc import Iterator

import duckdb
import pandas as pd
import pytest

from headwater.config import Home
from headwater.lake import sql
from headwater.lake.schemas import SILVER_EVENTS_SCHEMA
from headwater.lake.store import Lake
from headwater.models import config as model_config
from headwater.models.dag import MODELS
from headwater.models.run import build, identity_stale_days, run_model
from tests.models import ecom_reference as ref
from tests.helpers import query
from tests.models.bronze import event, history, write
from tests.models.ecom_bronze import ecom_csv_path, resends, write_bronze

CSV_ROWS = 31_106
DISTINCT_EVENTS = 31_076
FIRST, LAST = dt.date(2024, 1, 4), dt.date(2024, 7, 1)  # bronze min..max ds (re-sends included)


def doy(n: int) -> dt.date:
    """Day ``n`` of 2024 (1 = Jan 1)."""
    return dt.date(2024, 1, 1) + dt.timedelta(days=n - 1)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Home, list[dict]]:
    """A home whose bronze.events holds the dataset (+ re-sends); never built on."""
    home = Home(tmp_path_factory.mktemp("ecom-template"))
    return home, write_bronze(home)


@pytest.fixture
def home(template, tmp_path) -> Home:
    """A private copy of the template's bronze, to build on."""
    src, _ = template
    shutil.copytree(src.root / "lake", tmp_path / "lake")
    return Home(tmp_path)


@pytest.fixture(scope="module")
def built(template, tmp_path_factory) -> Iterator[tuple[duckdb.DuckDBPyConnection, dict, Home]]:
    """The full default build over a copy of the template, and one catalog connection to it
    (shared by the read-only tests: opening the catalog costs more than most queries)."""
    src, _ = template
    root = tmp_path_factory.mktemp("ecom-built")
    shutil.copytree(src.root / "lake", root / "lake")
    home = Home(root)
    written = build(home)
    con = connect(home)
    yield con, written, home
    con.close()


def connect(home: Home) -> duckdb.DuckDBPyConnection:
    """A SQL catalog connection holding every table of ``home``'s lake."""
    lake = Lake.of(home)
    con = sql.connect(lake)
    for table in lake.tables():
        sql.register(con, lake, table)
    return con


def frame(db: Home | duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> pd.DataFrame:
    """Rows of ``sql`` over a home's catalog or an open catalog connection."""
    if isinstance(db, Home):
        return query(db, sql, params).to_pandas()
    return db.sql(sql, params=params).to_arrow_table().to_pandas()


def scalar(db: Home | duckdb.DuckDBPyConnection, sql: str, params: dict | None = None):
    return frame(db, sql, params).iloc[0, 0]


def same(got: pd.DataFrame, want: pd.DataFrame, keys: list[str]) -> None:
    """Equal as sets of rows (sorted on ``keys``), values compared exactly (floats to 1e-12)."""
    got = got[list(want.columns)].sort_values(keys).reset_index(drop=True)
    want = want.sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-12)


def checksums(home: Home) -> dict[str, tuple[int, str]]:
    """Row count and sha256 of the sorted rows (as text) of every model's table."""
    con = connect(home)
    try:
        out = {}
        for model in MODELS:
            rows = con.sql(f"SELECT CAST(t AS VARCHAR) AS r FROM {model.table} AS t ORDER BY r")["r"].fetchall()
            out[model.table] = (len(rows), hashlib.sha256("\n".join(r for (r,) in rows).encode()).hexdigest())
        return out
    finally:
        con.close()


# -- the dataset itself ----------------------------------------------------------------------
def test_dataset_shape(template):
    df = pd.read_csv(ecom_csv_path())
    assert len(df) == CSV_ROWS
    assert len(df.drop_duplicates()) == DISTINCT_EVENTS == len(ref.events())
    home, events = template
    assert len({e["event_id"] for e in events}) == DISTINCT_EVENTS
    # bronze holds every delivery: the CSV rows plus the re-sends
    assert Lake.of(home).row_count("bronze.events") == CSV_ROWS + len(resends(events))


# -- silver ----------------------------------------------------------------------------------
def test_silver_is_exactly_deduplicated(built, template):
    db, written, home = built
    _, events = template
    assert written["silver.events"] == DISTINCT_EVENTS
    n, distinct = frame(db, "SELECT count(*), count(DISTINCT event_id) FROM silver.events").iloc[0]
    assert n == distinct == DISTINCT_EVENTS
    # the winner is the first delivery: every (event_id, ds) is the original's, no re-send survives
    got = set(map(tuple, frame(db, "SELECT event_id, ds, received_at FROM silver.events").values.tolist()))
    first: dict[str, dict] = {}
    for e in events:
        if e["event_id"] not in first or e["received_at"] < first[e["event_id"]]["received_at"]:
            first[e["event_id"]] = e
    want = {(e["event_id"], e["ds"], pd.Timestamp(e["received_at"])) for e in first.values()}
    assert got == want
    assert scalar(db, "SELECT count(*) AS n FROM silver.events WHERE context LIKE '%resent%'") == 0


def test_silver_keeps_the_winner_and_adds_the_person(built):
    db, _, home = built
    assert Lake.of(home).schema("silver.events") == SILVER_EVENTS_SCHEMA
    bronze = frame(db, "SELECT * FROM bronze.events WHERE context = '{}'")
    bronze = bronze.drop_duplicates("event_id").set_index("event_id").sort_index()
    silver = frame(db, "SELECT * FROM silver.events").set_index("event_id").sort_index()
    # no identify / alias in the dataset: every user id is its own person
    assert (silver.pop("person_id") == silver["user_id"]).all()
    pd.testing.assert_frame_equal(silver, bronze)


def test_no_identity_links_in_the_dataset(built):
    db, written, _ = built
    for table in ("silver.identity_map", "silver.identity_refused", "silver.dim_user"):
        assert written[table] == scalar(db, f"SELECT count(*) AS n FROM {table}") == 0, table


# -- gold = pandas, table by table -----------------------------------------------------------
def test_active_users_equal_pandas_on_every_day(built):
    db, written, home = built
    got = frame(db, "SELECT * FROM gold.active_users ORDER BY ds")
    assert (got["ds"].min(), got["ds"].max()) == (FIRST, LAST)
    assert written["gold.active_users"] == len(got) == (LAST - FIRST).days + 1
    same(got, ref.active_users(FIRST, LAST), ["ds"])
    assert (got["dau"] <= got["wau"]).all() and (got["wau"] <= got["mau"]).all()


def test_active_users_by_platform_equal_pandas(built):
    db, _, home = built
    got = frame(db, "SELECT * FROM gold.active_users_by_platform")
    assert set(got["platform"]) == {"desktop", "mobile", "tablet"}
    same(got, ref.active_users(FIRST, LAST, by_platform=True), ["ds", "platform"])


def test_events_hourly_equal_pandas(built):
    db, _, home = built
    got = frame(db, "SELECT * FROM gold.events_hourly")
    assert (got["event_type"] == "track").all() and got["events"].sum() == DISTINCT_EVENTS
    assert (got["ds"] == got["hour"].dt.date).all()
    same(got, ref.events_hourly(), ["hour", "event_name", "platform"])


def test_sessions_equal_pandas(built):
    db, _, home = built
    got = frame(db, "SELECT * FROM gold.sessions")
    want = ref.sessions()
    assert len(got) == len(want) and got["session_id"].is_unique
    assert got["events"].sum() == DISTINCT_EVENTS  # every event in exactly one session
    same(got, want, ["person_id", "session_start"])
    # a person's sessions are disjoint and more than 30 minutes apart
    got = got.sort_values(["person_id", "session_start"])
    same_person = got["person_id"].eq(got["person_id"].shift(-1))
    gaps = (got["session_start"].shift(-1) - got["session_end"])[same_person]
    assert (gaps > pd.Timedelta(minutes=30)).all()


def test_retention_equals_pandas(built):
    db, _, home = built
    got = frame(db, "SELECT * FROM gold.retention")
    same(got, ref.retention(), ["ds", "cohort_grain", "period"])
    assert (got.loc[got["cohort_grain"] == "day"].query("period == 0")["retention"] == 1).all()
    assert set(got["period"]) == set(range(31)) and got.query("cohort_grain == 'week'")["period"].max() == 12
    months = got.query("cohort_grain == 'month'")
    # data from Jan 4 to Jun 29: cohorts of January to May (June is not over), January's followed to May
    assert sorted(set(months["cohort_start"])) == [dt.date(2024, m, 1) for m in range(1, 6)]
    assert months.query("period == 0")["retention"].eq(1).all() and months["period"].max() == 4


def test_funnels_equal_pandas(built):
    db, _, home = built
    [checkout] = [f for f in model_config.load().funnels if f.name == "checkout"]
    got = frame(db, "SELECT * FROM gold.funnels WHERE funnel = 'checkout'")
    want = ref.funnel(list(checkout.steps), pd.Timedelta(hours=checkout.window_hours))
    same(got, want, ["ds", "platform", "step"])
    # the Segment e-commerce funnel has no events in this dataset: no rows, no error
    assert scalar(db, "SELECT count(*) AS n FROM gold.funnels WHERE funnel <> 'checkout'") == 0


# -- the planted stories ---------------------------------------------------------------------
def step_conversion(db: duckdb.DuckDBPyConnection, step: int, days: tuple[int, int], platforms: tuple[str, ...], inside: bool) -> float:
    """users at ``step`` / users at ``step - 1`` of the checkout funnel, summed over entry
    days inside (or outside) days-of-2024 ``days`` and the given platforms."""
    sql = f"""
        SELECT sum(users) FILTER (WHERE step = $step) / sum(users) FILTER (WHERE step = $step - 1) AS c
        FROM gold.funnels
        WHERE funnel = 'checkout' AND platform IN ({", ".join(f"'{p}'" for p in platforms)})
          AND ({"" if inside else "NOT "}ds BETWEEN $a AND $b)
    """
    return scalar(db, sql, {"step": step, "a": doy(days[0]), "b": doy(days[1])})


def test_story_mobile_checkout_bug_days_100_to_130(built):
    """shipping_details → payment_details (step 3 of checkout) drops on mobile only."""
    db, _, home = built
    bug = step_conversion(db, 3, (100, 130), ("mobile",), inside=True)
    mobile_otherwise = step_conversion(db, 3, (100, 130), ("mobile",), inside=False)
    desktop_meanwhile = step_conversion(db, 3, (100, 130), ("desktop",), inside=True)
    assert bug < 0.7 * mobile_otherwise, (bug, mobile_otherwise)
    assert bug < 0.7 * desktop_meanwhile, (bug, desktop_meanwhile)
    assert desktop_meanwhile > 0.8 * step_conversion(db, 3, (100, 130), ("desktop",), inside=False)


def test_story_payment_incident_days_140_to_160(built):
    """payment_details → purchase (step 4) drops on every platform together."""
    db, _, home = built
    every = ("desktop", "mobile", "tablet")
    incident = step_conversion(db, 4, (140, 160), every, inside=True)
    otherwise = step_conversion(db, 4, (140, 160), every, inside=False)
    assert incident < 0.7 * otherwise, (incident, otherwise)
    # the step before is not hit: the drop is at payment
    assert step_conversion(db, 3, (140, 160), every, inside=True) > 0.9 * step_conversion(db, 3, (140, 160), every, inside=False)


def test_story_activity_spike_days_60_to_63(built):
    db, _, home = built
    daily = frame(db, "SELECT ds, sum(events) AS events FROM gold.events_hourly GROUP BY ds").set_index("ds")["events"]
    window = daily[(daily.index >= doy(56)) & (daily.index <= doy(70))]
    busiest = window.idxmax()
    assert doy(60) <= busiest <= doy(63), busiest
    assert window.max() >= 1.5 * window.median(), window.to_dict()
    dau = frame(db, "SELECT ds, dau FROM gold.active_users").set_index("ds")["dau"]
    assert dau[busiest] >= 1.4 * dau[(dau.index >= doy(56)) & (dau.index <= doy(70))].median()


# -- ranges, rebuilds, idempotence -----------------------------------------------------------
def test_one_day_on_a_fresh_home_builds_what_it_reads(home, template):
    """One gold day first builds every silver day the gold models read; re-sent copies that
    sit in that day (their original elsewhere) do not enter it."""
    _, events = template
    copies = resends(events)
    day = copies[1]["ds"]  # a re-send pushed two days later than its original
    assert copies[1]["event_id"] not in {e["event_id"] for e in events if e["ds"] == day}
    lines: list[str] = []
    written = build(home, day, day, progress=lines.append)
    assert written["gold.active_users"] == 1
    assert [line.split(":")[0] for line in lines[:4]] == [
        "silver.identity_links (whole table)",
        "silver.identity_map (whole table)",
        "silver.identity_refused (whole table)",
        f"silver.events {FIRST}..{min(LAST, day + dt.timedelta(days=366))}",  # retention: all history, 366 days ahead
    ]
    # the whole-table readers of silver (the dimensions) run once, last (after any restatement)
    assert [line.split(":")[0] for line in lines[-3:]] == [
        "silver.dim_user (whole table)", "silver.dim_device (whole table)", "silver.dim_experiment (whole table)"]
    silver = query(home, "SELECT event_id FROM silver.events WHERE ds = $d", {"d": day})["event_id"].to_pylist()
    originals = {e["event_id"] for e in events if e["ds"] == day}
    assert set(silver) == originals and len(silver) == len(originals)
    same(frame(home, "SELECT * FROM gold.active_users"), ref.active_users(day, day), ["ds"])
    want = ref.retention()
    same(frame(home, "SELECT * FROM gold.retention"), want[want["ds"] == day], ["ds", "cohort_grain", "period"])


@pytest.fixture
def built_copy(built, tmp_path) -> Home:
    """A private copy of the fully built home (Delta history included), to rebuild on."""
    _, _, src = built
    shutil.copytree(src.root / "lake", tmp_path / "lake")
    return Home(tmp_path)


def test_rebuilds_are_idempotent(built_copy):
    home = built_copy
    want = checksums(home)
    assert want["silver.events"][0] == DISTINCT_EVENTS and want["gold.active_users"][0] == 180
    ranges = [
        (None, None),  # the whole range again
        (dt.date(2024, 2, 1), dt.date(2024, 2, 5)),  # a sub-range, out of order
    ]
    for start, end in ranges:
        build(home, start, end)
        assert checksums(home) == want, (start, end)

    for model in MODELS:
        commits = history(home, model.table)
        assert len(commits) == 1 + len(ranges), model.table  # one commit per build, never more
        for commit in commits:
            assert commit["operation"] == "WRITE", model.table
            assert commit["operationParameters"]["mode"] == "Overwrite", model.table
            assert ("predicate" in commit["operationParameters"]) == model.partitioned, model.table


def test_restating_the_affected_days_equals_a_full_rebuild(built_copy, tmp_path):
    """Late events for a built day: rebuilding only the partitions ``Model.affected_days``
    names (what the late-data sensor does) gives the tables a full rebuild gives."""
    home = built_copy
    late_day = dt.date(2024, 3, 15)
    rows_ = ref.events()
    newcomer = rows_[rows_["day"] > dt.date(2024, 5, 1)].iloc[0]  # first active later: moves cohort
    ts = dt.datetime(2024, 3, 15, 23, 50, tzinfo=dt.timezone.utc)
    write(home, [
        event("late-1", ts, user=newcomer["user_id"], anon=None, event_name="add_to_cart", platform="mobile"),
        event("late-2", ts, user="user_new", anon=None, event_name="home", platform="tablet"),
    ], batch_id=99)
    before = frame(home, "SELECT ds, dau FROM gold.active_users ORDER BY ds").set_index("ds")["dau"]

    dirty: dict[str, set[dt.date]] = {"bronze.events": {late_day}}
    con = connect(home)
    for model in MODELS:
        if not model.partitioned:
            run_model(home, model, late_day, late_day, con)
            continue
        lo, hi = model.affected_days  # a change on d reaches d + lo .. d + hi (None: unbounded)
        days = set()
        for d in set().union(*(dirty.get(t, set()) for t in model.inputs)):
            first = FIRST if lo is None else d + dt.timedelta(days=lo)
            last = LAST if hi is None else d + dt.timedelta(days=hi)
            days |= {first + dt.timedelta(days=k) for k in range((last - first).days + 1)}
        if model.table == "silver.events":
            days |= set(identity_stale_days(home, con))
        days = {d for d in days if FIRST <= d <= LAST}
        if days:
            run_model(home, model, min(days), max(days), con)
            dirty[model.table] = days
    con.close()
    after = frame(home, "SELECT ds, dau FROM gold.active_users ORDER BY ds").set_index("ds")["dau"]
    assert after[late_day] == before[late_day] + 2  # a user first active in May, and a new one
    assert (after.drop(late_day) == before.drop(late_day)).all()  # no other day's DAU changes
    restated = checksums(home)

    full = Home(tmp_path / "full")
    shutil.copytree(home.root / "lake" / "bronze", full.root / "lake" / "bronze")
    build(full)
    assert restated == checksums(full)
