"""The web dashboard over HTTP (a real server: ``headwater collector`` in a subprocess), on the
hand-made lake of tests/serve/conftest.py (k = 3: every breakdown has a cell of k persons and
one of k - 1) plus data-quality results: login and the session cookie, 303 / 401 without a
token, a revoked token refused, every declared page drawn, each chart's CSV equal to the
API's rows, the k floor, pages added in dashboard.toml, a bad dashboard.toml named, the live
page's server-sent events, and an empty lake."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import re

import httpx
import pytest

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.quality import alerts
from headwater.quality.checks import Result
from headwater.serve.access import Principal, Role, TokenStore
from headwater.serve.dashboard import charts, pages, sources
from headwater.serve.dashboard.auth import COOKIE
from headwater.serve.dashboard.web import create_dashboard
from headwater.serve.privacy import IDENTIFIER_COLUMNS
from tests.helpers import start_collector
from tests.serve.conftest import D1, D2, K, SETTINGS, write_lake

CHECKED = dt.datetime(2024, 3, 3, 6, tzinfo=dt.timezone.utc)
RESULTS = [
    Result("volume", "silver.events", "fail", "Viewed: 3 events, expected 40 ± 5", subject="Viewed", ds=D2, blocking=True, observed=3.0, expected="40"),
    Result("freshness_realtime", "realtime.events_per_minute", "warn", "2 min behind", observed=120.0, expected="<= 60"),
    Result("completeness_bronze", "bronze.events", "pass", "all accepted events in bronze", ds=D2),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = Home(tmp_path_factory.mktemp("dashboard") / "home")
    home.root.mkdir(parents=True)
    (home.root / "headwater.toml").write_text(SETTINGS)
    write_lake(home)
    alerts.record(Lake.of(home), RESULTS[:1], CHECKED - dt.timedelta(days=1))  # an older run: not the last one
    alerts.record(Lake.of(home), RESULTS, CHECKED)
    store = TokenStore(home)
    tokens = {str(role): store.add(role, name=str(role))[1] for role in Role}
    with start_collector(home.root) as c:
        yield c, home, tokens


def client(server, role: str | None = "viewer", **kw) -> httpx.Client:
    c, _, tokens = server
    headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
    return httpx.Client(base_url=c.url, headers=headers, timeout=30, **kw)


def login(server, token: str) -> httpx.Client:
    c, _, _ = server
    http = httpx.Client(base_url=c.url, timeout=30)
    r = http.post("/dashboard/login", data={"token": token, "next": "/dashboard/pages/sessions"})
    assert r.status_code == 303, r.text
    return http


def rows_of(csv_text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(csv_text)))


def api_rows(server, path: str, role: str = "viewer", **params) -> dict:
    with client(server, role) as http:
        r = http.get("/api" + path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


def as_text(value) -> str:
    return "" if value is None else str(value)


def test_the_login_form_sets_a_strict_httponly_cookie_for_the_dashboard_only(server):
    c, _, tokens = server
    with httpx.Client(base_url=c.url, timeout=30) as http:
        assert http.get("/").headers["location"] == "/dashboard/"
        r = http.get("/dashboard/pages/sessions", params={"platform": "web"})
        assert r.status_code == 303
        assert r.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fpages%2Fsessions%3Fplatform%3Dweb"
        form = http.get(r.headers["location"])
        assert form.status_code == 200 and 'name="token"' in form.text and 'value="/dashboard/pages/sessions?platform=web"' in form.text

        wrong = http.post("/dashboard/login", data={"token": "hw_rt_not-a-token", "next": "/dashboard/pages/sessions"})
        assert wrong.status_code == 401 and "unknown read token" in wrong.text and "hw_rt_not-a-token" not in wrong.text
        assert COOKIE not in http.cookies

        r = http.post("/dashboard/login", data={"token": tokens["viewer"], "next": "/dashboard/pages/sessions?platform=web"})
        assert r.status_code == 303 and r.headers["location"] == "/dashboard/pages/sessions?platform=web"
        cookie = r.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=strict", "Path=/dashboard", "Max-Age="):
            assert attribute in cookie, cookie
        assert "Secure" not in cookie  # plain http on loopback; https sets it
        page = http.get("/dashboard/pages/sessions", params={"platform": "web"})
        assert page.status_code == 200 and "viewer · viewer" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "/api" not in cookie and http.get("/api/metrics/sessions").status_code == 401  # the cookie is not an API credential

        out = http.post("/dashboard/logout")
        assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
        assert http.get("/dashboard/pages/sessions").status_code == 303


def test_login_never_redirects_off_the_dashboard(server):
    c, _, tokens = server
    for target in ("//evil.example/x", "https://evil.example/dashboard/", "/api/metrics/sessions", "/dashboard\\@evil.example"):
        with httpx.Client(base_url=c.url, timeout=30) as http:
            r = http.post("/dashboard/login", data={"token": tokens["viewer"], "next": target})
            assert r.headers["location"] == "/dashboard/", target


def test_a_bearer_token_works_and_data_routes_answer_401_without_one(server):
    with client(server) as http:
        assert http.get("/dashboard/pages/active_users").status_code == 200
        assert http.get("/dashboard/pages/active_users/charts/total.csv").status_code == 200
    with client(server, role=None) as anonymous:
        for path in ("/dashboard/pages/active_users/charts/total.csv", "/dashboard/pages/active_users/charts/total.json",
                     "/dashboard/pages/live/events"):
            r = anonymous.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer" and r.json()["field"] == "token"
        assert anonymous.get("/dashboard/pages/active_users").status_code == 303
        # static assets are public: the login page needs them
        assert anonymous.get("/dashboard/vendor/echarts/echarts.min.js").status_code == 200
        assert anonymous.get("/dashboard/static/dashboard.js").status_code == 200


def test_a_revoked_token_is_refused_at_the_next_request(server):
    c, home, _ = server
    store = TokenStore(home)
    _, token = store.add(Role.VIEWER, name="soon-revoked")
    http = login(server, token)
    assert http.get("/dashboard/pages/sessions").status_code == 200
    store.revoke("soon-revoked")
    assert http.get("/dashboard/pages/sessions").status_code == 303
    r = http.get("/dashboard/pages/sessions/charts/count.csv")
    assert r.status_code == 401 and "revoked" in r.json()["message"]
    assert httpx.get(c.url + "/dashboard/pages/sessions/charts/count.csv", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    http.close()


@pytest.mark.parametrize("page", [p.id for p in pages.defaults()])
def test_every_declared_page_renders_with_its_charts(server, page):
    _, home, _ = server
    declared = next(p for p in pages.defaults() if p.id == page)
    with client(server) as http:
        r = http.get(f"/dashboard/pages/{page}")
    assert r.status_code == 200, r.text
    keys = re.findall(r'class="card chart-card kind-\w+" data-key="([^"]+)"', r.text)
    assert keys == [i.key for i in charts.instances(home, declared)] and keys
    payloads = [json.loads(m) for m in re.findall(r'<script type="application/json" class="chart-data">(.*?)</script>', r.text)]
    assert len(payloads) == len(keys)
    assert '/dashboard/vendor/echarts/echarts.min.js' in r.text
    for column in IDENTIFIER_COLUMNS:  # a viewer never sees an identifier, in any chart
        assert all(column not in p["columns"] for p in payloads)


def test_each_chart_csv_holds_the_api_rows(server):
    params = {"start": str(D1), "end": str(D2)}
    with client(server) as http:
        got = rows_of(http.get("/dashboard/pages/active_users/charts/dau_by_platform.csv", params=params).text)
        want = api_rows(server, "/metrics/active_users", **params)["rows"]
        assert got == [{"ds": r["ds"], "platform": r["platform"], "dau": str(r["dau"])} for r in want] and got

        got = rows_of(http.get("/dashboard/pages/active_users/charts/total.csv", params=params).text)
        want = api_rows(server, "/metrics/active_users", **params)["total"]
        assert got == [{k: str(r[k]) for k in ("ds", "dau", "wau", "mau")} for r in want] and got

        r = http.get("/dashboard/pages/retention/charts/daily_cohorts.csv", params=params)
        assert r.headers["content-type"] == "text/csv; charset=utf-8" and "attachment" in r.headers["content-disposition"]
        want = api_rows(server, "/metrics/retention", grain="day", **params)["rows"]
        assert rows_of(r.text) == [{"period": str(w["period"]), "cohort_start": w["cohort_start"], "retention": str(w["retention"])} for w in want]

        # exact decimals stay exact; the platform control is the API's platform parameter
        got = rows_of(http.get("/dashboard/pages/revenue/charts/revenue.csv", params=params | {"platform": "web"}).text)
        want = api_rows(server, "/metrics/revenue", platform="web", **params)["rows"]
        assert got == [{"ds": w["ds"], "platform": "web", "revenue": w["revenue"]} for w in want]
        assert "1234567890123.450000000" in [g["revenue"] for g in got]

        # the JSON route holds the same rows as the CSV
        body = http.get("/dashboard/pages/active_users/charts/dau_by_platform.json", params=params).json()
        assert [{k: as_text(v) for k, v in row.items()} for row in body["rows"]] == \
            rows_of(http.get("/dashboard/pages/active_users/charts/dau_by_platform.csv", params=params).text)


def test_rolled_up_funnel_and_latest_experiment_rows_are_the_api_rows_summed_and_last(server):
    with client(server, "admin") as http:
        got = rows_of(http.get("/dashboard/pages/funnels/charts/steps.csv", params={"item": "checkout"}).text)
        want = api_rows(server, "/metrics/funnels/checkout", role="admin")["rows"]
        sums: dict[str, int] = {}
        for w in want:
            sums[w["step_name"]] = sums.get(w["step_name"], 0) + w["users"]
        first = next(iter(sums.values()))
        assert got == [{"step_name": s, "users": str(n), "conversion": str(n / first), "step_conversion": str(n / first)}
                       for s, n in sums.items()]
        got = rows_of(http.get("/dashboard/pages/experiments/charts/results.csv", params={"item": "exp1"}).text)
        want = api_rows(server, "/metrics/experiments/exp1", role="admin")["rows"]
        last = max(w["ds"] for w in want)
        assert [g["variant"] for g in got] == [w["variant"] for w in want if w["ds"] == last]


def test_the_k_floor_holds_on_dashboard_data(server):
    """Cells of k - 1 persons (ios on D1, funnel step 2, variant b, a retention period) are
    withheld from the page, its CSV and its JSON, and the page says how many."""
    params = {"start": str(D1), "end": str(D2)}
    with client(server) as http:
        dau = rows_of(http.get("/dashboard/pages/active_users/charts/dau_by_platform.csv", params=params).text)
        assert {(r["ds"], r["platform"]) for r in dau} == {(str(D1), "web"), (str(D2), "web")}
        assert all(int(r["dau"]) >= K for r in dau)
        steps = rows_of(http.get("/dashboard/pages/funnels/charts/steps.csv", params={"item": "checkout"}).text)
        assert [s["step_name"] for s in steps] == ["Product Viewed"]
        variants = http.get("/dashboard/pages/experiments/charts/results.json", params={"item": "exp1"}).json()
        assert [v["variant"] for v in variants["rows"]] == ["a"] and variants["suppressed"] == 1 and variants["k"] == K
        cohort = rows_of(http.get("/dashboard/pages/retention/charts/daily_cohorts.csv", params=params).text)
        assert [c["period"] for c in cohort] == ["0", "1"]
        page = http.get("/dashboard/pages/active_users", params=params).text
        assert f"1 cell with fewer than {K} persons withheld" in page
        assert '"platform": "ios"' not in page


def test_quality_page_shows_the_last_run(server):
    with client(server) as http:
        page = http.get("/dashboard/pages/quality").text
        assert re.search(r'data-stat="failed" data-value="1"', page) and re.search(r'data-stat="warned" data-value="1"', page)
        last = rows_of(http.get("/dashboard/pages/quality/charts/last_run.csv").text)
        assert [(r["status"], r["check_name"]) for r in last] == [("fail", "volume"), ("warn", "freshness_realtime"),
                                                                   ("pass", "completeness_bronze")]
        by_day = rows_of(http.get("/dashboard/pages/quality/charts/by_day.csv").text)
        # the day judged twice counts its last run only
        assert by_day == [{"ds": str(D2), "status": "fail", "checks": "1"}, {"ds": str(D2), "status": "pass", "checks": "1"}]


def test_a_page_from_dashboard_toml_appears_beside_the_defaults(server):
    _, home, _ = server
    (home.root / "dashboard.toml").write_text("""
