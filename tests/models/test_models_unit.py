"""The models' rules on small hand-made bronze tables (real Delta tables in tmp dirs)."""

from __future__ import annotations

import datetime as dt

import dataclasses

import pytest
import sqlglot

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.lake import catalog, sql
from headwater.lake.store import Lake
from headwater.models.dag import MODELS, Model, plan
from headwater.models.run import build, run_model
from tests.helpers import query
from tests.models.bronze import MODEL, T0, event, history, write

def gold(home: Home) -> list[tuple]:
    return [tuple(r.values()) for r in query(home, "SELECT ds, dau, wau, mau FROM gold.active_users ORDER BY ds").to_pylist()]


def test_every_batch_table_is_a_model_declared_once():
    """The fixed models are exactly the tables the catalog says the batch layer writes; each
    model's grain, schema and partitioning are that declaration (not restated in the model)."""
    batch = {t.name for t in catalog.TABLES if t.writer == "batch" and not t.is_family}
    assert {m.table for m in MODELS} == batch
    for model in MODELS:
        spec = catalog.spec(model.table)
        assert model.spec is spec and model.schema is spec.schema and model.partitioned == bool(spec.partition_by)
        assert spec.grain.startswith(("one row per", "hour", "ds", "cohort"))


def test_sql_models_point_at_the_catalog_and_read_their_inputs():
    merged = {"silver.dim_user", "silver.dim_device"}  # Python models running their SQL file on the stored table
    for model in MODELS:
        if model.compute is not None and model.table not in merged:
            with pytest.raises(InvalidInputError, match="Python model"):
                model.sql()
            continue
        text = model.sql()
        assert text.startswith(f"-- {model.table}\n-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.")
        assert "Columns:" not in text and "_SCHEMA" not in text  # not restated in the header
        assert "{{" not in text and "{k" not in text and "-- repeat" not in text  # fully rendered
        # the tables it reads are its declared inputs (and a cumulative state its own table):
        # the DAG's edges are the SQL's
        own = {model.table} if model.cumulative or model.table in merged else set()
        assert sql.referenced_tables(text) == set(model.inputs) | own, model.table
        # prepared parameters only, and a partitioned model is bounded by its range (a '$' in a
        # string, e.g. the JSON path of PostHog's "$os" property, is not a parameter)
        placeholders = {p.name for p in sqlglot.parse_one(text, read="duckdb").find_all(sqlglot.exp.Placeholder)}
        want = {"start", "end", "merge"} if model.table in merged else {"start", "end"} if model.partitioned else set()
        # the day of a state read comes from the Delta log (dag.parameters), not from a scan of the state
        want |= {"prior"} if model.cumulative or model.state else set()
        want |= {"horizon"} if model.table in ("gold.retention", "silver.dim_experiment") else set()
        assert placeholders == want, model.table
        assert "max(ds)" not in text.lower(), model.table


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
        {"event_id": "e2", "ds": day, "context": "{}", "platform": "unknown"},  # conformed: never null
    ]


def test_dedup_is_keyed_on_source_and_event_id(tmp_path):
    """The same messageId from two sources is two events (event_id is unique per source only);
    re-sends within one source still collapse, in silver.events and in silver.dim_user."""
    home = Home(tmp_path)
    write(home, [
        event("m-1", T0, source="web", context='{"from": "web"}'),
        event("m-1", T0, source="ios", context='{"from": "ios"}'),
        event("m-1", T0, source="web", received=T0 + dt.timedelta(seconds=3), context='{"from": "web-resend"}'),
        event("id-1", T0, source="web", event_type="identify", event_name=None, properties='{"plan": "free"}'),
        event("id-1", T0 + dt.timedelta(hours=1), source="ios", event_type="identify", event_name=None, properties='{"plan": "pro"}'),
    ])
    build(home, T0.date(), T0.date())
    rows = query(home, "SELECT source, event_id, context FROM silver.events WHERE event_type = 'track' ORDER BY source").to_pylist()
    assert rows == [{"source": "ios", "event_id": "m-1", "context": '{"from": "ios"}'},
                    {"source": "web", "event_id": "m-1", "context": '{"from": "web"}'}]
    assert query(home, "SELECT count(*) AS n FROM silver.events WHERE event_type = 'identify'").to_pylist() == [{"n": 2}]
    versions = query(home, "SELECT version, traits FROM silver.dim_user ORDER BY version").to_pylist()
    assert [v["version"] for v in versions] == [1, 2] and '"pro"' in versions[1]["traits"]


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
    build(home, start, start + dt.timedelta(days=1))
    assert query(home, "SELECT count(*) AS n FROM silver.events WHERE ds >= $s", {"s": start})["n"][0].as_py() == 0
    assert gold(home) == [(start, 0, 0, 0), (start + dt.timedelta(days=1), 0, 0, 0)]


