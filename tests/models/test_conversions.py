"""gold.conversions on a hand-built bronze: person (an identity merge), session (one crossing
midnight), exact revenue, the variant at that moment (a person switching variant), a late
exposure and a late conversion; and the three modeled-layer tables equal on DuckDB and Spark."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from decimal import Decimal

import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.models import config as model_config
from headwater.models.dag import MODELS
from headwater.models.run import build
from tests.helpers import query
from tests.models.bronze import T0, event, identify, rows, write

D, M = dt.timedelta(days=1), dt.timedelta(minutes=1)
CONFIG = """
[[funnels]]
name = "shop"
steps = ["view", "purchase"]

[[experiments]]
id = "exp_a"
variants = ["control", "treatment"]
conversion_event = "purchase"

[[experiments]]
id = "exp_b"
variants = ["x", "y"]
conversion_event = "signup"
"""
MIDNIGHT = dt.datetime.combine(T0.date() + D, dt.time(), T0.tzinfo)


def exposure(eid: str, ts: dt.datetime, experiment: str, variant: str, user: str | None = "u1", anon: str | None = "a1", **kw) -> dict:
    props = json.dumps({"experiment_id": experiment, "variation_id": variant})
    return event(eid, ts, user=user, anon=anon, event_name="Experiment Viewed", properties=props, **kw)


def buy(eid: str, ts: dt.datetime, user: str | None, anon: str | None, name: str = "purchase",
        received: dt.datetime | None = None, **props) -> dict:
    return event(eid, ts, user=user, anon=anon, event_name=name, received=received, properties=json.dumps(props))


def bronze() -> list[dict]:
    return [
        # u1: exposed to control while anonymous, identifies (a1 -> u1), buys; the next day
        # re-exposed to treatment (and to exp_b), buys again
        exposure("x1", T0, "exp_a", "control", user=None),
        identify("i1", T0 + 5 * M, "a1", "u1"),
        buy("c1", T0 + 10 * M, "u1", "a1", revenue=19.99),
        exposure("x2", T0 + D, "exp_a", "treatment"),
        exposure("x3", T0 + D + M / 2, "exp_a", "mystery"),  # not a configured variant: ignored
        exposure("x4", T0 + D + M / 2, "exp_b", "y"),
        buy("c2", T0 + D + M, "u1", "a1", revenue="1234567890123.45"),  # a string: exact at any length
        buy("s1", T0 + D + 2 * M, "u1", "a1", name="signup", revenue=1234567890123.45),  # 15 digits as a number
        # u2: never exposed; a session from 23:50 converting after midnight; revenue not a number
        event("v1", MIDNIGHT - 10 * M, user="u2", anon="a2", event_name="view"),
        buy("c3", MIDNIGHT + 10 * M, "u2", "a2", revenue="n/a"),
        buy("c9", MIDNIGHT + 11 * M, None, None),  # no person: not a conversion of anyone
        event("v2", T0, user="u1", anon="a1", event_name="view"),  # not a conversion event
    ]


def conversions(home: Home) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows(home, "SELECT * FROM gold.conversions")}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("conversions"))
    (home.root / "models.toml").write_text(CONFIG)
    write(home, bronze())
    build(home)
    return home


def test_conversion_events_default_to_experiments_and_funnel_last_steps(home):
    config = model_config.load(home)
    assert config.conversion_events == ("purchase", "signup") and config.revenue_property == "revenue"
    assert set(conversions(home)) == {"c1", "c2", "s1", "c3"}


def test_person_session_revenue_and_variant_at_that_moment(home):
    person = rows(home, "SELECT person_id FROM silver.identity_map WHERE id = 'u1'")[0]["person_id"]
    assert rows(home, "SELECT person_id FROM silver.identity_map WHERE id = 'a1'")[0]["person_id"] == person  # the merge
    c = conversions(home)
    sessions = {r["session_start"]: r["session_id"] for r in rows(home, "SELECT * FROM gold.sessions")}
    assert c["c1"]["person_id"] == c["c2"]["person_id"] == person
    # the anonymous exposure at T0 opened the session the purchase is in
    assert c["c1"]["session_id"] == sessions[T0] and c["c1"]["session_id"].startswith(person + ":")
    assert c["c2"]["session_id"] == c["s1"]["session_id"] == sessions[T0 + D]
    assert c["c3"]["session_id"] == sessions[MIDNIGHT - 10 * M]  # started the day before
    assert c["c3"]["ds"] == MIDNIGHT.date() and c["c1"]["ds"] == T0.date()
    # exact decimals
    assert c["c1"]["revenue"] == Decimal("19.99")
    assert c["c2"]["revenue"] == c["s1"]["revenue"] == Decimal("1234567890123.45")
    assert c["c3"]["revenue"] is None
    assert query(home, "SELECT revenue FROM gold.conversions").schema.field("revenue").type == pa.decimal128(38, 9)
    # the variant of the latest exposure at or before the conversion, per experiment
    assert json.loads(c["c1"]["experiment_variants"]) == {"exp_a": "control"}
    assert json.loads(c["c2"]["experiment_variants"]) == {"exp_a": "treatment", "exp_b": "y"}
    assert c["c3"]["experiment_variants"] == "{}"
    # gold.experiments keeps the first exposure's variant (intention to treat)
    exp = rows(home, "SELECT variant, exposed FROM gold.experiments WHERE experiment_id = 'exp_a' AND ds = $d",
               {"d": (T0 + D).date()})
    assert {r["variant"]: r["exposed"] for r in exp} == {"control": 1, "treatment": 0}


def test_late_exposure_and_late_conversion_restate_the_fact(tmp_path):
    home = Home(tmp_path)
    (home.root / "models.toml").write_text(CONFIG)
    write(home, bronze())
    build(home)
    late = T0 + 3 * D  # received days later, event time on the first days
    write(home, [
        exposure("x5", MIDNIGHT - 20 * M, "exp_a", "treatment", user="u2", anon="a2", received=late),
        buy("c4", T0 + 30 * M, "u1", "a1", revenue=2, received=late),
    ], batch_id=1)
    build(home)
    c = conversions(home)
    assert json.loads(c["c3"]["experiment_variants"]) == {"exp_a": "treatment"}
    assert json.loads(c["c4"]["experiment_variants"]) == {"exp_a": "control"}  # before the switch
    assert c["c4"]["revenue"] == Decimal(2) and c["c4"]["session_id"] == c["c1"]["session_id"]
    assert len(c) == 5


def test_configured_events_and_revenue_property(tmp_path):
    home = Home(tmp_path)
    (home.root / "models.toml").write_text(CONFIG + '[conversions]\nevents = ["signup"]\nrevenue_property = "amount $"\n')
    write(home, [buy("s1", T0, "u1", "a1", name="signup", **{"amount $": "7.5"}), buy("c1", T0, "u1", "a1")])
    build(home)
    assert [(r["event_id"], r["revenue"]) for r in rows(home, "SELECT * FROM gold.conversions")] == [("s1", Decimal("7.5"))]
    (home.root / "models.toml").write_text('[conversions]\nrevenue_property = "a\\"b"\n')
    with pytest.raises(model_config.ConfigError, match="conversions.revenue_property"):
        model_config.load(home)


MODELED = ("silver.exposures", "silver.conversions", "gold.conversions", "silver.dim_device", "silver.dim_experiment")


def test_modeled_tables_are_the_same_on_duckdb_and_spark(spark, tmp_path):
    """One Spark test for the new tables (test_spark_parity covers them on volume too)."""
    from tests.models.test_dim_device import bronze as device_bronze

    (tmp_path / "duckdb").mkdir()
    base = Home(tmp_path / "duckdb")
    (base.root / "models.toml").write_text(CONFIG)
    write(base, bronze() + device_bronze())
    sparked = Home(shutil.copytree(base.root, tmp_path / "spark"))
    build(base, engine="duckdb")
    build(sparked, engine="spark")
    for model in (m for m in MODELS if m.table in MODELED):
        names = model.schema.names
        d, s = (query(h, f"SELECT * FROM {model.table}").select(names).cast(model.schema) for h in (base, sparked))
        d, s = (t.sort_by([(n, "ascending") for n in names]) for t in (d, s))
        assert d.num_rows > 0 and d.equals(s), (model.table, d.to_pylist(), s.to_pylist())