[[pages]]
id = "growth"
title = "Growth"

[[pages.charts]]
id = "top"
title = "Top events"
metric = "top_events"
params = { limit = 5 }
kind = "bar"
x = "event_name"
y = ["events"]

[[pages]]
id = "sessions"

[[pages.charts]]
id = "persons"
title = "Persons with a session"
metric = "sessions"
kind = "table"
columns = ["ds", "platform", "persons"]

[[pages.charts]]
id = "typo"
title = "A chart naming a column the metric lacks"
metric = "sessions"
kind = "line"
x = "ds"
y = ["bounce"]
""")
    try:
        with client(server) as http:
            page = http.get("/dashboard/pages/growth", params={"start": str(D1), "end": str(D1)})
            assert page.status_code == 200 and 'data-key="top"' in page.text
            assert 'href="/dashboard/pages/growth"' in http.get("/dashboard/pages/live").text  # in the navigation
            got = rows_of(http.get("/dashboard/pages/growth/charts/top.csv", params={"start": str(D1), "end": str(D1)}).text)
            want = api_rows(server, "/metrics/top_events", start=str(D1), end=str(D1), limit=5)["rows"]
            assert got == [{"event_name": w["event_name"], "events": str(w["events"])} for w in want] and got
            sessions = http.get("/dashboard/pages/sessions").text
            assert re.findall(r'data-key="([^"]+)"', sessions) == ["count", "median_length", "bounce_rate", "persons", "typo"]
            assert "y[0]: the rows of metric sessions have no column &#39;bounce&#39; (columns: ds, platform, sessions" in sessions
            typo = http.get("/dashboard/pages/sessions/charts/typo.csv")
            assert typo.status_code == 400 and typo.json()["field"] == "y[0]"
    finally:
        (home.root / "dashboard.toml").unlink()


@pytest.mark.parametrize("text, message", [
    ('[[pages]]\nid = "x"\ntitle = "X"\n[[pages.charts]]\nid = "c"\ntitle = "C"\nmetric = "sessions"\nkind = "pie"\n',
     "pages[0].charts[0].kind: Input should be 'line', 'bar', 'heatmap', 'interval', 'table' or 'stat'"),
    ('[[pages]]\nid = "x"\ntitle = "X"\n[[pages.charts]]\nid = "c"\ntitle = "C"\nmetric = "dau"\nkind = "table"\n',
     "pages[0].charts[0]: metric: unknown metric 'dau'"),
    ('[[pages]]\nid = "x"\ntitle = "X"\n[[pages.charts]]\nid = "c"\ntitle = "C"\nmetric = "retention"\nkind = "table"\nparams = {grian = "week"}\n',
     "pages[0].charts[0]: params.grian: not a parameter of metric retention (it takes: grain)"),
    ('[[pages]]\nid = "x"\ntitle = "X"\n[[pages.charts]]\nid = "c"\ntitle = "C"\nmetric = "sessions"\nkind = "line"\nx = "ds"\n',
     "pages[0].charts[0]: y: a line chart needs x and y"),
    ('[[pages]]\nid = "x"\n', "pages[0].title: a new page needs a title"),
    ('[[pages]]\nid = "Bad Id"\n', "pages[0].id: String should match pattern"),
    ('[[pages]\n', "not valid TOML"),
])
def test_a_bad_dashboard_toml_is_a_clear_error_naming_the_key(server, text, message):
    _, home, _ = server
    path = home.root / "dashboard.toml"
    path.write_text(text)
    try:
        with pytest.raises(pages.PagesError, match=re.escape(message)):
            pages.load(home)
        with client(server) as http:
            r = http.get("/dashboard/pages/sessions")
            assert r.status_code == 500 and str(path) in r.text and message.replace("'", "&#39;") in r.text
            assert http.get("/dashboard/pages/sessions/charts/count.csv").json()["message"].startswith(str(path))
    finally:
        path.unlink()


def test_a_malformed_control_is_a_400_naming_it(server):
    with client(server) as http:
        r = http.get("/dashboard/pages/sessions", params={"start": "yesterday"})
        assert r.status_code == 400 and "start: must be a date YYYY-MM-DD" in r.text
        r = http.get("/dashboard/pages/sessions/charts/count.csv", params={"start": str(D2), "end": str(D1)})
        assert r.status_code == 400 and r.json()["field"] == "end"
        assert http.get("/dashboard/pages/nope").status_code == 404
        assert http.get("/dashboard/pages/sessions/charts/nope.csv").status_code == 404


def test_the_live_stream_sends_the_live_charts_rows(server):
    with client(server) as http, http.stream("GET", "/dashboard/pages/live/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()
        event = next(line for line in lines if line.startswith("event:"))
        data = json.loads(next(lines).removeprefix("data:").strip())
    assert event == "event: live"
    # conftest's realtime tables: 4 events two minutes ago (the row 90 minutes ago is outside the hour)
    assert data["charts"]["events_in_window"]["rows"] == [{"events_in_window": 4}]
    assert data["charts"]["by_event"]["rows"][0]["events"] == 4
    assert data["charts"]["active_users_5m"]["rows"][0]["active_users_5m"] == pytest.approx(2, abs=0.1)
    assert "consumer_lag" in data["charts"] and "watermark_delay" in data["charts"]


def test_a_disconnect_ends_the_live_stream(server):
    """In-process ASGI: after the first event the client goes away; the response (and its
    generator) must finish instead of ticking forever."""
    _, home, tokens = server
    app = create_dashboard(home)
    sent: list[dict] = []
    first = asyncio.Event()

    async def receive():
        await first.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and b"event: live" in message.get("body", b""):
            first.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/pages/live/events", "raw_path": b"/pages/live/events", "root_path": "", "query_string": b"",
             "headers": [(b"authorization", f"Bearer {tokens['viewer']}".encode())], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=10))
    assert sent[0]["status"] == 200 and first.is_set()


def test_daily_pages_render_on_an_empty_lake(tmp_path):
    home = Home(tmp_path / "empty")
    home.root.mkdir()
    _, token = TokenStore(home).add(Role.VIEWER)
    with start_collector(home.root) as c, httpx.Client(base_url=c.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
        for page in pages.defaults():
            r = http.get(f"/dashboard/pages/{page.id}")
            assert r.status_code == 200, (page.id, r.text)
            assert 'class="error"' not in r.text, page.id
        assert "No data yet" in http.get("/dashboard/pages/retention").text
        assert rows_of(http.get("/dashboard/pages/active_users/charts/total.csv").text) == []


def test_a_property_filter_is_passed_to_the_api_metrics(server):
    _, home, _ = server
    viewer = Principal("v", Role.VIEWER)
    answer = sources.METRICS["sessions"].fetch(home, viewer, sources.Controls(D1, D2, "web", ("properties.plan:pro",)))
    assert answer["where"] == ["properties.plan:pro"] and answer["source"] == "silver.events" and answer["platform"] == "web"
    with client(server) as http:
        r = http.get("/dashboard/pages/sessions/charts/count.csv", params={"where": "plan=pro"})
        assert r.status_code == 400 and r.json()["message"].startswith("where: expected")
        page = http.get("/dashboard/pages/sessions", params=[("where", "properties.plan:pro"), ("where", "context.os.name:iOS")]).text
        assert "where=properties.plan%3Apro&amp;where=context.os.name%3AiOS" in page  # the CSV links keep both
        quality = http.get("/dashboard/pages/quality", params={"where": "properties.plan:pro"}).text
        assert 'name="where"' not in quality and "not filtered (this metric takes no property filter)" in quality
