"""Monthly retention cohorts and the funnels' median time to convert, over a real server.

Gold is built by the batch models over the ecom dataset (Jan 4 .. Jun 29 2024); the answers
are compared with the independent pandas computations of tests/models/ecom_reference.py
(and, for an ad-hoc monthly retention, with a count made here), under the privacy floor k.
Then the bad-request classes of these endpoints: each a 4xx naming the parameter and rule.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pandas as pd
import pytest

from headwater.config import Home
from headwater.models import config as model_config
from headwater.models.run import build
from headwater.serve import filters
from headwater.serve.access import Role, TokenStore
from tests.helpers import start_collector
from tests.models import ecom_reference as ref
from tests.models.ecom_bronze import write_bronze

K = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("cohorts") / "home")
    home.root.mkdir(parents=True)
    (home.root / "headwater.toml").write_text(f"[serve]\nk_anonymity = {K}\n")
    write_bronze(home, batches=1, with_resends=False)
    build(home)
    store = TokenStore(home)
    tokens = {str(role): store.add(role)[1] for role in Role}
    with start_collector(home.root) as c:
        yield c.url, tokens, home


def get(server, path, role="viewer", **params) -> httpx.Response:
    url, tokens, _ = server
    with httpx.Client(base_url=url + "/api", headers={"Authorization": f"Bearer {tokens[role]}"}, timeout=60) as c:
        return c.get(path, params=params)


def month_rows(frame: pd.DataFrame) -> list[dict]:
    """Reference rows as the endpoint shows them (under the floor), in its order."""
    frame = frame[frame["active_users"] >= K].sort_values(["cohort_start", "period"])
    return [{"cohort_start": r.cohort_start.isoformat(), "cohort_grain": "month", "period": r.period, "cohort_size": r.cohort_size,
             "active_users": r.active_users, "retention": r.retention, "persons": r.active_users} for r in frame.itertuples()]


def test_month_cohorts_equal_the_reference_and_default_to_a_year(server):
    want = ref.retention().query("cohort_grain == 'month'")
    body = get(server, "/metrics/retention", grain="month", start="2024-01-01", end="2024-06-30").json()
    assert body["source"] == "gold.retention" and body["rows"] == month_rows(want)
    assert {r["cohort_start"] for r in body["rows"]} == {f"2024-0{m}-01" for m in range(1, 6)}  # June is not over
    assert body["suppressed"] == int((want["active_users"] < K).sum())  # month cells are large: none here
    # without a range: the 366 days ending on the last day built, a year of month cohorts
    default = get(server, "/metrics/retention", grain="month").json()
    assert dt.date.fromisoformat(default["end"]) - dt.date.fromisoformat(default["start"]) == dt.timedelta(days=365)
    assert default["rows"] == body["rows"]


def test_a_month_cohort_is_in_a_range_holding_its_first_day(server):
    """Rows are the cohorts starting in [start, end]; April's is read from its partition Apr 30
    although ``end`` is Apr 10, March's (Mar 1) is before ``start``."""
    body = get(server, "/metrics/retention", grain="month", start="2024-03-15", end="2024-04-10").json()
    assert {r["cohort_start"] for r in body["rows"]} == {"2024-04-01"}
    assert [r["period"] for r in body["rows"]] == [0, 1]  # April and May are over by Jun 29, June is not


