"""What a change on day d restates, per model (pure functions over the real MODELS), and how
the changed days are read off a real Delta table's log."""

import datetime as dt

import pyarrow as pa

from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.models.dag import MODELS
from headwater.orchestrate.late_data import ALWAYS, Restatement, changed_days, restatement, runs, stale_readers

D = dt.date(2024, 5, 10)  # D - 366 and D + 27 are both inside BUILT
BUILT = (dt.date(2023, 1, 1), dt.date(2024, 6, 30))
BY_TABLE = {m.table: m for m in MODELS}


def days(first, last) -> set:
    return {first + dt.timedelta(days=i) for i in range((last - first).days + 1)}


def built_all() -> dict:
    return {m.table: BUILT if m.partitioned else ALWAYS for m in MODELS}


def test_a_late_day_restates_trailing_windows_forward_and_cohorts_backward():
    plan = restatement(MODELS, {"bronze.events": {D}}, built_all(), deferred=frozenset({"silver.identity_map"}))
    assert plan.days["silver.events"] == {D}
    assert plan.days["gold.events_hourly"] == {D}
    # the cumulative states carry D into every later day, and so do DAU/WAU/MAU read from them
    assert plan.days["silver.person_platform_state"] == days(D, BUILT[1])
    assert plan.days["gold.active_users"] == days(D, BUILT[1])
    assert plan.days["gold.active_users_by_platform"] == days(D, BUILT[1])
    # sessions may span midnight: the day before and after too
    assert plan.days["gold.sessions"] == days(D - dt.timedelta(days=1), D + dt.timedelta(days=1))
    # retention reads the state 366 days ahead (month 12 of a month cohort), and the state
    # carries D to every later day: cohorts D-366 .. every later one
    lo, hi = BY_TABLE["gold.retention"].affected_days
    assert plan.days["gold.retention"] == days(D + dt.timedelta(days=lo), BUILT[1]) and hi == 0
    # the unpartitioned models are rebuilt whole; identity's effect on silver is deferred
    assert plan.whole == ["silver.identity_links", "silver.identity_map", "silver.identity_refused", "silver.dim_user",
                          "silver.dim_device", "silver.dim_experiment"]


def test_restatement_is_clipped_to_what_is_built():
    built = built_all() | {"gold.active_users": (dt.date(2024, 1, 1), D + dt.timedelta(days=3)), "gold.funnels": None}
    plan = restatement(MODELS, {"bronze.events": {D}}, built, deferred=frozenset({"silver.identity_map"}))
    assert plan.days["gold.active_users"] == days(D, D + dt.timedelta(days=3))
    assert "gold.funnels" not in plan.days
    # a change on a day nothing was built for restates nothing partitioned
    early = restatement(MODELS, {"bronze.events": {dt.date(2022, 5, 1)}}, built_all(), deferred=frozenset({"silver.identity_map"}))
    assert early.days.keys() <= {"gold.retention", "gold.experiments"} and "silver.events" not in early.days


def test_an_identity_change_without_deferral_restates_every_built_silver_day():
    plan = restatement(MODELS, {"bronze.events": {D}}, built_all())
    assert plan.days["silver.events"] == days(*BUILT)


def test_stale_seeds_restate_those_days_and_their_downstream():
    plan = restatement(MODELS, {}, built_all(), seeds={"silver.events": {D, dt.date(2025, 1, 1)}})
    assert plan.days["silver.events"] == {D}  # clipped to what is built
    assert plan.days["gold.active_users"] == days(D, BUILT[1])
    # a stale state day restates every later state day
    later = restatement(MODELS, {}, built_all(), seeds={"silver.person_state": {D}})
    assert later.days["silver.person_state"] == later.days["gold.retention"] - days(BUILT[0], D - dt.timedelta(days=1)) == days(D, BUILT[1])
    assert plan.whole == ["silver.dim_user", "silver.dim_device", "silver.dim_experiment"]  # the dimensions read silver.events


