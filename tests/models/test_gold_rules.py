"""Gold models' edge rules on hand-made events: sessions across midnight, funnel order,
window and time to convert, retention cells (day, week and calendar-month cohorts), and the
models configuration's errors."""

from __future__ import annotations

import datetime as dt

import pytest

from headwater.config import Home
from headwater.models import config as model_config
from headwater.models.run import build, run_model
from tests.models.bronze import MODEL, T0, event, rows, write

M = dt.timedelta(minutes=1)
MIDNIGHT = dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc)
FUNNEL = """
[[funnels]]
name = "f"
window_hours = 2
steps = ["view", "cart", "buy"]
"""


def test_a_session_crossing_midnight_belongs_to_its_start_day(tmp_path):
    home = Home(tmp_path)
    write(home, [
        event("a", MIDNIGHT - 10 * M, event_name="home", platform="ios"),
        event("b", MIDNIGHT + 10 * M, event_name="search", platform="web"),
        event("c", MIDNIGHT + 40 * M + M, event_name="cart"),  # 31 minutes later: a new session
        event("d", MIDNIGHT + 71 * M, event_name="buy"),  # exactly 30 minutes: same session
    ])
    day0, day1 = MIDNIGHT.date() - dt.timedelta(days=1), MIDNIGHT.date()
    build(home, day1, day1)  # the day after first: its first event continues day0's session
    # (day0's partition is built too: gold.conversions reads the sessions of the day before)
    day1_sessions = rows(home, "SELECT session_start, events FROM gold.sessions WHERE ds = $d", {"d": day1})
    assert day1_sessions == [{"session_start": MIDNIGHT + 41 * M, "events": 2}]
    build(home, day0, day0)
    got = rows(home, "SELECT * EXCLUDE (session_id) FROM gold.sessions ORDER BY session_start")
    assert got == [
        {"person_id": "u1", "session_start": MIDNIGHT - 10 * M, "session_end": MIDNIGHT + 10 * M, "duration_seconds": 1200.0,
         "events": 2, "entry_event": "home", "exit_event": "search", "platform": "ios", "ds": day0},
        {"person_id": "u1", "session_start": MIDNIGHT + 41 * M, "session_end": MIDNIGHT + 71 * M, "duration_seconds": 1800.0,
         "events": 2, "entry_event": "cart", "exit_event": "buy", "platform": "web", "ds": day1},
    ]


def test_funnel_steps_count_in_strict_order_within_the_window(tmp_path):
    home = Home(tmp_path)
    (tmp_path / "models.toml").write_text(FUNNEL)
    late = MIDNIGHT - 30 * M
    write(home, [
        # p1: full funnel across midnight, within 2 h of the entry: counted on the entry's day
        event("1a", late, user="p1", event_name="view"), event("1b", late + 20 * M, user="p1", event_name="cart"),
        event("1c", late + 100 * M, user="p1", event_name="buy"),
        # p2: cart before view, then buy: reaches only step 1 (order), buy needs a cart after the view
        event("2a", late + M, user="p2", event_name="cart"), event("2b", late + 2 * M, user="p2", event_name="view"),
        event("2c", late + 3 * M, user="p2", event_name="buy"),
        # p3: cart at the same instant as the view is not after it; the buy comes too late (> 2 h)
        event("3a", late, user="p3", event_name="view", platform="ios"), event("3b", late, user="p3", event_name="cart"),
        event("3c", late + 5 * M, user="p3", event_name="cart"), event("3d", late + 121 * M, user="p3", event_name="buy"),
        # p4: a second, later entry converts although the first did not
        event("4a", late - 200 * M, user="p4", event_name="view"), event("4b", late + 5 * M, user="p4", event_name="view"),
        event("4c", late + 6 * M, user="p4", event_name="cart"), event("4d", late + 7 * M, user="p4", event_name="buy"),
        # p5: two entries reach the cart; the time to convert is the earliest entry's
        event("5a", late - 100 * M, user="p5", event_name="view"), event("5b", late - 90 * M, user="p5", event_name="view"),
        event("5c", late - 70 * M, user="p5", event_name="cart"),
    ])
    day = late.date()
    for table in ("silver.identity_links", "silver.identity_map"):
        run_model(home, MODEL[table], day, day)
    run_model(home, MODEL["silver.events"], day, MIDNIGHT.date())
    run_model(home, MODEL["gold.funnels"], day, day)
    got = {(r["platform"], r["step"]): (r["entered"], r["users"], r["median_seconds_to_convert"])
           for r in rows(home, "SELECT * FROM gold.funnels")}
    assert got == {
        # p1, p2, p4, p5 enter; p1 (cart after 1200 s), p4 (60 s) and p5 (1800 s) reach the cart,
        # p1 (6000 s) and p4 (120 s) buy: medians of 3 and of 2 values
        ("web", 1): (4, 4, None), ("web", 2): (4, 3, 1200.0), ("web", 3): (4, 2, 3060.0),
        ("ios", 1): (1, 1, None), ("ios", 2): (1, 1, 300.0), ("ios", 3): (1, 0, None),  # p3: no buyer, no median
    }
    assert rows(home, "SELECT DISTINCT ds, funnel, step_name FROM gold.funnels WHERE step = 3") == [{"ds": day, "funnel": "f", "step_name": "buy"}]


