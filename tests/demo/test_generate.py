"""The synthetic event generator (bench/batch.py and the engine-parity test build on it)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.demo import generate
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.models.config import load

DAY = dt.date(2024, 3, 1)


def one(con: duckdb.DuckDBPyConnection, sql: str) -> tuple:
    return con.sql(sql).fetchall()[0]


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return pa.concat_tables(generate.chunks(20_000, DAY, seed=3, chunk_rows=7_000))


@pytest.fixture(scope="module")
def con(events) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.register("events", events)
    return c


def test_schema_day_and_determinism(events, con):
    assert events.schema.equals(EVENT_SCHEMA)
    again = pa.concat_tables(generate.chunks(20_000, DAY, seed=3, chunk_rows=7_000))
    assert again.equals(events)
    lo, hi, days = one(con, "SELECT min(event_ts), max(event_ts), count(DISTINCT ds) FROM events")
    assert lo.date() == hi.date() == DAY and days == 1


def test_resends_share_event_id_and_arrive_later(con):
    ids, rows = one(con, "SELECT count(DISTINCT event_id), count(*) FROM events")
    assert ids == 20_000 and 40 <= rows - ids <= 200  # 0.5 % of 20,000 sent twice
    copies, later, same_time = one(con, """
        SELECT count(*), bool_and(max_received - min_received = INTERVAL 60 SECOND), bool_and(event_times = 1)
        FROM (SELECT event_id, min(received_at) AS min_received, max(received_at) AS max_received,
                     count(DISTINCT event_ts) AS event_times
              FROM events GROUP BY event_id HAVING count(*) = 2)
    """)
    assert copies == rows - ids and later and same_time


def test_event_mix(con):
    counts = dict(con.sql("SELECT event_type, count(*) FROM events GROUP BY ALL").fetchall())
    assert set(counts) == {"track", "page", "screen", "identify", "alias"}
    names = {r[0] for r in con.sql("SELECT DISTINCT event_name FROM events WHERE event_type = 'track'").fetchall()}
    assert {"product_view", "add_to_cart", "purchase", "Experiment Viewed"} <= names
    identify_without_user, shared = one(con, """
        SELECT count(*) FILTER (WHERE user_id IS NULL),
               count(*) FILTER (WHERE replace(anonymous_id, 'anon-', '') <> replace(user_id, 'user-', ''))
        FROM events WHERE event_type = 'identify'
    """)
    assert identify_without_user == 0 and shared > 0  # shared devices: merges to refuse
    variants = con.sql("""
        SELECT count(DISTINCT json_extract_string(properties, '$.variation_id'))
        FROM events WHERE event_name = 'Experiment Viewed' GROUP BY anonymous_id
    """).fetchall()
    assert {v for (v,) in variants} == {1}  # one variant per user


def test_write_day_is_idempotent_and_config_loads(tmp_path):
    home = Home(tmp_path)
    rows = generate.write_day(home, 3_000, DAY, chunk_rows=1_000)
    assert generate.write_day(home, 3_000, DAY, chunk_rows=1_000) == rows  # re-run: nothing appended
    assert Lake.of(home).row_count("bronze.events") == rows
    (tmp_path / "models.toml").write_text(generate.MODELS_TOML)
    assert [e.id for e in load(home).experiments] == [generate.EXPERIMENT]


def test_refuses_no_events():
    with pytest.raises(ValueError, match="n: expected at least 1 event, got 0"):
        next(generate.chunks(0, DAY))