def test_adhoc_month_retention_counts_start_and_return_events(server):
    start, end = dt.date(2024, 2, 1), dt.date(2024, 4, 30)
    body = get(server, "/metrics/retention/adhoc", grain="month", start_event="add_to_cart", return_event="purchase",
               role="analyst", start=str(start), end=str(end)).json()
    assert body["source"] == "silver.events"
    # counted here: a person's cohort is the month of their first add_to_cart; period m counts
    # those who purchased in the m-th month after; complete months only (data ends Jun 29)
    ev = ref.events()
    first = ev[ev["event"] == "add_to_cart"].groupby("user_id")["day"].min()
    buys = ev[ev["event"] == "purchase"].groupby("user_id")["day"].agg(set)
    rows = []
    for month in (dt.date(2024, 2, 1), dt.date(2024, 3, 1), dt.date(2024, 4, 1)):
        members = [u for u, d in first.items() if d.replace(day=1) == month]
        for m in range(13):
            if ref._month_end(month, m) > dt.date(2024, 6, 29):
                break
            active = sum(1 for u in members if any((d.year - month.year) * 12 + d.month - month.month == m for d in buys.get(u, ())))
            rows.append({"cohort_start": month.isoformat(), "cohort_grain": "month", "period": m, "cohort_size": len(members),
                         "active_users": active, "retention": active / len(members), "persons": active})
    assert body["rows"] == [r for r in rows if r["persons"] >= K] and body["suppressed"] == sum(r["persons"] < K for r in rows)
    assert any(r["period"] > 0 for r in body["rows"])


@pytest.mark.parametrize("window_hours", [24, 48])
def test_funnel_median_time_to_convert_equals_the_reference(server, window_hours):
    """24 h: the configured checkout funnel, read from gold.funnels; 48 h: the same steps
    computed on read. Either way each step's median seconds equal the pandas reference."""
    checkout = next(f for f in model_config.load().funnels if f.name == "checkout")
    body = get(server, "/metrics/funnel", steps=",".join(checkout.steps), window_hours=window_hours,
               start="2024-03-01", end="2024-04-30").json()
    assert body["source"] == ("gold.funnels" if window_hours == 24 else "silver.events")
    want = ref.funnel(list(checkout.steps), pd.Timedelta(hours=window_hours))
    want = want[(want["ds"] >= dt.date(2024, 3, 1)) & (want["ds"] <= dt.date(2024, 4, 30)) & (want["users"] >= K)]
    expected = {(r.ds.isoformat(), r.platform, r.step): None if pd.isna(r.median_seconds_to_convert) else r.median_seconds_to_convert
                for r in want.itertuples()}
    got = {(r["ds"], r["platform"], r["step"]): r["median_seconds_to_convert"] for r in body["rows"]}
    assert got.keys() == expected.keys()
    assert all(got[key] == pytest.approx(expected[key], rel=1e-12) if expected[key] is not None else got[key] is None
               for key in got)
    assert all(r["median_seconds_to_convert"] is None for r in body["rows"] if r["step"] == 1)
    assert any(r["median_seconds_to_convert"] > 0 for r in body["rows"] if r["step"] > 1)
    configured = get(server, "/metrics/funnels/checkout", start="2024-03-01", end="2024-04-30").json()
    assert window_hours != 24 or configured["rows"] == body["rows"]


@pytest.mark.parametrize(("path", "params", "status", "field", "rule"), [
    ("/metrics/cohorts", {}, 404, "path", "no endpoint /api/metrics/cohorts"),  # an unknown metric
    ("/metrics/retention", {"grain": "month", "start": "2024-02-30"}, 400, "start", "valid date"),  # bad dates
    ("/metrics/retention", {"grain": "month", "start": "2024-05-01", "end": "2024-04-01"}, 400, "end", "on or after start"),
    ("/metrics/retention", {"grain": "year"}, 400, "grain", "'day', 'week' or 'month'"),
    ("/metrics/retention/adhoc", {"grain": "month", "start_event": "nope"}, 400, "start_event", "unknown event 'nope'"),
    ("/metrics/retention/adhoc", {"grain": "month", "return_event": "purchase", "start": "2024-01-01", "end": "2024-06-01"},
     400, "start", f"at most {filters.MAX_DAYS}"),  # a range too large to compute on read
    ("/metrics/retention", {"grain": "month", "start": "2023-01-01", "end": "2024-06-01"}, 400, "start", "at most 366"),
    ("/metrics/funnel", {"steps": "add_to_cart,nope"}, 400, "steps", "unknown tracked event 'nope'"),  # an unknown event
])
def test_every_bad_request_class_names_the_parameter_and_the_rule(server, path, params, status, field, rule):
    r = get(server, path, **params)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and rule in r.json()["message"] and r.json()["message"].startswith(f"{field}:")
