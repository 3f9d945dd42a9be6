"""The realtime watch (what it stores, when it alerts) and the latest failing checks, on a real
lake, a real SQLite log and a real webhook server."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from headwater.config import Home
from headwater.events import EVENTS_TOPIC, STREAM_GROUP
from headwater.lake.store import Lake
from headwater.log import open_log
from headwater.quality import alerts
from headwater.settings import load as load_settings
from tests.helpers import query
from tests.quality.test_quality import NOON, events, logged
from tests.quality.webhook import Hook, serve_webhook


def test_watch_realtime_stores_on_change_or_every_ten_minutes_and_alerts_when_a_table_starts_failing(tmp_path):
    with serve_webhook() as url:
        home = Home(tmp_path, load_settings(home=tmp_path, **{"quality.webhook_url": url}))
        lake = Lake.of(home)
        lake.append("realtime.counts", pa.table({"n": [1]}))
        t0 = dt.datetime.now(dt.timezone.utc)
        logged(home, events("e", 2, NOON), consumed=False)  # waiting since ~t0

        def at(s: float, state: alerts.Watch) -> tuple[alerts.Report, alerts.Watch]:
            return alerts.watch_realtime(home, state, t0 + dt.timedelta(seconds=s))

        r, s1 = at(30, alerts.Watch())  # within the 60 s SLA; first run: stored
        assert s1 == alerts.Watch((), (t0 + dt.timedelta(seconds=30)).timestamp()) and r.webhook is None
        r, s2 = at(45, s1)  # nothing changed, not due: not stored
        assert s2 == s1
        r, s3 = at(90, s2)  # starts failing: stored and alerted
        assert s3.failing == ("realtime.counts",) and r.webhook == "sent"
        assert alerts.failing(lake) == {"freshness_realtime": 1}
        r, s4 = at(150, s3)  # still failing: neither stored nor alerted again
        assert s4 == s3 and r.webhook is None
        log = open_log(home.settings.log_url)
        try:
            log.commit(STREAM_GROUP, EVENTS_TOPIC, log.end_offsets(EVENTS_TOPIC))  # the stream catches up
        finally:
            log.close()
        r, s5 = at(160, s4)  # recovered: stored, no alert
        assert s5.failing == () and r.webhook is None
        assert alerts.failing(lake) == {}
        r, s6 = at(160 + alerts.RECORD_EVERY_S, s5)  # due again
        assert s6.recorded_at > s5.recorded_at
    assert len(Hook.received) == 1 and Hook.received[0]["failed"] == 1
    stored = query(home, "SELECT checked_at, status FROM quality.results ORDER BY checked_at").to_pylist()
    assert [(round((r["checked_at"] - t0).total_seconds()), r["status"]) for r in stored] == [
        (30, "pass"), (90, "fail"), (160, "pass"), (160 + alerts.RECORD_EVERY_S, "pass")]


def test_failing_is_the_latest_run_of_each_check(tmp_path):
    home = Home(tmp_path)
    lake = Lake.of(home)
    t = dt.datetime(2024, 5, 16, 6, tzinfo=dt.timezone.utc)
    assert alerts.failing(lake) == {}

    def result(check: str, status: str, hour: int | None = None) -> alerts.Result:
        return alerts.Result(check, "bronze.events", status, "m", hour=hour and t.replace(hour=hour))

    alerts.record(lake, [result("completeness_bronze", "fail", 1), result("completeness_bronze", "fail", 2),
                         result("bad_row_rate", "fail")], t)
    assert alerts.failing(lake) == {"bad_row_rate": 1, "completeness_bronze": 2}
    alerts.record(lake, [result("completeness_bronze", "pass", 1), result("completeness_bronze", "pass", 2)], t + dt.timedelta(days=1))
    assert alerts.failing(lake) == {"bad_row_rate": 1}
    rows = alerts.latest(lake).to_pylist()
    assert [(r["check_name"], r["status"], r["checked_at"]) for r in rows] == [
        ("bad_row_rate", "fail", t), ("completeness_bronze", "pass", t + dt.timedelta(days=1)),
        ("completeness_bronze", "pass", t + dt.timedelta(days=1))]