def test_plan_widens_inputs_to_what_readers_read():
    d = dt.date(2024, 3, 1)
    days = dt.timedelta
    runs = {m.table: (s, e) for m, s, e in plan(d, d + days(days=2))}
    assert list(runs) == [m.table for m in MODELS]  # dependency order kept
    # without bounds: lookahead 366 (retention month cells, read from the state of that day);
    # the trailing windows read the state of their own day only
    assert runs["silver.events"] == (d - days(days=2), d + days(days=2 + 366))  # the sessions of d-1 read d-2
    assert runs["silver.person_state"] == (d, d + days(days=2 + 366))
    read_the_day_before = ("gold.sessions", "silver.conversions")  # by gold.conversions
    assert all(runs[t] == (d - days(days=1), d + days(days=2)) for t in read_the_day_before)
    # the conversions of d-1 read the exposure state of the day before, d-2
    assert runs["silver.exposures"] == runs["silver.exposure_state"] == (d - days(days=2), d + days(days=2))
    widened = ("silver.events", "silver.person_state", "silver.exposures", "silver.exposure_state", *read_the_day_before)
    assert all(runs[t] == (d, d + days(days=2)) for t in runs if t not in widened)
    # history readers (the dimensions, conversions) take silver from the floor, and so does a
    # cumulative state (it starts there); the ceiling clips
    floor, ceiling = d - days(days=60), d + days(days=10)
    full = {m.table: (s, e) for m, s, e in plan(d, d, floor=floor, ceiling=ceiling)}
    assert full["silver.events"] == (floor, ceiling) and full["silver.person_platform_state"] == (floor, d)
    # never narrower than asked, even outside the source's days
    def silver(floor: dt.date) -> tuple[dt.date, dt.date]:
        return next((s, e) for m, s, e in plan(d, d, floor=floor, ceiling=floor) if m.table == "silver.events")

    assert silver(d + days(days=9)) == (d, d + days(days=9))
    assert silver(d - days(days=9)) == (d - days(days=9), d)
    with pytest.raises(InvalidInputError, match="after end"):
        plan(d, d - days(days=1))


def test_an_incremental_plan_reads_day_n_and_the_state_of_n_minus_1():
    """Everything stored up to N-1: day N runs silver and the states on N only; gold on what N
    changes (yesterday's sessions, the funnels of the week before, the retention cohorts of the
    year before, the conversions and revenue over yesterday's sessions)."""
    first, n = dt.date(2024, 1, 1), dt.date(2024, 5, 1)
    days = dt.timedelta
    stored = {m.table: (first, n - days(days=1)) for m in MODELS if m.partitioned}
    runs = {m.table: (s, e) for m, s, e in plan(n, n, floor=first, ceiling=n, stored=stored)}
    one_day = ("silver.events", "silver.exposures", "silver.exposure_state", "silver.conversions", "silver.person_state",
               "silver.person_platform_state", "silver.experiment_state", "gold.events_hourly", "gold.active_users",
               "gold.active_users_by_platform", "gold.active_users_monthly", "gold.experiments")
    assert {t: runs[t] for t in one_day} == {t: (n, n) for t in one_day}
    assert runs["gold.sessions"] == runs["gold.conversions"] == runs["gold.revenue"] == (n - days(days=1), n)
    assert runs["gold.funnels"] == (n - days(days=7), n)
    assert runs["gold.retention"] == (first, n)  # cohorts of the year before N, clipped to what is built
    # a backfill of an old day D restates the states, and what reads them, forward to N-1
    d = dt.date(2024, 3, 1)
    back = {m.table: (s, e) for m, s, e in plan(d, d, floor=first, ceiling=n - days(days=1), stored=stored)}
    assert back["silver.events"] == (d, d)
    assert back["silver.person_state"] == back["gold.active_users"] == back["gold.experiments"] == (d, n - days(days=1))
    # a state that stops before the range resumes the day after its last day, its input with it
    behind = stored | {"silver.person_state": (first, n - days(days=5))}
    resumed = {m.table: (s, e) for m, s, e in plan(n, n, floor=first, ceiling=n, stored=behind)}
    assert resumed["silver.person_state"] == (n - days(days=4), n) and resumed["silver.events"] == (n, n)


