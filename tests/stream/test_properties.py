"""Property tests: random out-of-order, duplicated, late and invalid streams, cut into random
micro-batches, against a reference computed directly from the input in plain Python.

The reference knows only the documented semantics (:mod:`headwater.stream.pipeline`): batch
boundaries (per partition ``min(log end, next + cap)``), first-occurrence dedup, the
per-partition watermark with idleness (event times capped at processing time + tolerance),
lateness decided with the previous batch's watermark,
windows as sets of events. Expected results:

* append mode: exactly the windows (over all accepted events) whose end is
  ``<= final watermark − allowed lateness``, each once, with their exact measures;
* update mode: converges to every window of all accepted events, with exact measures;
* every appended event is in ``bronze.events`` (once per id) or its record in
  ``bronze.dead_letter`` (once); late ones are also in ``bronze.late_events``.
"""

import datetime as dt
import tempfile
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from headwater.config import Home
from headwater.log import Append, open_log
from headwater.stream.pipeline import Aggregate, Column, Hopping, Measure, Pipeline, Session, Tumbling, Watermark
from headwater.stream.processor import BronzeStream, StreamConfig

from .conftest import T0, canonical, table_rows

S = 1_000_000  # µs
STEP_MS = 10_000  # processing time between steps
IDLE = dt.timedelta(seconds=25)
BASE_US = int(T0.timestamp()) * S
BASE_MS = BASE_US // 1000  # processing time of step 0: events run up to 20 min ahead of it
TOLERANCE_US = 60 * S  # stream.watermark_tolerance_s: the watermark never passes processing time + this

event = st.tuples(
    st.integers(0, 30),  # id: collisions are duplicates (first occurrence wins)
    st.integers(0, 40).map(lambda k: k * 30),  # event time (s after T0), any order, often equal
    st.sampled_from(["u1", "u2", "u3", None]),  # user
    st.sampled_from(["web", "ios"]),
)
step = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 2), st.lists(event, min_size=1, max_size=5)),
    st.tuples(st.just("bad"), st.integers(0, 2), st.sampled_from(["garbage", "missing", "null_ts"])),
    st.tuples(st.just("run")),
)


def make_pipeline(delay_s: int, lateness_s: int) -> Pipeline:
    count, weight = Measure.count("events"), Measure.sum("weight", "weight")
    users = Measure.distinct("users", "actor_id")
    late = dt.timedelta(seconds=lateness_s)
    return Pipeline(
        "prop",
        watermark=Watermark(delay=dt.timedelta(seconds=delay_s), idle_timeout=IDLE),
        columns=(
            Column("actor_id", "coalesce(user_id, anonymous_id)"),
            Column("weight", "CASE WHEN platform = 'ios' THEN 2.5 ELSE 1 END"),
        ),
        aggregates=(
            Aggregate("tumble", Tumbling(dt.timedelta(minutes=1)), ("platform",), (count, weight, users), "append", late),
            Aggregate("hop", Hopping(dt.timedelta(minutes=2), dt.timedelta(minutes=1)), (), (count, users), "update"),
            Aggregate("sess", Session(dt.timedelta(minutes=3)), ("actor_id",), (count, weight), "append"),
            Aggregate("sess_live", Session(dt.timedelta(minutes=3)), ("actor_id",), (count,), "update", late),
        ),
    )


def record(kind: str, rows: list) -> tuple[int, bytes | pa.Table]:
    """A bad record: its event count and its events, or bytes that are not Arrow."""
    if kind == "garbage":
        return 2, b"\x00not arrow"
    if kind == "missing":
        return 1, pa.table({"event_id": ["m"]})
    t = canonical(["n"])
    field = t.schema.field("event_ts").with_nullable(True)
    t = t.set_column(5, field, pa.array([None], pa.timestamp("us", tz="UTC")))
    return 1, t


