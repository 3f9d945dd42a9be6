"""``headwater batch`` without a range builds only the days that hold data: a year-2100
outlier in bronze must not make the gold models generate a row per day for 27,000 days."""

from __future__ import annotations

import datetime as dt

from headwater.config import Home
from headwater.models.run import build, data_spans
from tests.models.bronze import T0, event, rows, write

D = dt.timedelta(days=1)
Y2100 = dt.datetime(2100, 1, 1, 12, tzinfo=dt.timezone.utc)


def test_data_spans_group_days_less_than_a_gap_apart_and_respect_the_bounds():
    d = T0.date()
    days = [d, d + D, d + 5 * D, d + 40 * D, Y2100.date()]
    assert data_spans(days, None, None, 28) == [(d, d + 5 * D), (d + 40 * D, d + 40 * D), (Y2100.date(), Y2100.date())]
    assert data_spans(days, d + D, d + 40 * D, 28) == [(d + D, d + 5 * D), (d + 40 * D, d + 40 * D)]
    assert data_spans(days, None, None, 100) == [(d, d + 40 * D), (Y2100.date(), Y2100.date())]
    assert data_spans([], None, None, 28) == []


def test_batch_without_a_range_skips_the_decades_between_data_and_an_outlier(tmp_path):
    home = Home(tmp_path)
    write(home, [
        event("a", T0, user="u1"),
        event("b", T0 + 2 * D, user="u2"),  # a quiet day between: still built (zero row)
        event("future", Y2100, user="u3"),  # stored before the collector clamped far-future times
    ])
    written = build(home)
    days = [r["ds"] for r in rows(home, "SELECT ds FROM gold.active_users ORDER BY ds")]
    assert days == [T0.date(), T0.date() + D, T0.date() + 2 * D, Y2100.date()]
    assert written["gold.active_users"] == 4
    by_day = {r["ds"]: r["dau"] for r in rows(home, "SELECT ds, dau FROM gold.active_users")}
    assert by_day == {T0.date(): 1, T0.date() + D: 0, T0.date() + 2 * D: 1, Y2100.date(): 1}
    assert len(rows(home, "SELECT DISTINCT ds FROM gold.active_users_by_platform")) <= 4


def test_an_explicit_range_is_built_as_asked(tmp_path):
    home = Home(tmp_path)
    write(home, [event("a", T0, user="u1"), event("future", Y2100, user="u3")])
    build(home, T0.date(), T0.date() + 3 * D)
    days = [r["ds"] for r in rows(home, "SELECT ds FROM gold.active_users ORDER BY ds")]
    assert days == [T0.date() + i * D for i in range(4)]