def test_retention_cells(tmp_path):
    home = Home(tmp_path)
    mon = dt.datetime(2024, 4, 29, 12, tzinfo=dt.timezone.utc)  # a Monday
    dd = dt.timedelta(days=1)
    write(home, [
        event("a0", mon, user="a"), event("a1", mon + dd, user="a"), event("a7", mon + 7 * dd, user="a"),
        event("b2", mon + 2 * dd, user="b"), event("b9", mon + 9 * dd, user="b"),
        event("c9", mon + 9 * dd, user="c"),  # last day of data: Wednesday of week 1
    ])
    build(home)
    day = {(r["cohort_start"], r["period"]): (r["cohort_size"], r["active_users"])
           for r in rows(home, "SELECT * FROM gold.retention WHERE cohort_grain = 'day'")}
    assert day[(mon.date(), 0)] == (1, 1) and day[(mon.date(), 1)] == (1, 1) and day[(mon.date(), 2)] == (1, 0)
    assert day[(mon.date(), 7)] == (1, 1) and day[(mon.date(), 9)] == (1, 0)
    assert (mon.date(), 10) not in day  # after the last day of data: no cell yet
    assert day[((mon + 2 * dd).date(), 7)] == (1, 1) and ((mon + 2 * dd).date(), 8) not in day
    week = {(r["ds"], r["period"]): (r["cohort_size"], r["active_users"], r["retention"])
            for r in rows(home, "SELECT * FROM gold.retention WHERE cohort_grain = 'week'")}
    # the week cohort of Mon 29 Apr (a, b) is keyed by its Sunday; week 1 is not complete yet
    assert week == {((mon + 6 * dd).date(), 0): (2, 2, 1.0)}
    month = {(r["ds"], r["cohort_start"], r["period"]): (r["cohort_size"], r["active_users"])
             for r in rows(home, "SELECT * FROM gold.retention WHERE cohort_grain = 'month'")}
    # April's cohort (a) is keyed by Apr 30; May is not over; May's cohort (b, c) ends after the data
    assert month == {(dt.date(2024, 4, 30), dt.date(2024, 4, 1), 0): (1, 1)}


