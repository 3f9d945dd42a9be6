"""End to end in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright) logs in to the dashboard of a real server.

- Live page, on a running platform (collector + stream processor as child processes, as
  ``headwater up`` runs them): events POSTed to the collector reach the realtime tables and
  the page's per-minute count grows, updated over server-sent events, without a reload.
- Daily pages, on a home with gold built from generated events (14 days, an experiment):
  every page draws its charts, and the retention heatmap, the funnel bars and the
  experiment's intervals hold exactly the values ``/api`` returns for the same range.

Screenshots of every page go to ``$HEADWATER_TEST_ARTIFACTS/dashboard/`` (default: the
pytest temporary directory, ``…/pytest-of-<user>/pytest-<n>/artifacts0/dashboard/``).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import httpx
import pytest

from headwater.config import Home
from headwater.demo.generate import EXPERIMENT, MODELS_TOML, write_day
from headwater.lake.store import Lake
from headwater.models.run import build
from headwater.quality import alerts
from headwater.quality.checks import Result
from headwater.runtime import Platform, free_port
from headwater.serve.access import Role, TokenStore
from headwater.serve.dashboard import pages
from tests.helpers import start_collector

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIRST_DAY, DAYS = dt.date(2024, 3, 1), 14
LAST_DAY = FIRST_DAY + dt.timedelta(days=DAYS - 1)
RANGE = {"start": str(FIRST_DAY), "end": str(LAST_DAY)}

pytestmark = [pytest.mark.slow,  # ~45 s: a platform, a gold build and a browser
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (Debian package `chromium`)")]
sync_api = pytest.importorskip("playwright.sync_api")

# The ECharts option a card draws: axes' categories and every series' data.
OPTION_JS = """key => {
  const chart = echarts.getInstanceByDom(document.querySelector(`[data-key="${key}"] .chart`));
  const o = chart.getOption();
  return {x: o.xAxis[0].data, y: o.yAxis[0].data, series: o.series.map(s => ({name: s.name, type: s.type, data: s.data}))};
}"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    root = os.environ.get("HEADWATER_TEST_ARTIFACTS")
    out = (Path(root) if root else tmp_path_factory.mktemp("artifacts")) / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


