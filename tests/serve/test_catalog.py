"""The SQL catalog over real Delta tables in tmp dirs."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.events import BAD_ROW_SCHEMA, EVENT_SCHEMA, TS
from headwater.lake.tables import append_once, overwrite_partitions
from headwater.serve import catalog

UTC = dt.timezone.utc
DAYS = [dt.date(2024, 3, 1) + dt.timedelta(days=k) for k in range(5)]


def events(day: dt.date, n: int, prefix: str) -> pa.Table:
    ts = dt.datetime.combine(day, dt.time(12), tzinfo=UTC)
    return pa.Table.from_pylist([
        {"event_id": f"{prefix}-{i}", "event_type": "track", "event_name": "Viewed", "anonymous_id": None,
         "user_id": f"u{i % 3}", "event_ts": ts, "received_at": ts, "source": "test", "surface": "web",
         "platform": "web", "properties": "{}", "context": "{}", "schema_version": "1", "ds": day}
        for i in range(n)
    ], schema=EVENT_SCHEMA)


@pytest.fixture
def home(tmp_path) -> Home:
    """bronze.events (10 rows on each of 5 days, two commits), bronze.bad_rows, silver.events."""
    home = Home(tmp_path)
    bronze = home.table_path("bronze", "events")
    append_once(bronze, pa.concat_tables([events(d, 6, f"a{d}") for d in DAYS]), app_id="t", batch_id=0)
    append_once(bronze, pa.concat_tables([events(d, 4, f"b{d}") for d in DAYS]), app_id="t", batch_id=1)
    bad = pa.Table.from_pylist([{"received_at": dt.datetime(2024, 3, 1, tzinfo=UTC), "source": None,
                                 "error_type": "envelope_violation", "reason": "type: missing",
                                 "payload": json.dumps({}), "ds": DAYS[0]}], schema=BAD_ROW_SCHEMA)
    append_once(home.table_path("bronze", "bad_rows"), bad, app_id="t", batch_id=0)
    overwrite_partitions(home.table_path("silver", "events"), events(DAYS[0], 3, "s"), DAYS[0], DAYS[-1])
    (tmp_path / "lake" / "gold" / "not_a_table").mkdir(parents=True)  # no _delta_log: ignored
    return home


def test_tables_are_views_named_layer_dot_name(home):
    assert catalog.list_tables(home) == ["bronze.bad_rows", "bronze.events", "silver.events"]
    con = catalog.connect(home)
    try:
        views = con.sql("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary ORDER BY ALL").fetchall()
        # the side outputs are views even before their first row (empty, with their schema)
        assert views == [("bronze", "bad_rows"), ("bronze", "dead_letter"), ("bronze", "events"), ("bronze", "late_events"), ("silver", "events")]
        schemas = {r[0] for r in con.sql("SELECT schema_name FROM duckdb_schemas()").fetchall()}
        assert {"bronze", "silver", "gold"} <= schemas  # gold exists, empty
        assert con.sql("SELECT count(*) FROM bronze.events").fetchall()[0] == (50,)
        assert con.sql("SELECT count(*) FROM bronze.bad_rows").fetchall()[0] == (1,)
        assert con.sql("SELECT count(*) FROM silver.events").fetchall()[0] == (3,)
    finally:
        con.close()


def test_query_returns_arrow_with_utc_timestamps_and_binds_parameters(home):
    result = catalog.query(home, "SELECT event_id, event_ts, ds FROM bronze.events WHERE ds = $d ORDER BY event_id",
                           {"d": DAYS[2]})
    assert result.num_rows == 10
    assert result.schema.field("event_ts").type == TS
    assert result.schema.field("ds").type == pa.date32()
    assert catalog.query(home, "SET threads = 1").num_rows == 0  # no result set: empty table


def test_missing_table_is_a_clear_error(home):
    with pytest.raises(duckdb.CatalogException, match="active_users does not exist"):
        catalog.query(home, "SELECT * FROM gold.active_users")
    with pytest.raises(duckdb.CatalogException, match="not_a_table"):
        catalog.query(home, "SELECT * FROM gold.not_a_table")
    with pytest.raises(duckdb.CatalogException, match="nowhere"):
        catalog.query(home, "SELECT * FROM nowhere.events")


def test_empty_home(tmp_path):
    home = Home(tmp_path)
    assert catalog.list_tables(home) == []
    assert catalog.query(home, "SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_ds_filters_prune_partitions(home):
    """A file of a partition outside the filter is never opened: corrupt it and filter around it."""
    victim = DAYS[4]
    files = [f for f in DeltaTable(str(home.table_path("bronze", "events"))).file_uris() if f"ds={victim}" in f]
    assert len(files) == 2  # one per commit
    for f in files:
        with open(f.removeprefix("file://"), "wb") as fh:
            fh.write(b"not parquet" * 100)
    con = catalog.connect(home)
    try:
        assert con.sql("SELECT count(*) FROM bronze.events WHERE ds = DATE '2024-03-01'").fetchall()[0] == (10,)
        assert con.sql("SELECT count(*) FROM bronze.events WHERE ds BETWEEN $s AND $e",
                       params={"s": DAYS[0], "e": DAYS[3]}).fetchall()[0] == (40,)
        plan = con.sql("EXPLAIN SELECT count(*) FROM bronze.events WHERE ds >= $s",
                       params={"s": DAYS[3]}).fetchall()[0][1]
        assert "ARROW_SCAN" in plan and "Filters:" in plan and '"ds"' in plan
        with pytest.raises(duckdb.Error):  # the unfiltered scan does open the corrupt files
            con.sql("SELECT count(*) FROM bronze.events").fetchall()
    finally:
        con.close()


def test_snapshot_until_registered_again(home):
    con = catalog.connect(home)
    try:
        append_once(home.table_path("bronze", "events"), events(DAYS[0], 5, "late"), app_id="t", batch_id=2)
        overwrite_partitions(home.table_path("gold", "active_users"),
                             pa.table({"ds": [DAYS[0]], "dau": [1]}), DAYS[0], DAYS[0])
        assert con.sql("SELECT count(*) FROM bronze.events").fetchall()[0] == (50,)  # the connect-time snapshot
        assert catalog.register(con, home, "bronze.events")
        assert catalog.register(con, home, "gold.active_users")
        assert not catalog.register(con, home, "gold.missing")
        assert con.sql("SELECT count(*) FROM bronze.events").fetchall()[0] == (55,)
        assert con.sql("SELECT dau FROM gold.active_users").fetchall()[0] == (1,)
    finally:
        con.close()
    with pytest.raises(ValueError, match="layer"):
        catalog.register(con, home, "events")


def test_side_outputs_read_as_empty_tables_before_their_first_row(tmp_path):
    from headwater.config import Home
    from headwater.serve import catalog
    from headwater.stream.late import LATE_SCHEMA

    home = Home(tmp_path / "home")
    got = catalog.query(home, "SELECT * FROM bronze.late_events")
    assert got.num_rows == 0 and got.schema.names == LATE_SCHEMA.names
    for table in ("bronze.dead_letter", "bronze.bad_rows"):
        assert catalog.query(home, f"SELECT count(*) AS n FROM {table}").to_pylist() == [{"n": 0}]