def event_rows(events) -> pa.Table:
    ids = [f"id{i}" for i, *_ in events]
    t = canonical(ids)
    ts = [T0 + dt.timedelta(seconds=s) for _, s, _, _ in events]
    t = t.set_column(t.schema.get_field_index("event_ts"), "event_ts", pa.array(ts, pa.timestamp("us", tz="UTC")))
    t = t.set_column(t.schema.get_field_index("ds"), "ds", pa.array([x.date() for x in ts], pa.date32()))
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id", pa.array([u for _, _, u, _ in events], pa.string()))
    t = t.set_column(t.schema.get_field_index("anonymous_id"), "anonymous_id", pa.array([f"anon-{i % 2}" for i, *_ in events], pa.string()))
    return t.set_column(t.schema.get_field_index("platform"), "platform", pa.array([p for *_, p in events], pa.string()))


# -- the reference ---------------------------------------------------------------------------
def reference(steps, cap: int, pipe: Pipeline):
    logs = defaultdict(list)  # partition -> [(event dict | None, record key)]
    nxt = defaultdict(int)
    dead, seen, bronze, late = set(), set(), {}, {}
    maxev, active, wm = {}, {}, None
    accepted = defaultdict(list)  # aggregate name -> events
    delay = pipe.watermark.delay.total_seconds() * S
    for i, s in enumerate(steps):
        now = BASE_MS + i * STEP_MS
        if s[0] == "append":
            _, p, events = s
            start = len(logs[p])
            for e_id, sec, user, platform in events:
                ev = {"id": f"id{e_id}", "ts": BASE_US + sec * S, "actor": user or f"anon-{e_id % 2}", "platform": platform}
                logs[p].append((ev, (p, start)))
        elif s[0] == "bad":
            _, p, kind = s
            n, _ = record(kind, [])
            start = len(logs[p])
            logs[p] += [(None, (p, start))] * n
        else:
            plan = {p: (nxt[p], min(len(logs[p]), nxt[p] + cap)) for p in range(3)}
            if all(a == b for a, b in plan.values()):
                continue
            batch = []
            for p in range(3):
                a, b = plan[p]
                for off in range(a, b):
                    ev, key = logs[p][off]
                    if ev is None:
                        if key[1] == off:
                            dead.add(key)
                    else:
                        batch.append((p, ev))
                nxt[p] = b
                if b > a:
                    active[p] = now
            for p, ev in batch:
                t = min(ev["ts"], now * 1000 + TOLERANCE_US)  # event times capped at processing time + tolerance
                maxev[p] = max(maxev.get(p, t), t)
                if ev["id"] in seen:
                    continue
                seen.add(ev["id"])
                bronze[ev["id"]] = ev
                for agg in pipe.aggregates:
                    if wm is not None and ev["ts"] <= wm - agg.allowed_lateness.total_seconds() * S:
                        late[ev["id"]] = wm
                    else:
                        accepted[agg.name].append(ev)
            live = [m - delay for p, m in maxev.items() if now - active[p] <= IDLE.total_seconds() * 1000]
            if live:
                wm = min(live) if wm is None else max(wm, min(live))
    return bronze, dead, late, accepted, wm


def windows_of(agg: Aggregate, events: list[dict]) -> dict[tuple, list[dict]]:
    """{(start, end, *group): events} by brute force over the definition."""
    out = defaultdict(list)
    if isinstance(agg.window, Session):
        gap = agg.window.gap.total_seconds() * S
        by_actor = defaultdict(list)
        for e in events:
            by_actor[e["actor"]].append(e)
        for actor, evs in by_actor.items():
            evs.sort(key=lambda e: e["ts"])
            current = [evs[0]]
            for e in evs[1:]:
                if e["ts"] < current[-1]["ts"] + gap:
                    current.append(e)
                else:
                    out[(current[0]["ts"], current[-1]["ts"] + gap, actor)] = current
                    current = [e]
            out[(current[0]["ts"], current[-1]["ts"] + gap, actor)] = current
        return out
    size = agg.window.size.total_seconds() * S
    slide = agg.window.slide.total_seconds() * S if isinstance(agg.window, Hopping) else size
    for e in events:
        start = e["ts"] - e["ts"] % slide
        while start > e["ts"] - size:
            key = (start, start + size, *(e[g] for g in agg.group_by))
            out[key].append(e)
            start -= slide
    return out


