"""The synthetic event generator (bench/batch.py and the engine-parity test build on it)."""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.demo import generate
from headwater.events import EVENT_SCHEMA
from headwater.lake import tables
from headwater.models.config import load

DAY = dt.date(2024, 3, 1)


@pytest.fixture(scope="module")
def events() -> pa.Table:
    return pa.concat_tables(generate.chunks(20_000, DAY, seed=3, chunk_rows=7_000))


def test_schema_day_and_determinism(events):
    assert events.schema.equals(EVENT_SCHEMA)
    again = pa.concat_tables(generate.chunks(20_000, DAY, seed=3, chunk_rows=7_000))
    assert again.equals(events)
    lo, hi, days = duckdb.sql("SELECT min(event_ts), max(event_ts), count(DISTINCT ds) FROM events").fetchone()
    assert lo.date() == hi.date() == DAY and days == 1


def test_resends_share_event_id_and_arrive_later(events):
    ids, resent, later = duckdb.sql("""
        SELECT count(DISTINCT event_id), count(*) - count(DISTINCT event_id),
               bool_and(last_received > first_received)
        FROM (SELECT event_id, min(received_at) AS first_received, max(received_at) AS last_received
              FROM events GROUP BY event_id HAVING count(*) > 1)
        RIGHT JOIN (SELECT 1) ON true
    """).fetchone()
    assert duckdb.sql("SELECT count(DISTINCT event_id) FROM events").fetchone()[0] == 20_000
    assert 40 <= resent <= 200 and later  # 0.5 % of 20,000


def test_event_mix(events):
    counts = dict(duckdb.sql("SELECT event_type, count(*) FROM events GROUP BY ALL").fetchall())
    assert set(counts) == {"track", "page", "screen", "identify", "alias"}
    names = {r[0] for r in duckdb.sql("SELECT DISTINCT event_name FROM events WHERE event_type = 'track'").fetchall()}
    assert {"product_view", "add_to_cart", "purchase", "Experiment Viewed"} <= names
    identify_without_user, shared = duckdb.sql("""
        SELECT count(*) FILTER (WHERE user_id IS NULL),
               count(*) FILTER (WHERE replace(anonymous_id, 'anon-', '') <> replace(user_id, 'user-', ''))
        FROM events WHERE event_type = 'identify'
    """).fetchone()
    assert identify_without_user == 0 and shared > 0  # shared devices: merges to refuse
    variants = duckdb.sql("""
        SELECT count(DISTINCT json_extract_string(properties, '$.variation_id'))
        FROM events WHERE event_name = 'Experiment Viewed' GROUP BY anonymous_id
    """).fetchall()
    assert {v for (v,) in variants} == {1}  # one variant per user


def test_write_day_is_idempotent_and_config_loads(tmp_path):
    home = Home(tmp_path)
    rows = generate.write_day(home, 3_000, DAY, chunk_rows=1_000)
    assert generate.write_day(home, 3_000, DAY, chunk_rows=1_000) == rows  # re-run: nothing appended
    assert tables.row_count(home.table_path("bronze", "events")) == rows
    (tmp_path / "models.toml").write_text(generate.MODELS_TOML)
    assert [e.id for e in load(home).experiments] == [generate.EXPERIMENT]


def test_refuses_no_events():
    with pytest.raises(ValueError, match="n: expected at least 1 event, got 0"):
        next(generate.chunks(0, DAY))