def test_month_cohorts_follow_calendar_months_for_a_year(tmp_path):
    home = Home(tmp_path)
    day = lambda y, m, d: dt.datetime(y, m, d, 12, tzinfo=dt.timezone.utc)  # noqa: E731
    write(home, [
        # a: first active on Jan 31, back the next day (month 1), in March (2), a year on (12)
        # and in February 2025 (13: past the horizon, not a period)
        event("a0", day(2024, 1, 31), user="a"), event("a1", day(2024, 2, 1), user="a"),
        event("a2", day(2024, 3, 31), user="a"), event("a12", day(2025, 1, 15), user="a"),
        event("a13", day(2025, 2, 27), user="a"),  # the last day of data: February 2025 is not over
        event("b0", day(2024, 1, 2), user="b"), event("b1", day(2024, 2, 29), user="b"),
        event("c0", day(2024, 2, 29), user="c"),  # February's cohort, keyed by the leap day
    ])
    build(home)
    got = {(r["cohort_start"], r["period"]): (r["ds"], r["cohort_size"], r["active_users"], r["retention"])
           for r in rows(home, "SELECT * FROM gold.retention WHERE cohort_grain = 'month'")}
    jan, feb = dt.date(2024, 1, 1), dt.date(2024, 2, 1)
    active = {0: 2, 1: 2, 2: 1, 12: 1}
    assert {p: got[(jan, p)] for p in range(13)} == {
        p: (dt.date(2024, 1, 31), 2, active.get(p, 0), active.get(p, 0) / 2) for p in range(13)}
    # February 2025 (month 12 of February's cohort) is not over: no cell yet
    assert {p: got[(feb, p)] for p in range(12)} == {p: (dt.date(2024, 2, 29), 1, int(p == 0), float(p == 0)) for p in range(12)}
    assert set(got) == {(jan, p) for p in range(13)} | {(feb, p) for p in range(12)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[funnels]]\nname = 'x'\nsteps = ['a']\n", r"funnels\[0\]\.steps: needs at least 2"),
        ("[[funnels]]\nname = 'x'\nwindow_hours = 200\nsteps = ['a', 'b']\n", r"funnels\[0\]\.window_hours: must be in \(0, 168\]"),
        ("[[funnels]]\nname = 'x'\nsteps = ['a', 'b']\n[[funnels]]\nname = 'x'\nsteps = ['a', 'b']\n", r"funnels\[\]\.name: must be unique"),
        ("[[experiments]]\nid = 'e'\nvariants = ['a', 'b']\nweights = [1]\nconversion_event = 'c'\n", r"experiments\[0\]\.weights: needs one positive weight"),
        ("[[experiments]]\nid = 'e'\nvariants = ['a', 'b']\ncontrol = 'z'\nconversion_event = 'c'\n", r"experiments\[0\]\.control: 'z' is not one of"),
        ("[[experiments]]\nid = 'e'\nvariants = ['a', 'b']\n", r"experiments\[0\]\.conversion_event: expected str"),
        ("[identity]\nmerge_identified_users = 'yes'\n", r"identity\.merge_identified_users: expected bool"),
        ("[identity]\nstitch_lookback_days = -1\n", r"identity\.stitch_lookback_days: must be in \[0, 3650\] days, got -1"),
        ("[identity]\nstitch_lookback_days = 7.5\n", r"identity\.stitch_lookback_days: expected int"),
        ("[dim_user]\ntracked_traits = [1]\n", r"dim_user\.tracked_traits\[0\]: expected str"),
        ("[[funnels]\n", r"not valid TOML"),
    ],
)
def test_a_bad_config_names_the_field_and_the_rule(tmp_path, text, message):
    (tmp_path / "models.toml").write_text(text)
    with pytest.raises(model_config.ConfigError, match=message) as err:
        model_config.load(Home(tmp_path))
    assert "models.toml" in str(err.value)
    # and a build fails before writing anything of the model that needs it
    write(Home(tmp_path), [event("a", T0)])
    with pytest.raises(model_config.ConfigError):
        build(Home(tmp_path))


def test_rendering_inlines_the_config_as_values(tmp_path):
    (tmp_path / "models.toml").write_text(FUNNEL + "[dim_user]\ntracked_traits = [\"it's\"]\n")
    home = Home(tmp_path)
    sql = MODEL["gold.funnels"].sql(home)
    assert "(VALUES ('f', 1, 'view', INTERVAL 7200 SECOND), ('f', 2, 'cart', INTERVAL 7200 SECOND)" in sql
    assert sql.count("step_3 AS (") == 1 and "step_4" not in sql
    assert "('it''s')" in MODEL["silver.dim_user"].sql(home)
    # nothing configured: typed empty tables, the SQL still runs
    assert "(SELECT CAST(NULL AS VARCHAR) AS experiment_id" in MODEL["gold.experiments"].sql(home)