def expected_rows(agg: Aggregate, events, wm) -> list[tuple]:
    rows = []
    for key, evs in windows_of(agg, events).items():
        if agg.output_mode == "append" and (wm is None or key[1] > wm - agg.allowed_lateness.total_seconds() * S):
            continue
        values = []
        for m in agg.measures:
            if m.kind == "count":
                values.append(len(evs))
            elif m.kind == "sum":
                values.append(sum(2.5 if e["platform"] == "ios" else 1.0 for e in evs))
            else:
                values.append(len({e["actor"] for e in evs}))
        rows.append((int(key[0]), int(key[1]), *key[2:], *values))
    return sorted(rows, key=repr)


def actual_rows(home: Home, agg: Aggregate) -> list[tuple]:
    rows = []
    for r in table_rows(home, agg.table):
        values = [round(r[m.name]) if m.kind == "distinct" else r[m.name] for m in agg.measures]
        start, end = (int(r[c].timestamp()) * S for c in ("window_start", "window_end"))
        group = [r[g] for g in agg.group_by]
        rows.append((start, end, *group, *values))
    return sorted(rows, key=repr)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    steps=st.lists(step, min_size=1, max_size=14),
    cap=st.sampled_from([2, 5, 1000]),
    delay_s=st.sampled_from([0, 60, 300]),
    lateness_s=st.sampled_from([0, 120]),
)
# An event exactly at the watermark is late (Spark's rule: event_ts <= watermark).
@example(
    steps=[("append", 0, [(1, 600, "u1", "web")]), ("run",), ("append", 0, [(2, 540, "u1", "ios"), (3, 570, "u2", "web")]), ("run",)],
    cap=1000,
    delay_s=60,
    lateness_s=0,
)
def test_stream_matches_reference(steps, cap, delay_s, lateness_s):
    pipe = make_pipeline(delay_s, lateness_s)
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp))
        log = open_log(home.settings.log_url)
        log.ensure_topic("events", 3)
        log.ensure_topic("bad_rows", 1)
        clock = [0]
        stream = BronzeStream(home, StreamConfig(max_records_per_partition=cap, compact_every=0), event_log=log, pipeline=pipe, clock=lambda: clock[0])
        for i, s in enumerate(steps):
            clock[0] = BASE_MS + i * STEP_MS
            if s[0] == "append":
                log.append([Append("events", s[1], event_rows(s[2]))])
            elif s[0] == "bad":
                n, payload = record(s[2], [])
                if isinstance(payload, bytes):
                    log._insert([("events", s[1], n, payload)])  # the sqlite backend's raw record
                else:
                    log.append([Append("events", s[1], payload)])
            else:
                stream.run_once()
        while True:  # drain the log, one more step per batch
            clock[0] = BASE_MS + len(steps) * STEP_MS
            steps.append(("run",))
            if stream.run_once() is None:
                break

        bronze, dead, late, accepted, wm = reference(steps, cap, pipe)
        got = table_rows(home, "bronze.events", ["event_id"])
        assert [(r["event_id"], int(r["event_ts"].timestamp() * S)) for r in got] == sorted((k, v["ts"]) for k, v in bronze.items())
        assert {(r["partition"], r["offset"]) for r in table_rows(home, "bronze.dead_letter")} == dead
        assert len(table_rows(home, "bronze.dead_letter")) == len(dead)
        got_late = table_rows(home, "bronze.late_events", ["event_id"])
        assert [(r["event_id"], int(r["watermark"].timestamp() * S)) for r in got_late] == sorted(late.items())
        for agg in pipe.aggregates:
            assert actual_rows(home, agg) == expected_rows(agg, accepted[agg.name], wm), agg.name
        log.close()
