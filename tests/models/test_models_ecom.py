"""The batch models on the real ecom dataset, written to real Delta tables (no mocks)."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake import tables
from headwater.models.run import ACTIVE_USERS_SCHEMA, build
from headwater.serve.catalog import connect, query
from tests.models.ecom_bronze import ecom_csv_path, resends, write_bronze

CSV_ROWS = 31_106
DISTINCT_EVENTS = 31_076


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
def built(template, tmp_path_factory) -> tuple[Home, dict]:
    """The full default build over a copy of the template (shared by read-only tests)."""
    src, _ = template
    root = tmp_path_factory.mktemp("ecom-built")
    shutil.copytree(src.root / "lake", root / "lake")
    home = Home(root)
    return home, build(home)


# -- the independent reference: pandas, straight from the CSV ------------------------------
def pandas_active_users(start: dt.date, end: dt.date) -> pd.DataFrame:
    """DAU/WAU/MAU per day from the raw CSV: distinct user_id active in [d], [d-6, d], [d-27, d]."""
    df = pd.read_csv(ecom_csv_path(), usecols=["user_id", "timestamp"])
    df["day"] = pd.to_datetime(df["timestamp"]).dt.date
    per_day = df.groupby("day")["user_id"].agg(set).to_dict()
    rows = []
    for d in pd.date_range(start, end, freq="D").date:
        def active(days: int) -> int:
            users: set[str] = set()
            for k in range(days):
                users |= per_day.get(d - dt.timedelta(days=k), set())
            return len(users)

        rows.append({"ds": d, "dau": active(1), "wau": active(7), "mau": active(28)})
    return pd.DataFrame(rows)


def gold_frame(home: Home, start: dt.date | None = None, end: dt.date | None = None) -> pd.DataFrame:
    sql = "SELECT ds, dau, wau, mau FROM gold.active_users"
    if start is not None:
        sql += " WHERE ds BETWEEN $start AND $end"
    params = {"start": start, "end": end} if start is not None else None
    return query(home, sql + " ORDER BY ds", params).to_pandas()


def checksums(home: Home) -> dict[str, tuple[int, str]]:
    """Row count and sha256 of the sorted rows (as text) of every built table."""
    con = connect(home)
    try:
        out = {}
        for table in ("silver.events", "gold.active_users"):
            rows = con.sql(f"SELECT CAST(t AS VARCHAR) AS r FROM {table} AS t ORDER BY r")["r"].fetchall()
            out[table] = (len(rows), hashlib.sha256("\n".join(r for (r,) in rows).encode()).hexdigest())
        return out
    finally:
        con.close()


def delta_schema(home: Home, layer: str, name: str) -> pa.Schema:
    return pa.schema(DeltaTable(str(home.table_path(layer, name))).schema().to_arrow())


# -- the dataset itself ----------------------------------------------------------------------
def test_dataset_shape(template):
    df = pd.read_csv(ecom_csv_path())
    assert len(df) == CSV_ROWS
    assert len(df.drop_duplicates()) == DISTINCT_EVENTS
    home, events = template
    assert len({e["event_id"] for e in events}) == DISTINCT_EVENTS
    # bronze holds every delivery: the CSV rows plus the re-sends
    assert tables.row_count(home.table_path("bronze", "events")) == CSV_ROWS + len(resends(events))


# -- silver.events ---------------------------------------------------------------------------
def test_silver_is_exactly_deduplicated(built, template):
    home, written = built
    _, events = template
    assert written["silver.events"] == DISTINCT_EVENTS
    n, distinct = query(home, "SELECT count(*), count(DISTINCT event_id) FROM silver.events").to_pylist()[0].values()
    assert n == distinct == DISTINCT_EVENTS
    # the winner is the first delivery: every (event_id, ds) is the original's, no re-send survives
    got = set(map(tuple, query(home, "SELECT event_id, ds, received_at FROM silver.events").to_pandas().values.tolist()))
    first: dict[str, dict] = {}
    for e in events:
        if e["event_id"] not in first or e["received_at"] < first[e["event_id"]]["received_at"]:
            first[e["event_id"]] = e
    want = {(e["event_id"], e["ds"], pd.Timestamp(e["received_at"])) for e in first.values()}
    assert got == want
    assert query(home, "SELECT count(*) AS n FROM silver.events WHERE context LIKE '%resent%'")["n"][0].as_py() == 0


def test_silver_schema_is_event_schema(built):
    home, _ = built
    assert delta_schema(home, "silver", "events") == EVENT_SCHEMA


def test_silver_keeps_columns_of_the_winner(built):
    home, _ = built
    bronze = query(home, "SELECT * FROM bronze.events WHERE context = '{}'").to_pandas()
    bronze = bronze.drop_duplicates("event_id").set_index("event_id").sort_index()
    silver = query(home, "SELECT * FROM silver.events").to_pandas().set_index("event_id").sort_index()
    pd.testing.assert_frame_equal(silver, bronze)


def test_resends_across_partitions_are_removed_from_a_subrange(home, template):
    """A range holding only re-sent copies of an event must not receive it."""
    _, events = template
    copies = resends(events)
    day = copies[1]["ds"]  # a re-send pushed two days later than its original
    build(home, day, day)
    silver = query(home, "SELECT event_id FROM silver.events WHERE ds = $d", {"d": day})["event_id"].to_pylist()
    originals = {e["event_id"] for e in events if e["ds"] == day}
    assert set(silver) == originals and len(silver) == len(originals)
    assert copies[1]["event_id"] not in originals  # the copy's event really sits elsewhere


# -- gold.active_users -----------------------------------------------------------------------
def test_active_users_equal_pandas_on_every_day(built):
    home, written = built
    got = gold_frame(home)
    start, end = got["ds"].min(), got["ds"].max()
    assert (start, end) == (dt.date(2024, 1, 4), dt.date(2024, 7, 1))  # bronze min..max ds
    assert written["gold.active_users"] == len(got) == (end - start).days + 1
    expected = pandas_active_users(start, end)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert (got["dau"] <= got["wau"]).all() and (got["wau"] <= got["mau"]).all()


def test_active_users_schema(built):
    home, _ = built
    assert delta_schema(home, "gold", "active_users") == ACTIVE_USERS_SCHEMA


def test_one_day_on_a_fresh_home_looks_back_28_days(home):
    """Building one day first builds the silver days gold looks back to."""
    day = dt.date(2024, 3, 15)
    lines: list[str] = []
    written = build(home, day, day, progress=lines.append)
    assert written["gold.active_users"] == 1
    assert lines[0].startswith("silver.events 2024-02-17..2024-03-15:")
    assert lines[1].startswith("gold.active_users 2024-03-15..2024-03-15:")
    pd.testing.assert_frame_equal(gold_frame(home), pandas_active_users(day, day), check_dtype=False)


# -- idempotence -----------------------------------------------------------------------------
def test_rebuilds_are_idempotent(home):
    build(home)
    silver_path, gold_path = home.table_path("silver", "events"), home.table_path("gold", "active_users")
    want = checksums(home)
    counts = (tables.row_count(silver_path), tables.row_count(gold_path))
    assert counts == (DISTINCT_EVENTS, 180)

    ranges = [
        (None, None),  # the whole range again
        (dt.date(2024, 4, 10), dt.date(2024, 4, 20)),  # sub-ranges, out of order
        (dt.date(2024, 2, 1), dt.date(2024, 2, 5)),
        (dt.date(2024, 6, 30), dt.date(2024, 6, 30)),
        (dt.date(2024, 1, 4), dt.date(2024, 1, 4)),
    ]
    for start, end in ranges:
        build(home, start, end)
        assert checksums(home) == want, (start, end)
        assert (tables.row_count(silver_path), tables.row_count(gold_path)) == counts

    for path in (silver_path, gold_path):
        history = DeltaTable(str(path)).history()
        assert len(history) == 1 + len(ranges)
        for commit in history:
            assert commit["operation"] == "WRITE"
            assert commit["operationParameters"]["mode"] == "Overwrite"
            assert "predicate" in commit["operationParameters"]
