"""The models' rules on small hand-made bronze tables (real Delta tables in tmp dirs)."""

from __future__ import annotations

import datetime as dt
import re

import duckdb
import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.tables import append_once
from headwater.models.run import ACTIVE_USERS_SCHEMA, MODELS, Model, build, plan, run_model, source_range
from headwater.serve.catalog import query

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 5, 1, 12, tzinfo=UTC)


def event(eid: str, ts: dt.datetime, *, user: str | None = "u1", anon: str | None = "a1",
          received: dt.datetime | None = None, **extra) -> dict:
    return {
        "event_id": eid, "event_type": "track", "event_name": "Viewed", "anonymous_id": anon,
        "user_id": user, "event_ts": ts, "received_at": received or ts, "source": "test",
        "surface": "web", "platform": "web", "properties": "{}", "context": "{}",
        "schema_version": "1", "ds": ts.date(), **extra,
    }


def write(home: Home, rows: list[dict], batch_id: int = 0) -> None:
    append_once(home.table_path("bronze", "events"), pa.Table.from_pylist(rows, schema=EVENT_SCHEMA),
                app_id="unit", batch_id=batch_id)


def gold(home: Home) -> list[tuple]:
    return [tuple(r.values()) for r in query(home, "SELECT * FROM gold.active_users ORDER BY ds").to_pylist()]


def test_every_model_states_its_grain():
    for model in MODELS:
        sql = model.sql()
        assert sql.startswith(f"-- {model.table}\n-- Grain: one row per ")
        assert set(re.findall(r"\$(\w+)", sql)) == {"start", "end"}  # prepared parameters only


def test_earliest_delivery_wins_with_deterministic_ties(tmp_path):
    home = Home(tmp_path)
    day = T0.date()
    write(home, [
        # e1: the re-send was received later, and its corrected event time sits a day earlier
        event("e1", T0, received=T0 + dt.timedelta(seconds=5), context='{"n": 2}'),
        event("e1", T0 - dt.timedelta(days=1), received=T0 + dt.timedelta(seconds=9), context='{"n": 3}'),
        # e2: same received_at: the tie is broken on the remaining columns (NULLs first)
        event("e2", T0, received=T0, platform="web"),
        event("e2", T0, received=T0, platform=None),
    ])
    write(home, [event("e1", T0, received=T0 + dt.timedelta(seconds=1), context='{"n": 1}')], batch_id=1)
    build(home, day - dt.timedelta(days=1), day)
    rows = query(home, "SELECT event_id, ds, context, platform FROM silver.events ORDER BY event_id").to_pylist()
    assert rows == [
        {"event_id": "e1", "ds": day, "context": '{"n": 1}', "platform": "web"},
        {"event_id": "e2", "ds": day, "context": "{}", "platform": None},
    ]


def test_users_are_user_id_else_anonymous_id_and_empty_days_count_zero(tmp_path):
    home = Home(tmp_path)
    d = [T0 + dt.timedelta(days=k) for k in range(40)]
    write(home, [
        event("a", d[0], user="u1", anon="x1"),
        event("b", d[0], user=None, anon="x1"),  # another user: keyed by anonymous_id
        event("c", d[0], user=None, anon=None),  # no identity: not counted
        event("d", d[3], user="u1", anon="x9"),
        event("e", d[10], user="u2", anon=None),
        event("f", d[30], user="u3", anon=None),
    ])
    build(home)
    rows = {r[0]: r[1:] for r in gold(home)}
    assert len(rows) == 31  # d0 .. d30, every calendar day
    day = [x.date() for x in d]
    assert rows[day[0]] == (2, 2, 2)
    assert rows[day[1]] == (0, 2, 2)  # no events: still a row
    assert rows[day[3]] == (1, 2, 2)
    assert rows[day[6]] == (0, 2, 2)  # d0 is the first day of the 7-day window ending at d6
    assert rows[day[7]] == (0, 1, 2)
    assert rows[day[10]] == (1, 1, 3)  # u1 last seen d3: outside [d4, d10]
    assert rows[day[27]] == (0, 0, 3)  # d0 is still inside the 28-day window ending at d27
    assert rows[day[28]] == (0, 0, 2)
    assert rows[day[30]] == (1, 1, 3)  # u1 (d3), u2, u3


def test_a_range_without_any_event_is_written_as_zeros(tmp_path):
    home = Home(tmp_path)
    write(home, [event("a", T0)])
    start = T0.date() + dt.timedelta(days=50)
    counts = build(home, start, start + dt.timedelta(days=1))
    assert counts["silver.events"] == 0
    assert gold(home) == [(start, 0, 0, 0), (start + dt.timedelta(days=1), 0, 0, 0)]


def test_plan_widens_inputs_by_the_lookback():
    d = dt.date(2024, 3, 1)
    runs = [(m.table, s, e) for m, s, e in plan(d, d + dt.timedelta(days=2))]
    assert runs == [
        ("silver.events", d - dt.timedelta(days=27), d + dt.timedelta(days=2)),
        ("gold.active_users", d, d + dt.timedelta(days=2)),
    ]
    floor = d - dt.timedelta(days=5)
    assert plan(d, d, floor=floor)[0][1:] == (floor, d)
    assert plan(d, d, floor=d + dt.timedelta(days=9))[0][1:] == (d, d)  # never narrower than asked
    with pytest.raises(ValueError, match="after end"):
        plan(d, d - dt.timedelta(days=1))


def test_errors(tmp_path):
    home = Home(tmp_path)
    with pytest.raises(FileNotFoundError, match="bronze.events"):
        build(home)
    write(home, [event("a", T0)])
    assert source_range(home) == (T0.date(), T0.date())
    with pytest.raises(ValueError, match="after end"):
        build(home, T0.date(), T0.date() - dt.timedelta(days=1))
    gold_model = MODELS[1]
    with pytest.raises(duckdb.CatalogException, match="events"):  # silver not built yet
        run_model(home, gold_model, T0.date(), T0.date())
    assert not home.table_path("gold", "active_users").exists()


class InlineModel(Model):
    """A model whose ``sql_file`` field holds the SQL text itself (for error cases)."""

    def sql(self) -> str:
        return self.sql_file


def test_a_result_that_does_not_fit_writes_nothing(tmp_path):
    home = Home(tmp_path)
    day = dt.date(2024, 1, 1)
    good = "SELECT DATE '2024-01-01' AS ds, 1::BIGINT AS dau, 2::BIGINT AS wau, 3::BIGINT AS mau WHERE $start <= $end"
    assert run_model(home, InlineModel("gold.t", good, ACTIVE_USERS_SCHEMA, ()), day, day) == 1
    bad = {
        good.replace("1::BIGINT", "NULL::BIGINT"): (DeltaError, "non-nullable"),
        good.replace("DATE '2024-01-01'", "DATE '2024-01-02'"): (DeltaError, "Invalid data"),  # outside range
        good.replace(", 3::BIGINT AS mau", ""): (ValueError, "mau"),
    }
    for sql, (error, message) in bad.items():
        with pytest.raises(error, match=message):
            run_model(home, InlineModel("gold.t", sql, ACTIVE_USERS_SCHEMA, ()), day, day)
    path = home.table_path("gold", "t")
    assert len(DeltaTable(str(path)).history()) == 1
    assert query(home, "SELECT * FROM gold.t").to_pylist() == [{"ds": day, "dau": 1, "wau": 2, "mau": 3}]