def open_page(browser, url: str, token: str):
    """A browser tab logged in through the login form (the session cookie)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url + "/dashboard/pages/live")
    assert "/dashboard/login" in page.url
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/pages/live")
    page.js_errors = errors
    return page


def send(url: str, write_key: str, n: int, event: str, device: str) -> None:
    batch = [{"type": "track", "event": event, "userId": f"user-{i % 7}", "messageId": str(uuid.uuid4()),
              "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(), "context": {"device": {"type": device}}} for i in range(n)]
    r = httpx.post(url + "/v1/batch", json={"writeKey": write_key, "batch": batch}, timeout=30)
    assert r.status_code == 200, r.text


def test_the_live_page_count_grows_without_a_reload(tmp_path, browser, artifacts):
    home = Home(tmp_path / "home")
    home.root.mkdir()
    (home.root / "headwater.toml").write_text("[stream]\ntrigger_interval_s = 0.2\n")
    write_key = home.add_source("web")
    _, token = TokenStore(home).add(Role.VIEWER)
    platform = Platform(home, free_port()).start()
    try:
        page = open_page(browser, platform.url, token)
        page.wait_for_function("() => window.headwater.updates > 0")  # the event stream is open
        page.evaluate("() => { window.notReloaded = true; }")
        total = '[data-stat="events_in_window"]'
        assert page.get_attribute(total, "data-value") in ("", "0")

        send(platform.url, write_key, 25, "Product Viewed", "web")
        page.wait_for_function(f"() => Number(document.querySelector('{total}').dataset.value) >= 25", timeout=30_000)
        updates = page.evaluate("() => window.headwater.updates")
        send(platform.url, write_key, 15, "Order Completed", "ios")
        page.wait_for_function(f"() => Number(document.querySelector('{total}').dataset.value) >= 40", timeout=30_000)

        assert page.evaluate("() => window.notReloaded") is True  # same document: updated in place
        assert page.evaluate("() => window.headwater.updates") > updates
        assert int(page.get_attribute(total, "data-value")) == 40
        by_event = page.evaluate(OPTION_JS, "by_event")
        assert {s["name"] for s in by_event["series"]} == {"Product Viewed", "Order Completed"}
        by_platform = page.evaluate(OPTION_JS, "by_platform")
        assert {s["name"]: sum(v or 0 for v in s["data"]) for s in by_platform["series"]} == {"web": 25, "ios": 15}
        assert float(page.get_attribute('[data-stat="active_users_5m"]', "data-value")) == pytest.approx(7, abs=0.5)
        assert page.get_attribute('[data-stat="lag_events"]', "data-value") == "0"
        assert page.js_errors == []
        page.screenshot(path=str(artifacts / "live.png"), full_page=True)
        page.close()
    finally:
        platform.stop()


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """A server over gold built from generated events, with one run of quality results."""
    home = Home(tmp_path_factory.mktemp("daily") / "home")
    home.root.mkdir(parents=True)
    (home.root / "models.toml").write_text(MODELS_TOML)
    for i in range(DAYS):
        write_day(home, 2000, FIRST_DAY + dt.timedelta(days=i), seed=i, users=300)
    build(home)
    now = dt.datetime(2024, 3, 15, 6, tzinfo=dt.timezone.utc)
    alerts.record(Lake.of(home), [Result("volume", "silver.events", "pass", "purchase: in range", subject="purchase", ds=LAST_DAY),
                                  Result("freshness_gold", "gold.active_users", "fail", "not ready by 06:00", ds=LAST_DAY, blocking=True)], now)
    _, token = TokenStore(home).add(Role.VIEWER)
    with start_collector(home.root, write_key=None) as c:
        yield c.url, token


def api(url: str, token: str, path: str, **params) -> list[dict]:
    r = httpx.get(f"{url}/api{path}", params=params, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["rows"]


def test_every_daily_page_draws_the_values_the_api_returns(daily, browser, artifacts):
    url, token = daily
    page = open_page(browser, url, token)
    for declared in pages.defaults():
        if declared.kind == "live":
            continue
        page.goto(f"{url}/dashboard/pages/{declared.id}?start={RANGE['start']}&end={RANGE['end']}")
        drawn = page.evaluate("() => Object.entries(window.headwater.charts).map(([k, c]) => [k, c.spec.kind, c.rows.length, !!c.chart])")
        assert drawn, declared.id
        for key, kind, rows, chart in drawn:  # every chart with rows is an ECharts instance (tables and stats are HTML)
            assert chart == (rows > 0 and kind not in ("table", "stat")), (declared.id, key)
        page.wait_for_timeout(800)  # let the charts' entry animation finish for the screenshot
        page.screenshot(path=str(artifacts / f"{declared.id}.png"), full_page=True)

        if declared.id == "retention":
            option = page.evaluate(OPTION_JS, "daily_cohorts")
            cells = {(option["x"][x], option["y"][y], v) for x, y, v in option["series"][0]["data"]}
            want = {(str(r["period"]), r["cohort_start"], r["retention"]) for r in api(url, token, "/metrics/retention", grain="day", **RANGE)}
            assert cells == want and len(want) > 20
        if declared.id == "funnels":
            option = page.evaluate(OPTION_JS, "steps~checkout")
            users: dict[str, int] = {}
            for r in api(url, token, "/metrics/funnels/checkout", **RANGE):
                users[r["step_name"]] = users.get(r["step_name"], 0) + r["users"]
            assert dict(zip(option["x"], option["series"][0]["data"])) == users and len(users) >= 3
        if declared.id == "experiments":
            option = page.evaluate(OPTION_JS, f"lift~{EXPERIMENT}")
            rows = api(url, token, f"/metrics/experiments/{EXPERIMENT}", **RANGE)
            last = [r for r in rows if r["ds"] == max(r["ds"] for r in rows)]
            assert option["x"] == [r["variant"] for r in last] == ["control", "treatment"]
            points = next(s for s in option["series"] if s["type"] == "scatter")["data"]
            bars = next(s for s in option["series"] if s["type"] == "custom")["data"]
            assert points == [r["lift_rel"] for r in last]
            assert [b[1:] for b in bars] == [[r["lift_rel_ci_low"], r["lift_rel_ci_high"]] for r in last]
            assert last[1]["lift_rel_ci_low"] < last[1]["lift_rel"] < last[1]["lift_rel_ci_high"]
        if declared.id == "quality":
            assert page.get_attribute('[data-stat="failed"]', "data-value") == "1"
            assert "not ready by 06:00" in page.inner_text('[data-key="last_run"]')
    assert page.js_errors == []
    page.close()