def test_affected_days_mirror_what_each_model_reads():
    assert {m.table: m.affected_days for m in MODELS} == {
        "silver.identity_links": (None, None),  # unpartitioned: replaced whole
        "silver.identity_map": (None, None),
        "silver.identity_refused": (None, None),
        "silver.events": (0, 0),  # a copy on a neighbouring day: found by its key (models.restate)
        "silver.dim_user": (None, None),
        "silver.dim_device": (None, None),
        "silver.exposures": (0, 0),
        "silver.exposure_state": (0, None),
        "silver.dim_experiment": (None, None),
        "silver.conversions": (0, 1),  # an exposure of d: its day, and every later one through the state
        "gold.events_hourly": (0, 0),
        "gold.sessions": (-1, 1),
        "gold.sessions_daily": (0, 0),
        "silver.person_state": (0, None),  # cumulative: every later state carries the change
        "silver.person_platform_state": (0, None),
        "silver.experiment_state": (0, None),
        "gold.active_users": (0, 0),  # the trailing windows are in the state of the day
        "gold.active_users_by_platform": (0, 0),
        "gold.active_users_monthly": (0, 0),
        "gold.retention": (-366, 0),  # cohorts whose cells the state of d completes
        "gold.funnels": (-7, 0),
        "gold.experiments": (0, 0),  # cumulative results, in the state of the day
        "gold.conversions": (0, 1),  # its session may start the day before
        "gold.revenue": (0, 0),
    }


def test_errors(tmp_path):
    home = Home(tmp_path)
    with pytest.raises(NotFoundError, match="^bronze.events does not exist yet in .*: nothing to build") as e:
        build(home)
    assert "\n" not in str(e.value) and e.value.field == "bronze.events"  # one line, names the table
    write(home, [event("a", T0)])
    assert Lake.of(home).ds_range("bronze.events") == (T0.date(), T0.date())
    with pytest.raises(InvalidInputError, match="after end"):
        build(home, T0.date(), T0.date() - dt.timedelta(days=1))
    gold_model = MODEL["gold.events_hourly"]
    with pytest.raises(NotFoundError, match="gold.events_hourly: input table silver.events is not built yet"):
        run_model(home, gold_model, T0.date(), T0.date())
    assert not Lake.of(home).exists("gold.events_hourly")


class InlineModel(Model):
    """A model whose SQL is given inline (for error cases), writing the test table gold.t."""

    def sql(self, home=None) -> str:
        return self.text


def inline(text: str) -> InlineModel:
    model = InlineModel("gold.t", ())
    object.__setattr__(model, "text", text)
    return model


@pytest.fixture
def gold_t(monkeypatch):
    """gold.t declared in the catalog for the test: active users' schema and partitioning."""
    spec = dataclasses.replace(catalog.spec("gold.active_users"), name="gold.t")
    monkeypatch.setattr(catalog, "TABLES", catalog.TABLES + (spec,))
    return spec


def test_a_result_that_does_not_fit_writes_nothing(tmp_path, gold_t):
    home = Home(tmp_path)
    day = dt.date(2024, 1, 1)
    good = "SELECT DATE '2024-01-01' AS ds, 1::BIGINT AS dau, 2::BIGINT AS wau, 3::BIGINT AS mau, 0.5 AS stickiness WHERE $start <= $end"
    assert run_model(home, inline(good), day, day) == 1
    bad = {
        good.replace("1::BIGINT", "NULL::BIGINT"): "dau",  # non-nullable
        good.replace("DATE '2024-01-01'", "DATE '2024-01-02'"): "Invalid data",  # outside range
        good.replace(", 3::BIGINT AS mau", ""): "mau",
    }
    for text, message in bad.items():
        with pytest.raises(InvalidInputError, match=message):
            run_model(home, inline(text), day, day)
    assert len(history(home, "gold.t")) == 1
    assert query(home, "SELECT * FROM gold.t").to_pylist() == [{"ds": day, "dau": 1, "wau": 2, "mau": 3, "stickiness": 0.5}]