def test_runs_group_contiguous_days_and_keep_dependency_order():
    plan = Restatement(
        days={"silver.events": {D, D + dt.timedelta(days=40)}, "gold.events_hourly": days(D, D + dt.timedelta(days=2))},
        whole=["silver.identity_map"],
    )
    assert runs(plan, MODELS) == [
        (D, D + dt.timedelta(days=2), ["silver.identity_map", "silver.events", "gold.events_hourly"]),
        (D + dt.timedelta(days=40), D + dt.timedelta(days=40), ["silver.events"]),
    ]
    assert runs(Restatement(whole=["silver.dim_user"]), MODELS) == [(None, None, ["silver.dim_user"])]
    assert runs(Restatement(), MODELS) == []


def test_changed_days_reads_new_files_off_the_delta_log(home):
    lake = Lake.of(home)

    def event(ds, i):
        ts = dt.datetime.combine(ds, dt.time(8), tzinfo=dt.timezone.utc)
        return {"event_id": f"e{ds}{i}", "event_type": "track", "event_name": "x", "anonymous_id": None,
                "user_id": "u", "event_ts": ts, "received_at": ts, "source": "t", "surface": None, "platform": "web",
                "properties": "{}", "context": "{}", "schema_version": "1", "ds": ds}

    def append(batch, ds_list):
        lake.append_once("bronze.events", pa.Table.from_pylist([event(ds, i) for i, ds in enumerate(ds_list)], schema=EVENT_SCHEMA),
                         app_id="t", batch_id=batch)

    append(0, [D, D + dt.timedelta(days=1)])
    assert changed_days(lake, "bronze.events", None) == (0, {D, D + dt.timedelta(days=1)})
    append(1, [D - dt.timedelta(days=5)])
    assert changed_days(lake, "bronze.events", 0) == (1, {D - dt.timedelta(days=5)})
    assert changed_days(lake, "bronze.events", 1) == (1, set())
    # a rewrite that empties a partition adds no rows: nothing changed by it
    lake.overwrite_partitions("bronze.events", pa.Table.from_pylist([], schema=EVENT_SCHEMA), D, D)
    assert changed_days(lake, "bronze.events", 1) == (2, set())


def test_a_new_day_makes_the_readers_that_look_ahead_stale():
    """The daily run built day N (silver, the states and gold for N only): retention cohorts
    (from the state of N), sessions and funnels of earlier days read N too and are stale; a
    trailing window is not; a state day materialised after later ones makes those stale."""
    n = BUILT[1]
    earlier = {d: 10 for d in days(*BUILT)}  # every partition built at storage id 10
    latest = {m.table: dict(earlier) | {n: 30} for m in MODELS if m.partitioned}
    stale = stale_readers(MODELS, {"silver.events": {n: 20}, "silver.person_state": {n: 21}}, latest, built_all())
    assert stale["gold.sessions"] == {n - dt.timedelta(days=1)}
    assert stale["gold.retention"] == days(n + dt.timedelta(days=BY_TABLE["gold.retention"].affected_days[0]), n - dt.timedelta(days=1))
    lo = BY_TABLE["gold.funnels"].affected_days[0]
    assert stale["gold.funnels"] == days(n + dt.timedelta(days=lo), n - dt.timedelta(days=1))
    assert "gold.active_users" not in stale and "gold.events_hourly" not in stale
    # ...and they are restated in runs of their own, not with each other
    plan = restatement(MODELS, {}, built_all(), seeds=stale)
    by_first_table = {tables[0]: (start, end) for start, end, tables in runs(plan, MODELS)}
    # gold.conversions of n - 1 and n read the sessions of n - 1: restated with them
    assert by_first_table["gold.sessions"] == (n - dt.timedelta(days=1), n)
    # a reader built after its input (a backfill: silver first, gold after) is not stale
    assert stale_readers(MODELS, {"silver.events": {n: 5}}, latest, built_all()) == {}
    # a state day rebuilt after the later ones (a backfill of that day): every later state is stale
    d = n - dt.timedelta(days=5)
    assert stale_readers(MODELS, {"silver.person_state": {d: 40}}, latest, built_all())["silver.person_state"] == days(
        d + dt.timedelta(days=1), n)
