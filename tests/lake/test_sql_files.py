"""DuckDB's own Parquet scan of a snapshot's files (``sql.connect(files=True)``, the batch build)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pytest

from headwater.events import EVENT_SCHEMA
from headwater.lake import catalog, sql
from headwater.lake.store import Lake

UTC = dt.timezone.utc
DAYS = [dt.date(2024, 3, 1), dt.date(2024, 3, 2)]
SILVER = catalog.spec("silver.events").schema


def events(day: dt.date, n: int, schema: pa.Schema = EVENT_SCHEMA) -> pa.Table:
    ts = dt.datetime.combine(day, dt.time(12), tzinfo=UTC)
    rows = [{"event_id": f"{day}-{i}", "event_type": "track", "event_name": "Viewed", "anonymous_id": None,
             "user_id": f"u{i}", "event_ts": ts, "received_at": ts, "source": "test", "surface": "web",
             "platform": "web", "properties": "{}", "context": "{}", "schema_version": "1", "person_id": f"p{i}", "ds": day}
            for i in range(n)]
    return pa.Table.from_pylist([{k: v for k, v in r.items() if k in schema.names} for r in rows], schema=schema)


def view_sql(con: duckdb.DuckDBPyConnection, table: str) -> str:
    layer, name = table.split(".")
    return con.execute("SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = ?", [layer, name]).fetchall()[0][0]


def read(lake: Lake, files: bool, text: str, params: dict | None = None) -> pa.Table:
    con = sql.connect(lake, files=files)
    try:
        sql.register_referenced(con, lake, text)
        return con.sql(text, params=params).to_arrow_table()
    finally:
        con.close()


@pytest.fixture
def lake(tmp_path) -> Lake:
    lake = Lake(tmp_path / "lake")
    lake.append_once("bronze.events", pa.concat_tables([events(d, 5) for d in DAYS]), app_id="t", batch_id=0)
    lake.append_once("bronze.events", events(DAYS[1], 3).set_column(0, "event_id", pa.array([f"b{i}" for i in range(3)])),
                     app_id="t", batch_id=1)
    return lake


def test_a_local_table_is_read_by_duckdbs_parquet_scan_with_the_arrow_scans_rows_and_types(lake):
    con = sql.connect(lake, files=True)
    try:
        assert sql.register(con, lake, "bronze.events")
        assert "read_parquet" in view_sql(con, "bronze.events")
    finally:
        con.close()
    text = "SELECT * FROM bronze.events WHERE ds = $day ORDER BY event_id"
    native, arrow = read(lake, True, text, {"day": DAYS[1]}), read(lake, False, text, {"day": DAYS[1]})
    assert native.schema == arrow.schema  # names, order and types (ds a DATE from the Hive path, UTC timestamps)
    assert native.num_rows == 8 and native.equals(arrow)


def test_without_files_and_for_a_side_output_not_written_yet_the_arrow_scan_is_kept(lake):
    con = sql.connect(lake)
    try:
        sql.register(con, lake, "bronze.events")
        assert "read_parquet" not in view_sql(con, "bronze.events")
    finally:
        con.close()
    con = sql.connect(lake, files=True)
    try:
        assert sql.register(con, lake, "bronze.late_events")  # empty until written: an Arrow table
        assert "read_parquet" not in view_sql(con, "bronze.late_events")
        assert con.sql("SELECT count(*) FROM bronze.late_events").fetchall() == [(0,)]
    finally:
        con.close()


def test_files_lacking_a_column_added_later_read_it_as_null(lake):
    # day 1 written without person_id, day 2 with it (a schema merge): files of two schemas
    lake.overwrite_partitions("silver.events", events(DAYS[0], 2, SILVER.remove(SILVER.get_field_index("person_id"))), DAYS[0], DAYS[0])
    lake.overwrite_partitions("silver.events", events(DAYS[1], 2, SILVER), DAYS[1], DAYS[1])
    found = lake.parquet_files("silver.events")
    assert found is not None and found[1] is False  # not uniform: columns matched by name
    text = "SELECT ds, event_id, person_id FROM silver.events ORDER BY event_id"
    native = read(lake, True, text)
    assert native.equals(read(lake, False, text))
    assert native.column("person_id").to_pylist() == [None, None, "p0", "p1"]


def test_a_view_condition_applies_to_the_parquet_scan(lake):
    con = sql.connect(lake, files=True)
    try:
        sql.register(con, lake, "bronze.events", where="event_id LIKE 'b%'")
        assert con.sql("SELECT count(*) FROM bronze.events").fetchall() == [(3,)]
    finally:
        con.close()


def test_parquet_files_lists_the_snapshot_files(lake, tmp_path):
    # an object store gets None (the Arrow scan): tests/models/test_models_s3.py builds there
    paths, uniform = lake.parquet_files("bronze.events")
    assert uniform and len(paths) == 3 and all(p.startswith(str((tmp_path / "lake").resolve())) for p in paths)
    assert sum("/ds=2024-03-02/" in p for p in paths) == 2
