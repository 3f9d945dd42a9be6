"""gold.sessions_daily is gold.sessions aggregated per ds x entry platform, exactly: hand-made
sessions with known lengths (an even count per day and platform, so the median is the
halfway value of two sessions, not a median of medians), one-event sessions (bounces), a
person with two sessions, a session running past midnight (counted on its start day)."""

from __future__ import annotations

import datetime as dt

import pytest

from headwater.config import Home
from headwater.models.run import build
from tests.models.bronze import UTC, event, rows, write

D1, D2 = dt.date(2024, 5, 1), dt.date(2024, 5, 2)


def at(day: dt.date, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute, second), UTC)


def session(prefix: str, user: str, start: dt.datetime, seconds: list[int], platform: str = "web") -> list[dict]:
    """One session of ``user``: events at ``start`` + each offset (all within 30 minutes)."""
    return [event(f"{prefix}{i}", start + dt.timedelta(seconds=s), user=user, anon=None, platform=platform)
            for i, s in enumerate([0, *seconds])]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("sessions_daily"))
    write(home, [
        # D1 web: sessions of 0 (bounce), 61, 120, 300 and 900.5 s; u1 twice (two sessions, 2 h apart)
        *session("a", "u1", at(D1, 9), []),
        *session("b", "u1", at(D1, 11), [30, 61]),
        *session("c", "u2", at(D1, 10), [120]),
        *[{**e, "event_ts": e["event_ts"] + dt.timedelta(microseconds=500_000) if e["event_id"] == "d2" else e["event_ts"]}
          for e in session("d", "u3", at(D1, 12), [600, 900])],
        *session("i", "u7", at(D1, 16), [300]),
        # D1 ios: one bounce, one of 45 s
        *session("e", "u4", at(D1, 8), [], platform="ios"),
        *session("f", "u5", at(D1, 14), [45], platform="ios"),
        # a web session starting D1 23:50 and ending D2 00:10 (1,200 s): D1's
        *session("g", "u6", at(D1, 23, 50), [600, 1200]),
        # D2 web: a single session of 10 s
        *session("h", "u2", at(D2, 7), [10]),
    ])
    build(home, D1, D2)
    return home


def test_a_daily_row_per_ds_and_entry_platform_with_exact_medians(home):
    got = rows(home, "SELECT * FROM gold.sessions_daily ORDER BY ds, platform")
    assert got == [
        {"platform": "ios", "sessions": 2, "median_duration_s": 22.5, "bounce_rate": 0.5, "persons": 2, "ds": D1},
        # 0, 61, 120 | 300, 900.5, 1200: halfway between 120 and 300; u1's two sessions count once in persons
        {"platform": "web", "sessions": 6, "median_duration_s": 210.0, "bounce_rate": 1 / 6, "persons": 5, "ds": D1},
        {"platform": "web", "sessions": 1, "median_duration_s": 10.0, "bounce_rate": 0.0, "persons": 1, "ds": D2},
    ]


def test_equal_to_aggregating_gold_sessions(home):
    daily = rows(home, "SELECT ds, platform, sessions, median_duration_s, bounce_rate, persons FROM gold.sessions_daily "
                       "ORDER BY ds, platform")
    direct = rows(home, "SELECT ds, platform, count(*) AS sessions, median(duration_seconds) AS median_duration_s, "
                        "avg(CASE WHEN events = 1 THEN 1.0 ELSE 0.0 END) AS bounce_rate, count(DISTINCT person_id) AS persons "
                        "FROM gold.sessions GROUP BY ds, platform ORDER BY ds, platform")
    assert daily == [{**r, "median_duration_s": pytest.approx(r["median_duration_s"], rel=1e-12),
                      "bounce_rate": pytest.approx(r["bounce_rate"], rel=1e-12)} for r in direct]
