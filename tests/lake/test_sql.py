"""The SQL catalog (headwater.lake.sql) over real Delta tables in tmp dirs."""

from __future__ import annotations

import datetime as dt
import json

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.errors import InvalidInputError, NotFoundError
from headwater.events import BAD_ROW_SCHEMA, EVENT_SCHEMA, TS
from headwater.lake import catalog, sql
from headwater.lake.schemas import LATE_SCHEMA
from headwater.lake.store import Lake

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
def lake(tmp_path) -> Lake:
    """bronze.events (10 rows on each of 5 days, two commits), bronze.bad_rows, silver.events."""
    lake = Lake(tmp_path / "lake")
    lake.append_once("bronze.events", pa.concat_tables([events(d, 6, f"a{d}") for d in DAYS]), app_id="t", batch_id=0)
    lake.append_once("bronze.events", pa.concat_tables([events(d, 4, f"b{d}") for d in DAYS]), app_id="t", batch_id=1)
    bad = pa.Table.from_pylist([{"received_at": dt.datetime(2024, 3, 1, tzinfo=UTC), "source": None,
                                 "error_type": "envelope_violation", "reason": "type: missing",
                                 "payload": json.dumps({}), "ds": DAYS[0]}], schema=BAD_ROW_SCHEMA)
    lake.append_once("bronze.bad_rows", bad, app_id="t", batch_id=0)
    lake.overwrite_partitions("silver.events", events(DAYS[0], 3, "s"), DAYS[0], DAYS[-1])
    (tmp_path / "lake" / "gold" / "not_a_table").mkdir(parents=True)  # no _delta_log: ignored
    return lake


