"""Pre-aggregate and compute on read, with one definition (headwater.serve.adhoc_api).

Gold is built by the batch models over the ecom dataset (tests/models/ecom_bronze.py, 31k
events over six months); for every shipped funnel and for retention, the on-read computation
from silver.events equals the gold table's rows for the same range. Then the ad-hoc endpoints
on a real server: a shipped definition reads gold, any other is computed on read, bad input
is a 400 naming the parameter, and the privacy floor applies.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from headwater.config import Home
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models import config as model_config
from headwater.models.run import build
from headwater.serve.access import Role, TokenStore
from headwater.serve.adhoc_api import funnel_on_read, retention_on_read
from headwater.serve.filters import MAX_DAYS
from tests.helpers import start_collector
from tests.models.ecom_bronze import write_bronze

K = 3
START, END = dt.date(2024, 3, 1), dt.date(2024, 4, 30)
RANGE = {"start": str(START), "end": str(END)}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("on-read") / "home")
    home.root.mkdir(parents=True)
    (home.root / "headwater.toml").write_text(f"[serve]\nk_anonymity = {K}\n")
    write_bronze(home, batches=1, with_resends=False)
    build(home)
    return home


def gold(home: Home, sql: str, params: dict) -> list[dict]:
    return lake_sql.query(Lake.of(home), sql, params).to_pylist()


@pytest.mark.parametrize("platform", [None, "mobile"])
def test_every_shipped_funnel_on_read_equals_gold(home, platform):
    funnels = model_config.load(home).funnels
    assert funnels
    seen = 0
    for f in funnels:
        want = gold(home, "SELECT ds, platform, step, step_name, entered, users, conversion, median_seconds_to_convert, "
                    "users AS persons FROM gold.funnels "
                    "WHERE ds BETWEEN $start AND $end AND funnel = $funnel AND (CAST($platform AS VARCHAR) IS NULL OR platform = $platform) "
                    "ORDER BY ds, platform, step", {"start": START, "end": END, "funnel": f.name, "platform": platform})
        got = funnel_on_read(home, f.steps, f.window_hours, START, END, platform).to_pylist()
        assert got == want, f.name
        seen += len(want)
    assert seen > 100  # the checkout funnel has entries on most days of the range


@pytest.mark.parametrize(("grain", "cells"), [("day", 1000), ("week", 50), ("month", 5)])
def test_retention_on_read_equals_gold(home, grain, cells):
    want = gold(home, "SELECT cohort_start, cohort_grain, period, cohort_size, active_users, retention, active_users AS persons "
                "FROM gold.retention WHERE cohort_start BETWEEN $start AND $end AND cohort_grain = $grain "
                "ORDER BY cohort_start, period", {"start": START, "end": END, "grain": grain})
    got = retention_on_read(home, None, None, START, END, grain).to_pylist()
    assert len(want) >= cells and got == want
    if grain == "month":  # March (months 0..2 complete by Jun 29) and April (0..1)
        assert [(r["cohort_start"], r["period"]) for r in got] == [
            (dt.date(2024, 3, 1), 0), (dt.date(2024, 3, 1), 1), (dt.date(2024, 3, 1), 2),
            (dt.date(2024, 4, 1), 0), (dt.date(2024, 4, 1), 1)]


def test_retention_with_start_and_return_events(home):
    rows = retention_on_read(home, "add_to_cart", "purchase", START, END, "day").to_pylist()
    # cohort sizes: persons whose first add_to_cart (over all history) is that day, counted independently
    firsts = lake_sql.query(Lake.of(home), """
        SELECT first_ds, count(*) AS n FROM (
            SELECT person_id, min(ds) AS first_ds FROM silver.events
            WHERE event_name = 'add_to_cart' AND person_id IS NOT NULL GROUP BY person_id)
        WHERE first_ds BETWEEN $start AND $end GROUP BY first_ds""", {"start": START, "end": END}).to_pylist()
    sizes = {r["first_ds"]: r["n"] for r in firsts}
    assert sizes and {r["cohort_start"]: r["cohort_size"] for r in rows} == sizes
    assert all(r["active_users"] <= r["cohort_size"] for r in rows)
    assert any(r["active_users"] > 0 for r in rows if r["period"] > 0)  # some buy on a later day
    # the events matter: first-active cohorts (any event) are other cohorts
    any_event = {r["cohort_start"]: r["cohort_size"] for r in retention_on_read(home, None, None, START, END, "day").to_pylist()}
    assert any_event != sizes


@pytest.fixture(scope="module")
def server(home):
    store = TokenStore(home)
    tokens = {str(role): store.add(role)[1] for role in Role}
    with start_collector(home.root) as c:
        yield c.url, tokens


def get(server, path, role="viewer", **params) -> httpx.Response:
    url, tokens = server
    with httpx.Client(base_url=url + "/api", headers={"Authorization": f"Bearer {tokens[role]}"}, timeout=60) as c:
        return c.get(path, params=params)


def test_a_shipped_funnel_reads_gold_and_another_is_computed_on_read(server, home):
    checkout = next(f for f in model_config.load(home).funnels if f.name == "checkout")
    shipped = get(server, "/metrics/funnel", steps=",".join(checkout.steps), window_hours=checkout.window_hours, **RANGE).json()
    assert (shipped["source"], shipped["funnel"]) == ("gold.funnels", "checkout")
    assert shipped["rows"] == get(server, "/metrics/funnels/checkout", **RANGE).json()["rows"] != []
    adhoc = get(server, "/metrics/funnel", steps=",".join(checkout.steps), window_hours=48, platform="desktop", **RANGE).json()
    assert (adhoc["source"], adhoc["funnel"], adhoc["k"]) == ("silver.events", None, K)
    want = funnel_on_read(home, checkout.steps, 48, START, END, "desktop").to_pylist()
    shown = [{**r, "ds": dt.date.fromisoformat(r["ds"])} for r in adhoc["rows"]]
    assert shown == [r for r in want if r["persons"] >= K] and adhoc["suppressed"] == len(want) - len(shown) > 0
    assert all(r["platform"] == "desktop" for r in shown)


def test_retention_adhoc_reads_gold_for_any_event_and_computes_other_events(server):
    shipped = get(server, "/metrics/retention/adhoc", grain="week", **RANGE).json()
    assert shipped["source"] == "gold.retention"
    assert shipped["rows"] == get(server, "/metrics/retention", grain="week", **RANGE).json()["rows"] != []
    adhoc = get(server, "/metrics/retention/adhoc", start_event="product_view", return_event="purchase", **RANGE).json()
    assert adhoc["source"] == "silver.events" and adhoc["rows"]
    assert all(r["persons"] >= K and r["cohort_grain"] == "day" for r in adhoc["rows"])


@pytest.mark.parametrize(("path", "params", "field", "rule"), [
    ("/metrics/funnel", {"steps": "product_view,nope"}, "steps", "unknown tracked event 'nope'"),
    ("/metrics/funnel", {"steps": ",".join(["product_view"] * 11)}, "steps", "2..10"),
    ("/metrics/funnel", {"steps": "product_view"}, "steps", "2..10"),
    ("/metrics/funnel", {"steps": "product_view,purchase", "window_hours": "0.5"}, "window_hours", "greater than or equal to 1"),
    ("/metrics/funnel", {"steps": "product_view,purchase", "window_hours": "169"}, "window_hours", "less than or equal to 168"),
    ("/metrics/funnel", {"steps": "product_view,purchase", "start": "2024-01-01", "end": "2024-06-30"}, "start", f"at most {MAX_DAYS}"),
    ("/metrics/funnel", {}, "steps", "Field required"),
    ("/metrics/retention/adhoc", {"start_event": "nope"}, "start_event", "unknown event 'nope'"),
    ("/metrics/retention/adhoc", {"return_event": "purchase", "grain": "year"}, "grain", "'day', 'week' or 'month'"),
])
def test_bad_adhoc_requests_are_400_naming_the_parameter(server, path, params, field, rule):
    r = get(server, path, **params)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and rule in r.json()["message"] and r.json()["message"].startswith(f"{field}:")
