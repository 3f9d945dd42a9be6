"""gold.funnels equals its definition on random small event sets (property-based, hypothesis).

The model's SQL (rendered for one or two random funnels, run by DuckDB over the events as
``silver.events``) is compared with :func:`reference`, a direct transcription of the
definition in ``gold/funnels.sql``'s header: entries are the step-1 events of a person on a
day of the range; from an entry, each later step is matched greedily to the earliest event
of that step strictly later than the previous step's event and at most the window after the
entry. The data is made to hit the edge cases of that rule: timestamps on a coarse grid
(ties, also between events of different steps), an event exactly at the deadline or a
microsecond after it, the same event name in several steps of a funnel and in two funnels,
several entries per person and day, page events and events without a person (ignored),
events after the range (later steps only) and before it (not read).
"""

from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass

import duckdb
import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from headwater.lake.schemas import SILVER_EVENTS_SCHEMA
from headwater.models import config as model_config
from tests.models.bronze import MODEL

UTC = dt.timezone.utc
DAY0 = dt.date(2024, 5, 1)
T0 = dt.datetime(2024, 5, 1, tzinfo=UTC)
GRID = dt.timedelta(minutes=15)
US = dt.timedelta(microseconds=1)
NAMES = ("a", "b", "c")


@dataclass(frozen=True)
class Event:
    person: str | None
    name: str
    ts: dt.datetime
    platform: str
    event_type: str = "track"

    @property
    def ds(self) -> dt.date:
        return self.ts.date()


def reference(events: list[Event], funnels: tuple[model_config.Funnel, ...], start: dt.date, end: dt.date) -> list[tuple]:
    """gold.funnels' rows ``(ds, funnel, platform, step, step_name, entered, users, conversion,
    median_seconds_to_convert)`` by the definition, sorted as the model sorts them."""
    read = [e for e in events if e.event_type == "track" and e.person is not None
            and start <= e.ds <= end + dt.timedelta(days=7)]
    rows = []
    for f in funnels:
        window = dt.timedelta(seconds=round(f.window_hours * 3600))
        # (ds, platform) -> person -> step -> (entry time, microseconds to the step) of the earliest entry reaching it
        reached: dict[tuple, dict[str, dict[int, tuple]]] = {}
        entries = {(e.person, e.platform, e.ds, e.ts) for e in read if e.name == f.steps[0] and start <= e.ds <= end}
        for person, platform, ds, entry in entries:
            steps = reached.setdefault((ds, platform), {}).setdefault(person, {})
            steps[1] = min(steps.get(1, (entry, None)), (entry, None), key=lambda x: x[0])
            t, deadline = entry, entry + window
            for k, name in enumerate(f.steps[1:], start=2):
                later = [e.ts for e in read if e.person == person and e.name == name and t < e.ts <= deadline]
                if not later:
                    break
                t = min(later)
                took = (entry, (t - entry) // US)
                steps[k] = min(steps.get(k, took), took, key=lambda x: x[0])
        for (ds, platform), persons in reached.items():
            for k, name in enumerate(f.steps, start=1):
                micros = [p[k][1] for p in persons.values() if k in p]
                median = statistics.median(micros) / 1e6 if k > 1 and micros else None
                rows.append((ds, f.name, platform, k, name, len(persons), len(micros), len(micros) / len(persons), median))
    return sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3]))


def model(events: list[Event], funnels: tuple[model_config.Funnel, ...], start: dt.date, end: dt.date) -> list[tuple]:
    """The rows gold/funnels.sql computes (rendered for ``funnels``) over ``events`` as silver.events."""
    table = pa.Table.from_pylist([
        {"event_id": f"e{i}", "event_type": e.event_type, "event_name": e.name, "event_ts": e.ts, "received_at": e.ts,
         "source": "test", "platform": e.platform, "person_id": e.person, "ds": e.ds}
        for i, e in enumerate(events)
    ], schema=SILVER_EVENTS_SCHEMA)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE SCHEMA silver")
        con.register("events_table", table)
        con.execute("CREATE VIEW silver.events AS SELECT * FROM events_table")
        sql = MODEL["gold.funnels"].sql(config=model_config.ModelConfig(funnels=funnels))
        return con.execute(sql, {"start": start, "end": end}).fetchall()
    finally:
        con.close()


events_st = st.lists(
    st.builds(
        Event,
        person=st.sampled_from(["p1", "p2", "p3", None]),
        name=st.sampled_from(NAMES + ("x",)),
        # a grid of 15 minutes over 3 days (ties, deadlines hit exactly), sometimes 1 us later
        ts=st.builds(lambda n, late: T0 + n * GRID + late * US, st.integers(0, 4 * 24 * 3), st.sampled_from([0, 0, 0, 1])),
        platform=st.sampled_from(["web", "ios"]),
        event_type=st.sampled_from(["track"] * 6 + ["page"]),
    ),
    max_size=60,
)
funnel_st = st.builds(
    lambda steps, hours: (tuple(steps), hours),
    st.lists(st.sampled_from(NAMES), min_size=2, max_size=4),  # repeats: the same event in several steps
    st.sampled_from([0.25, 0.5, 1.0, 2.0, 24.0]),
)
funnels_st = st.lists(funnel_st, min_size=1, max_size=2).map(
    lambda fs: tuple(model_config.Funnel(f"f{i}", steps, hours) for i, (steps, hours) in enumerate(fs)))


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_st, funnels=funnels_st, first=st.integers(0, 2), days=st.integers(0, 1))
@example(  # one event in two steps reaches only the first; a tie with the entry is not after it
    events=[Event("p1", "a", at(60), "web"), Event("p1", "b", at(60), "web"), Event("p1", "a", at(90), "ios"),
            Event("p1", "b", at(90), "web")],
    funnels=(model_config.Funnel("f0", ("a", "a", "b"), 1.0), model_config.Funnel("f1", ("a", "b"), 0.5)),
    first=0, days=0,
)
@example(  # exactly at the deadline counts, a microsecond later does not; later entries of the same person
    events=[Event("p1", "a", at(0), "web"), Event("p1", "b", at(30), "web"), Event("p1", "c", at(60), "web"),
            Event("p2", "a", at(0), "web"), Event("p2", "b", at(30), "web"), Event("p2", "c", at(60) + US, "web"),
            Event("p2", "a", at(45), "web"), Event("p2", "c", at(105), "web")],
    funnels=(model_config.Funnel("f0", ("a", "b", "c"), 1.0),),
    first=0, days=0,
)
@example(  # steps after the range's last day count; entries do not
    events=[Event("p1", "a", at(24 * 60 - 15), "web"), Event("p1", "b", at(24 * 60 + 15), "ios"),
            Event("p1", "a", at(24 * 60 + 30), "web"), Event("p1", "b", at(24 * 60 + 45), "web")],
    funnels=(model_config.Funnel("f0", ("a", "b"), 1.0),),
    first=0, days=0,
)
def test_gold_funnels_follow_their_definition(events, funnels, first, days):
    start = DAY0 + dt.timedelta(days=first)
    end = start + dt.timedelta(days=days)
    assert model(events, funnels, start, end) == reference(events, funnels, start, end)