def views(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    return con.sql("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary ORDER BY ALL").fetchall()


def test_a_query_registers_only_the_tables_it_names(lake, monkeypatch):
    opened = []
    monkeypatch.setattr(Lake, "dataset", lambda self, table, _orig=Lake.dataset: opened.append(table) or _orig(self, table))
    assert sql.query(lake, "SELECT 1 AS one").to_pylist() == [{"one": 1}]
    assert opened == []  # no Delta log read at all
    got = sql.query(lake, "WITH s AS (SELECT event_id FROM silver.events) SELECT count(*) AS n FROM bronze.events JOIN s USING (event_id)")
    assert got.to_pylist() == [{"n": 0}]
    assert sorted(opened) == ["bronze.events", "silver.events"]


def test_connect_is_lazy_and_register_referenced_adds_what_a_statement_names(lake):
    con = sql.connect(lake)
    try:
        assert views(con) == []
        assert {r[0] for r in con.sql("SELECT schema_name FROM duckdb_schemas()").fetchall()} >= {"bronze", "silver", "gold", "realtime"}
        assert sql.register_referenced(con, lake, "SELECT * FROM bronze.events e, bronze.late_events l, gold.sessions") == {
            "bronze.events", "bronze.late_events"}  # a side output reads as empty; gold.sessions does not exist
        assert views(con) == [("bronze", "events"), ("bronze", "late_events")]
        assert con.sql("SELECT count(*) FROM bronze.events").fetchall()[0] == (50,)
        assert sql.register_referenced(con, lake, "SELECT * FROM bronze.events") == set()  # kept: its snapshot stays
    finally:
        con.close()


def test_referenced_tables():
    assert sql.referenced_tables("SELECT 1") == set()
    assert sql.referenced_tables("FROM bronze.events SELECT count(*)") == {"bronze.events"}
    assert sql.referenced_tables('DESCRIBE "silver"."events"') == {"silver.events"}
    assert sql.referenced_tables("SELECT * FROM BRONZE.Events; SELECT * FROM realtime.users_per_minute") == {
        "bronze.events", "realtime.users_per_minute"}
    assert sql.referenced_tables("SELECT * FROM gold.not_a_table, nowhere.events, read_parquet('x')") == set()
    assert sql.referenced_tables("SELEC count(*) FROM silver.evt_order_completed") == {"silver.evt_order_completed"}  # unparsable: token scan
    assert sql.referenced_tables("SHOW ALL TABLES") is None
    assert sql.referenced_tables("SELECT * FROM information_schema.tables") is None


def test_introspection_sees_every_existing_table(lake):
    got = sql.query(lake, "SELECT schema_name || '.' || view_name AS t FROM duckdb_views() WHERE NOT internal AND NOT temporary ORDER BY 1")
    # the stream's side outputs and the batch's cumulative states are views even before their
    # first row (empty, with their schema): catalog entries marked empty_until_written
    empty = {t.name for t in catalog.TABLES if t.empty_until_written}
    assert {"bronze.bad_rows", "bronze.dead_letter", "bronze.late_events", "silver.person_state"} <= empty
    assert got["t"].to_pylist() == sorted(empty | {"bronze.events", "silver.events"})


def test_views_carry_the_catalog_description(lake):
    got = sql.query(lake, "SELECT comment FROM duckdb_views() WHERE schema_name = 'bronze' AND view_name = 'events'")
    assert got["comment"].to_pylist() == [
        "Every accepted event, exactly once, in canonical form. Grain: one row per accepted event "
        "(duplicates within the dedup TTL removed)."
    ]


def test_query_returns_arrow_with_utc_timestamps_and_binds_parameters(lake):
    result = sql.query(lake, "SELECT event_id, event_ts, ds FROM bronze.events WHERE ds = $d ORDER BY event_id", {"d": DAYS[2]})
    assert result.num_rows == 10
    assert result.schema.field("event_ts").type == TS
    assert result.schema.field("ds").type == pa.date32()
    assert sql.query(lake, "SET threads = 1").num_rows == 0  # no result set: empty table
    assert sql.query(lake, "SELECT hour(TIMESTAMPTZ '2024-03-01 12:00:00+00') AS h").to_pylist() == [{"h": 12}]


def test_missing_table_is_a_clear_error(lake):
    with pytest.raises(NotFoundError, match="active_users does not exist"):
        sql.query(lake, "SELECT * FROM gold.active_users")
    with pytest.raises(NotFoundError, match="not_a_table"):
        sql.query(lake, "SELECT * FROM gold.not_a_table")
    with pytest.raises(NotFoundError, match="nowhere"):
        sql.query(lake, "SELECT * FROM nowhere.events")
    with pytest.raises(InvalidInputError):
        sql.query(lake, "SELEC * FROM bronze.events")


def test_empty_lake(tmp_path):
    lake = Lake(tmp_path / "lake")
    assert lake.tables() == []
    assert sql.query(lake, "SELECT 1 AS one").to_pylist() == [{"one": 1}]


def test_ds_filters_prune_partitions(lake):
    """A file of a partition outside the filter is never opened: corrupt it and filter around it."""
    victim = DAYS[4]
    files = [f for f in DeltaTable(lake.uri("bronze.events")).file_uris() if f"ds={victim}" in f]
    assert len(files) == 2  # one per commit
    for f in files:
        with open(f.removeprefix("file://"), "wb") as fh:
            fh.write(b"not parquet" * 100)
    con = sql.connect(lake)
    try:
        sql.register(con, lake, "bronze.events")
        assert con.sql("SELECT count(*) FROM bronze.events WHERE ds = DATE '2024-03-01'").fetchall()[0] == (10,)
        assert con.sql("SELECT count(*) FROM bronze.events WHERE ds BETWEEN $s AND $e",
                       params={"s": DAYS[0], "e": DAYS[3]}).fetchall()[0] == (40,)
        plan = con.sql("EXPLAIN SELECT count(*) FROM bronze.events WHERE ds >= $s", params={"s": DAYS[3]}).fetchall()[0][1]
        assert "ARROW_SCAN" in plan and "Filters:" in plan and '"ds"' in plan
        with pytest.raises(duckdb.Error):  # the unfiltered scan does open the corrupt files
            con.sql("SELECT count(*) FROM bronze.events").fetchall()
    finally:
        con.close()


def test_snapshot_until_registered_again(lake):
    con = sql.connect(lake)
    try:
        assert sql.register(con, lake, "bronze.events")
        lake.append_once("bronze.events", events(DAYS[0], 5, "late"), app_id="t", batch_id=2)
        lake.overwrite_partitions("gold.active_users", pa.table({"ds": [DAYS[0]], "dau": [1]}), DAYS[0], DAYS[0])
        assert con.sql("SELECT count(*) FROM bronze.events").fetchall()[0] == (50,)  # the snapshot as registered
        assert sql.register(con, lake, "bronze.events")
        assert sql.register(con, lake, "gold.active_users")
        assert not sql.register(con, lake, "gold.sessions")  # declared, not written yet
        assert con.sql("SELECT count(*) FROM bronze.events").fetchall()[0] == (55,)
        assert con.sql("SELECT dau FROM gold.active_users").fetchall()[0] == (1,)
        with pytest.raises(InvalidInputError, match="layer"):
            sql.register(con, lake, "events")
        with pytest.raises(NotFoundError, match="not declared"):
            sql.register(con, lake, "gold.missing")
    finally:
        con.close()


def test_side_outputs_read_as_empty_tables_before_their_first_row(tmp_path):
    lake = Lake(tmp_path / "lake")
    got = sql.query(lake, "SELECT * FROM bronze.late_events")
    assert got.num_rows == 0 and got.schema.names == LATE_SCHEMA.names
    for table in ("bronze.dead_letter", "bronze.bad_rows"):
        assert sql.query(lake, f"SELECT count(*) AS n FROM {table}").to_pylist() == [{"n": 0}]


@pytest.fixture(scope="module")
def many_files(tmp_path_factory) -> Lake:
    """bronze.events and bronze.late_events with 2,000 data files each (one write of 2,000
    ``ds`` partitions apiece): the shape of a home fed by many small stream batches."""
    lake = Lake(tmp_path_factory.mktemp("many") / "lake")
    days = [dt.date(2020, 1, 1) + dt.timedelta(days=k) for k in range(2000)]
    data = pa.concat_tables([events(d, 1, f"m{d}") for d in days])
    lake.append("bronze.events", data)
    late = data.append_column("watermark", data.column("event_ts")).append_column("reason", pa.array(["x"] * len(days)))
    lake.append("bronze.late_events", late.select(LATE_SCHEMA.names).cast(LATE_SCHEMA))
    return lake


def test_select_1_opens_no_table_and_imports_no_reader(many_files):
    """`headwater query "SELECT 1"` costs nothing per table: no Delta log is read, and neither
    sqlglot nor pyarrow.dataset (which imports pandas) is imported."""
    import subprocess
    import sys

    code = (
        "import sys; from headwater.lake import sql; from headwater.lake.store import Lake\n"
        f"assert sql.query(Lake({many_files.root!r}), 'SELECT 1 AS one').to_pylist() == [{{'one': 1}}]\n"
        "print(sorted(m for m in ('sqlglot', 'pyarrow.dataset', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_only_the_named_table_is_registered_however_many_files_the_lake_holds(many_files, monkeypatch):
    opened = []
    monkeypatch.setattr(Lake, "dataset", lambda self, table, _orig=Lake.dataset: opened.append(table) or _orig(self, table))
    got = sql.query(many_files, "SELECT count(*) AS n FROM bronze.late_events WHERE ds = DATE '2020-01-02'")
    assert got.to_pylist() == [{"n": 1}] and opened == ["bronze.late_events"]


def test_a_child_forked_after_reads_starts_clean_and_does_not_crash(lake):
    """The at-fork hook runs in a child forked with ``preexec_fn`` (pyspark starts its gateway
    so): it must not tear down the parent's DuckDB connections there (that segfaulted)."""
    import subprocess

    before = sql.read(lake, "SELECT count(*) AS n FROM bronze.events").to_pylist()
    for _ in range(5):
        assert subprocess.run(["true"], preexec_fn=lambda: None).returncode == 0
    assert sql.read(lake, "SELECT count(*) AS n FROM bronze.events").to_pylist() == before == [{"n": 50}]
