"""The query API's metric endpoints over a real server (tests/serve/conftest.py): auth,
every metric, the privacy floor at k, bad requests, OpenAPI."""

from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import K

RANGE = {"start": "2024-03-01", "end": "2024-03-02"}
METRICS = ["/metrics/active_users", "/metrics/retention", "/metrics/funnels/checkout", "/metrics/experiments/exp1",
           "/metrics/sessions", "/metrics/top_events"]


def get(api, role, path, **params):
    with api.client(role) as c:
        return c.get(path, params=params)


def test_openapi_and_docs_are_public_and_list_every_endpoint(api):
    with httpx.Client(base_url=api.url) as c:
        doc = c.get("/api/openapi.json").json()
        page = c.get("/api/docs")
        assert page.status_code == 200
        # the vendored Swagger UI: no CDN (the machine may have no internet), assets served here
        assert "cdn." not in page.text and "/api/static/swagger-ui/swagger-ui-bundle.js" in page.text
        assert "SwaggerUIBundle" in c.get("/api/static/swagger-ui/swagger-ui-bundle.js").text
        assert c.get("/api/static/swagger-ui/swagger-ui.css").status_code == 200
        assert c.get("/health").status_code == 200  # the collector still serves beside the API
    assert set(doc["paths"]) >= {"/metrics/active_users", "/metrics/retention", "/metrics/funnels/{funnel}",
                                 "/metrics/experiments/{experiment_id}", "/metrics/sessions", "/metrics/top_events", "/live", "/sql"}
    assert doc["servers"] == [{"url": "/api"}]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]


@pytest.mark.parametrize("path", METRICS + ["/live"])
def test_metric_endpoints_need_a_valid_token(api, path):
    assert get(api, None, path).status_code == 401
    with httpx.Client(base_url=api.url + "/api") as c:
        for auth in ("Bearer hw_rt_not-a-token", f"Bearer {api.tokens['revoked']}", "Basic dXNlcjo="):
            r = c.get(path, headers={"Authorization": auth})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["field"] == "token" and api.tokens["revoked"] not in r.text


@pytest.mark.parametrize("role", ["viewer", "analyst", "admin"])
@pytest.mark.parametrize("path", METRICS)
def test_every_role_reads_metrics_under_the_floor(api, role, path):
    params = {**RANGE, **({"grain": "day"} if "retention" in path else {})}
    r = get(api, role, path, **params)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == K and body["suppressed"] >= 1
    assert all(row["persons"] >= K for row in body["rows"])
    assert not {"person_id", "session_id", "user_id"} & {c for row in body["rows"] for c in row}


def test_a_cell_of_k_persons_is_shown_and_one_of_k_minus_one_suppressed(api):
    body = get(api, "viewer", "/metrics/active_users", **RANGE).json()
    assert [(r["ds"], r["platform"], r["dau"]) for r in body["rows"]] == [("2024-03-01", "web", K), ("2024-03-02", "web", K + 1)]
    assert body["suppressed"] == 1  # ios on 2024-03-01: k - 1 persons
    assert [r["dau"] for r in body["total"]] == [K + 2, K + 1]
    retention = get(api, "viewer", "/metrics/retention", **RANGE).json()
    assert [(r["period"], r["active_users"]) for r in retention["rows"]] == [(0, 5), (1, K)]
    funnel = get(api, "viewer", "/metrics/funnels/checkout", **RANGE).json()
    assert [r["step"] for r in funnel["rows"]] == [1]
    experiment = get(api, "viewer", "/metrics/experiments/exp1", **RANGE).json()
    assert [r["variant"] for r in experiment["rows"]] == ["a"]
    sessions = get(api, "viewer", "/metrics/sessions", **RANGE).json()
    assert sessions["rows"] == [{"ds": "2024-03-01", "platform": "web", "sessions": K, "median_duration_s": 60.0,
                                 "bounce_rate": pytest.approx(1 / 3), "persons": K}]


def test_platform_filter_default_range_and_top_events(api):
    ios = get(api, "analyst", "/metrics/active_users", platform="ios", **RANGE).json()
    assert ios["rows"] == [] and ios["suppressed"] == 1 and "total" not in ios
    # default: the 30 days ending on the last day with data
    default = get(api, "analyst", "/metrics/active_users").json()
    assert (default["start"], default["end"]) == ("2024-02-02", "2024-03-02")
    top = get(api, "viewer", "/metrics/top_events").json()
    assert [(r["event_name"], r["events"]) for r in top["rows"]] == [("Viewed", 47), ("Clicked", 20)]  # Rare: k - 1 persons
    assert top["suppressed"] == 1
    assert [r["event_name"] for r in get(api, "viewer", "/metrics/top_events", limit=1).json()["rows"]] == ["Viewed"]


def test_live_counts_and_active_users_from_the_realtime_tables(api):
    body = get(api, "viewer", "/live").json()
    assert [(r["event_name"], r["events"]) for r in body["per_minute"]] == [("Viewed", 4)]  # 90 minutes ago is out
    assert body["active_users_5m"] == pytest.approx(2, abs=0.1)
    assert body["active_users_60m"] == pytest.approx(4, abs=0.1)  # u2 counted once across minutes
    assert get(api, "viewer", "/live", platform="ios").json()["per_minute"] == []


@pytest.mark.parametrize(("path", "params", "status", "field", "rule"), [
    ("/metrics/active_users", {"start": "2024-02-30"}, 400, "start", "valid date"),
    ("/metrics/active_users", {"end": "yesterday"}, 400, "end", "valid date"),
    ("/metrics/active_users", {"start": "2024-03-02", "end": "2024-03-01"}, 400, "end", "on or after start"),
    ("/metrics/sessions", {"start": "2023-01-01", "end": "2024-03-01"}, 400, "start", "at most 366"),
    ("/metrics/retention", {"grain": "year"}, 400, "grain", "'day', 'week' or 'month'"),
    ("/metrics/retention", {"platform": "web"}, 400, "platform", "no platform breakdown"),
    ("/metrics/top_events", {"limit": "0"}, 400, "limit", "greater than or equal to 1"),
    ("/metrics/funnels/nope", {}, 404, "funnel", "unknown funnel 'nope'"),
    ("/metrics/experiments/nope", {}, 404, "experiment", "unknown experiment 'nope'"),
    ("/metrics/nope", {}, 404, "path", "no endpoint /api/metrics/nope"),
])
def test_bad_requests_name_the_parameter_and_the_rule(api, path, params, status, field, rule):
    r = get(api, "viewer", path, **params)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and rule in r.json()["message"]
    assert r.json()["message"].startswith(f"{field}:")
