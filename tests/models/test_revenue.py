"""gold.revenue and gold.active_users_monthly on a hand-built bronze with known answers:
exact decimal sums (0.1 + 0.2 is 0.3, a refund, 13 digits), conversions without revenue,
paying persons, revenue per active user, and month-to-date actives resetting on the 1st."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.lake import schemas
from headwater.models.dag import MODELS
from headwater.models.run import build
from tests.helpers import query
from tests.models.bronze import UTC, event, rows, write

APR10, APR30, MAY1, MAY2 = (dt.date(2024, 4, 10), dt.date(2024, 4, 30), dt.date(2024, 5, 1), dt.date(2024, 5, 2))
CONFIG = '[conversions]\nevents = ["purchase"]\n'


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), UTC)


def view(eid: str, day: dt.date, user: str, platform: str = "web") -> dict:
    return event(eid, at(day), user=user, anon=None, platform=platform)


def buy(eid: str, day: dt.date, user: str, platform: str = "web", **props) -> dict:
    return event(eid, at(day, 13), user=user, anon=None, platform=platform, event_name="purchase",
                 properties=json.dumps(props))


def bronze() -> list[dict]:
    return [
        view("a", APR10, "u1"),
        view("b", APR30, "u2"),
        # May 1, web: u1 buys 0.1 and 0.2 (JSON numbers), u3 buys without revenue, u2 only views
        buy("w1", MAY1, "u1", revenue=0.1),
        buy("w2", MAY1, "u1", revenue=0.2),
        buy("w3", MAY1, "u3"),
        view("w4", MAY1, "u2"),
        # May 1, ios: a refund (u4) and a 13-digit amount as a string (u5)
        buy("i1", MAY1, "u4", platform="ios", revenue="-5"),
        buy("i2", MAY1, "u5", platform="ios", revenue="1234567890123.45"),
        # May 2: web only, no conversion
        view("w5", MAY2, "u2"),
    ]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("revenue"))
    (home.root / "models.toml").write_text(CONFIG)
    write(home, bronze())
    build(home, APR10, MAY2)
    return home


def test_revenue_is_an_exact_decimal_sum_per_day_and_platform(home):
    got = {(r["ds"], r["platform"]): r for r in rows(home, "SELECT * FROM gold.revenue")}
    # April: active web users, no conversions; ios has no active user before May 1
    assert got[(APR30, "web")] | {"ds": None} == {"ds": None, "platform": "web", "revenue": Decimal(0), "conversions": 0,
                                                  "paying_persons": 0, "active_users": 1, "revenue_per_active_user": 0.0}
    web, ios = got[(MAY1, "web")], got[(MAY1, "ios")]
    assert web["revenue"] == Decimal("0.3")  # not 0.30000000000000004
    assert (web["conversions"], web["paying_persons"], web["active_users"]) == (3, 1, 3)  # u3's conversion pays nothing
    assert web["revenue_per_active_user"] == pytest.approx(0.1)
    assert ios["revenue"] == Decimal("1234567890118.45")
    assert (ios["conversions"], ios["paying_persons"], ios["active_users"]) == (2, 1, 2)  # a refund is not paying
    assert ios["revenue_per_active_user"] == float(Decimal("1234567890118.45") / 2)
    assert got[(MAY2, "web")]["revenue"] == Decimal(0) and (MAY2, "ios") not in got  # ios: no DAU on May 2
    # a row per day and platform with an active person (days without one have none)
    assert set(got) == {(APR10, "web"), (APR30, "web"), (MAY1, "web"), (MAY1, "ios"), (MAY2, "web")}
    assert query(home, "SELECT * FROM gold.revenue").schema.field("revenue").type == schemas.REVENUE == pa.decimal128(38, 9)


def test_monthly_actives_are_month_to_date_and_reset_on_the_first(home):
    got = {(r["ds"], r["platform"]): (r["month"], r["active_users"]) for r in rows(home, "SELECT * FROM gold.active_users_monthly")}
    assert got[(APR10, "web")] == (dt.date(2024, 4, 1), 1)
    assert got[(APR10 + dt.timedelta(days=1), "web")] == (dt.date(2024, 4, 1), 1)  # no event, still active this month
    assert got[(APR30, "web")] == (dt.date(2024, 4, 1), 2)  # April: u1, u2
    assert got[(MAY1, "web")] == (MAY1, 3)  # u1, u2, u3, each active on May 1
    assert got[(MAY1, "ios")] == (MAY1, 2)
    assert got[(MAY2, "web")] == (MAY1, 3) and got[(MAY2, "ios")] == (MAY1, 2)  # month to date
    assert (APR30, "ios") not in got


def test_a_month_holds_each_person_once_across_days(tmp_path):
    home = Home(tmp_path)
    write(home, [view("w", APR30, "u1"), view("x", MAY1, "u1"), view("y", MAY2, "u1"), view("z", MAY2, "u2")])
    build(home, APR30, MAY2)
    assert [(r["ds"], r["active_users"]) for r in rows(home, "SELECT * FROM gold.active_users_monthly ORDER BY ds")] == [
        (APR30, 1), (MAY1, 1), (MAY2, 2)]  # u1 once a month, whatever the days


def test_both_tables_are_the_same_on_duckdb_and_spark(spark, home, tmp_path):
    """test_spark_parity's data has no revenue property: these sums are the non-zero ones."""
    sparked = Home(tmp_path)  # the same bronze, built from scratch on Spark
    (sparked.root / "models.toml").write_text(CONFIG)
    write(sparked, bronze())
    build(sparked, APR10, MAY2, engine="spark")
    for model in (m for m in MODELS if m.table in ("gold.revenue", "gold.active_users_monthly")):
        names = model.schema.names
        d, s = (query(h, f"SELECT * FROM {model.table}").select(names).cast(model.schema) for h in (home, sparked))
        d, s = (t.sort_by([(n, "ascending") for n in names]) for t in (d, s))
        assert d.num_rows > 0 and d.equals(s), (model.table, d.to_pylist(), s.to_pylist())
