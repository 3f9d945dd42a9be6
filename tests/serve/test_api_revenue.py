"""Revenue and calendar-month actives over the real server (tests/serve/conftest.py): exact
decimal strings, the floor on paying persons, month-to-date rows per month, bad requests."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import K

RANGE = {"start": "2024-03-01", "end": "2024-03-02"}


def get(api, role, path, **params):
    with api.client(role) as c:
        return c.get(path, params=params)


def test_both_endpoints_are_in_the_openapi_document(api):
    with httpx.Client(base_url=api.url) as c:
        paths = c.get("/api/openapi.json").json()["paths"]
    assert {"/metrics/revenue", "/metrics/monthly_active_users"} <= set(paths)


@pytest.mark.parametrize("role", ["viewer", "analyst", "admin"])
def test_revenue_is_an_exact_string_under_the_floor_on_paying_persons(api, role):
    r = get(api, role, "/metrics/revenue", **RANGE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["metric"] == "revenue" and body["suppressed"] == 1  # ios on 2024-03-01: k - 1 paying persons
    assert [(row["ds"], row["platform"], row["revenue"], row["paying_persons"]) for row in body["rows"]] == [
        ("2024-03-01", "web", "0.300000000", K), ("2024-03-02", "web", "1234567890123.450000000", K + 1)]
    first = body["rows"][0]
    assert (first["conversions"], first["active_users"], first["revenue_per_active_user"]) == (9, 10, 0.03)
    assert not {"person_id", "session_id", "user_id"} & set(first)


def test_revenue_platform_filter_and_default_range(api):
    assert get(api, "viewer", "/metrics/revenue", platform="ios", **RANGE).json()["rows"] == []
    default = get(api, "viewer", "/metrics/revenue").json()
    assert (default["start"], default["end"]) == ("2024-02-02", "2024-03-02") and len(default["rows"]) == 2


def test_monthly_actives_one_row_per_month_and_platform(api):
    body = get(api, "viewer", "/metrics/monthly_active_users", start="2024-02-01", end="2024-03-02").json()
    assert body["metric"] == "monthly_active_users" and body["suppressed"] == 1  # ios in March: k - 1
    assert body["rows"] == [
        {"month": "2024-02-01", "platform": "web", "active_users": K + 2, "through": "2024-02-29", "complete": True, "persons": K + 2},
        {"month": "2024-03-01", "platform": "web", "active_users": K + 1, "through": "2024-03-02", "complete": False, "persons": K + 1},
    ]
    # a range ending earlier reads the month as of its last day in the range
    early = get(api, "viewer", "/metrics/monthly_active_users", start="2024-03-01", end="2024-03-01", platform="web").json()
    assert [(r["month"], r["active_users"], r["through"]) for r in early["rows"]] == [("2024-03-01", K, "2024-03-01")]


@pytest.mark.parametrize("path", ["/metrics/revenue", "/metrics/monthly_active_users"])
@pytest.mark.parametrize(("params", "field", "rule"), [
    ({"start": "2024-02-30"}, "start", "valid date"),
    ({"end": "soon"}, "end", "valid date"),
    ({"start": "2024-03-02", "end": "2024-03-01"}, "end", "on or after start"),
    ({"start": "2023-01-01", "end": "2024-03-01"}, "start", "at most 366"),
])
def test_bad_requests_name_the_parameter_and_the_rule(api, path, params, field, rule):
    r = get(api, "viewer", path, **params)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field and rule in r.json()["message"] and r.json()["message"].startswith(f"{field}:")


@pytest.mark.parametrize("path", ["/metrics/revenue", "/metrics/monthly_active_users"])
def test_a_token_is_needed(api, path):
    assert get(api, None, path).status_code == 401
