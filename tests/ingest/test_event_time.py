"""Event-time rules at ingestion (:func:`headwater.ingest.canonical.event_time`), through
every path that builds canonical events: the rule function itself, the Segment and PostHog
adapters, file import and server logs. Far future → receive time, flagged in
``context.headwater``; outside 1970..9999 → bad row naming the field; past → as sent."""

from __future__ import annotations

import datetime as dt
import json

import msgspec
import pyarrow as pa

from headwater.collector import posthog as ph
from headwater.collector import segment
from headwater.config import Home
from headwater.events import TS
from headwater.ingest.canonical import (
    EVENT_TIME_RANGE,
    FUTURE_TOLERANCE_US,
    EventColumns,
    TimeViolation,
    build_events,
    event_time,
)
from headwater.log import open_log
from headwater.sources.files import import_file
from headwater.sources.mapping import Mapping
from headwater.sources.serverlog import ServerLog
from tests.helpers import read_topic

from .conftest import RECEIVED_US

UTC = dt.timezone.utc
RECEIVED = dt.datetime.fromtimestamp(RECEIVED_US / 1e6, UTC)
H = dt.timedelta(hours=1)
RANGE = "event time must be within 1970-01-01..9999-12-31 (rule event_time_range)"


def row(eid, ts=None, ots=None, sent=None, ctx="{}", offset=None):
    return (eid, "track", "x", "anon", None, ts, ots, sent, "web", "web", "{}", ctx, offset)


def build(rows, **kw):
    return build_events(EventColumns.from_rows(rows), source="s", received_at_us=RECEIVED_US, **kw)


def test_more_than_the_tolerance_ahead_is_replaced_by_the_receive_time_and_flagged():
    rows = [
        row("y2100", dt.datetime(2100, 1, 1, tzinfo=UTC), ctx='{"library":{"name":"x"}}'),
        row("edge", RECEIVED + 23 * H),  # exactly the tolerance: kept (PostHog: "more than")
        row("over", RECEIVED + 23 * H + dt.timedelta(microseconds=1)),
        row("skewed", RECEIVED + 30 * H, sent=RECEIVED + 30 * H),  # a fast clock, corrected: not flagged
    ]
    built = build(rows)
    assert built.violations == []
    got = {r["event_id"]: r for r in built.events.to_pylist()}
    assert got["y2100"]["event_ts"] == RECEIVED and got["y2100"]["ds"] == RECEIVED.date()
    assert json.loads(got["y2100"]["context"]) == {
        "library": {"name": "x"},
        "headwater": {"event_ts_original": "2100-01-01T00:00:00.000000Z", "event_ts_rule": "future_tolerance"},
    }
    assert got["edge"]["event_ts"] == RECEIVED + 23 * H and got["edge"]["context"] == "{}"
    assert got["over"]["event_ts"] == RECEIVED
    assert json.loads(got["over"]["context"])["headwater"]["event_ts_original"] == (RECEIVED + 23 * H).strftime("%Y-%m-%dT%H:%M:%S.000001Z")
    assert got["skewed"]["event_ts"] == RECEIVED and got["skewed"]["context"] == "{}"


def test_the_tolerance_is_a_parameter():
    built = build([row("1h", RECEIVED + H)], future_tolerance_us=30 * 60 * 1_000_000)
    assert built.events.column("event_ts").to_pylist() == [RECEIVED]
    assert FUTURE_TOLERANCE_US == 23 * 3600 * 1_000_000


def test_out_of_range_rows_are_violations_naming_the_field_and_neighbours_are_kept():
    rows = [
        row("ok", RECEIVED),
        row("y1960", dt.datetime(1960, 1, 1, tzinfo=UTC)),
        row("orig1960", ots=dt.datetime(1960, 1, 1)),
        row("tz-past-9999", dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(-5 * H))),
        row("skew", dt.datetime(9999, 6, 1, tzinfo=UTC), sent=dt.datetime(1980, 1, 1, tzinfo=UTC)),
        row("offset", offset=10**17),
        row("offset-beyond-int64", offset=-(10**40)),
        row("y0001", dt.datetime(1, 1, 1, tzinfo=UTC), sent=dt.datetime(1, 1, 1, tzinfo=UTC)),  # corrected: fine
        row("y1998", dt.datetime(1998, 1, 1, tzinfo=UTC)),
    ]
    built = build(rows)
    assert built.violations == [
        TimeViolation(1, "timestamp"), TimeViolation(2, "original_timestamp"), TimeViolation(3, "timestamp"),
        TimeViolation(4, "sent_at"), TimeViolation(5, "offset"), TimeViolation(6, "offset"),
    ]
    got = dict(zip(built.events.column("event_id").to_pylist(), built.events.column("event_ts").to_pylist()))
    assert got == {"ok": RECEIVED, "y0001": RECEIVED, "y1998": dt.datetime(1998, 1, 1, tzinfo=UTC)}
    # The request's sentAt corrects every event without its own: here it pushes one past 9999.
    built = build([row("request-skew", dt.datetime(9999, 6, 1, tzinfo=UTC)), row("own", dt.datetime(9999, 6, 1, tzinfo=UTC), sent=RECEIVED)],
                  sent_at=dt.datetime(1000, 1, 1, tzinfo=UTC))
    assert built.violations == [TimeViolation(0, "request_sent_at")]


def test_boundaries_of_the_range():
    lo, hi = dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(9999, 12, 31, 23, 59, 59, 999999)
    t = event_time(EventColumns.from_rows([row("lo", lo), row("hi", hi, sent=hi), row("below", lo - dt.timedelta(microseconds=1))]), received_at_us=RECEIVED_US)
    assert [v.row for v in t.violations] == [2]


def test_arrow_columns_of_a_source_are_checked_too():
    n = 3
    ts = pa.array([0, 253_402_300_800_000_000 + 1, -1], pa.int64()).cast(TS)  # 1970, year 10000, 1969
    cols = EventColumns(
        event_ids=pa.array(["a", "b", "c"]), event_types=pa.array(["track"] * n), event_names=pa.array(["x"] * n),
        anonymous_ids=pa.nulls(n, pa.string()), user_ids=pa.array(["u"] * n), timestamps=pa.chunked_array([ts]),
        original_timestamps=pa.nulls(n, TS), sent_ats=pa.nulls(n, TS), surfaces=pa.repeat(pa.scalar("server"), n),
        platforms=pa.repeat(pa.scalar("server"), n), properties=pa.repeat(pa.scalar("{}"), n), contexts=pa.repeat(pa.scalar("{}"), n),
    )
    built = build_events(cols, source="import", received_at_us=RECEIVED_US)
    assert built.violations == [TimeViolation(1, "timestamp"), TimeViolation(2, "timestamp")]
    assert built.events.column("event_id").to_pylist() == ["a"]


def test_a_client_cannot_forge_the_flag():
    built = build([row("forged", RECEIVED, ctx='{"headwater":{"event_ts_rule":"future_tolerance"},"app":"x"}')])
    assert json.loads(built.events.column("context")[0].as_py()) == {"app": "x"}


# -- wire adapters ----------------------------------------------------------------------
def msg(mid: str, **kw) -> dict:
    return {"type": "track", "event": "Clicked", "userId": "u1", "messageId": mid, **kw}


def test_segment_normalize_applies_the_rules_per_message(tokenizer):
    batch = [
        msg("future", timestamp="2100-01-01T00:00:00Z"),
        msg("unparsable", timestamp="2024-02-30T10:00:00Z"),
        msg("y1960", originalTimestamp="1960-01-01T00:00:00Z"),
        msg("past", timestamp="1998-01-01T00:00:00Z"),
        msg("ok", timestamp="2024-03-01T11:59:00Z", sentAt="2024-03-01T11:59:30Z"),
    ]
    env = segment.parse_request(json.dumps({"batch": batch}).encode())
    n = segment.normalize(env, source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    assert n.events.column("event_id").to_pylist() == ["future", "past", "ok"]
    assert [(e["index"], e["code"]) for e in n.errors] == [(1, "envelope_violation"), (2, "envelope_violation")]
    assert "`$.batch[1].timestamp`" in n.errors[1 - 1]["message"]
    assert n.errors[1]["message"] == f"$.batch[2].originalTimestamp: {RANGE}"
    bad = n.bad_rows[1]
    assert (bad.field, bad.rule, bad.protocol) == ("$.batch[2].originalTimestamp", EVENT_TIME_RANGE, "segment")
    assert json.loads(bad.payload)["messageId"] == "y1960"
    ts = dict(zip(n.events.column("event_id").to_pylist(), n.events.column("event_ts").to_pylist()))
    assert ts["future"] == RECEIVED and ts["past"] == dt.datetime(1998, 1, 1, tzinfo=UTC)
    assert ts["ok"] == RECEIVED - dt.timedelta(seconds=30)


def test_segment_batch_sent_at_that_overflows_names_the_batch_field(tokenizer):
    body = {"batch": [msg("a", timestamp="9999-12-01T00:00:00Z"), msg("b")], "sentAt": "1990-01-01T00:00:00Z"}
    n = segment.normalize(segment.parse_request(json.dumps(body).encode()), source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    assert n.events.column("event_id").to_pylist() == ["b"]
    assert n.errors == [{"index": 0, "code": "envelope_violation", "message": f"$.sentAt: {RANGE}"}]


def test_posthog_offset_of_any_size_is_a_bad_row_not_an_error(tokenizer):
    events = [
        {"event": "a", "distinct_id": "d", "uuid": "huge", "offset": 10**17},
        {"event": "a", "distinct_id": "d", "uuid": "beyond-int64", "offset": 10**30},
        {"event": "a", "distinct_id": "d", "uuid": "ok", "offset": 2000},
        {"event": "a", "distinct_id": "d", "uuid": "future", "timestamp": "3000-01-01T00:00:00Z"},
        {"event": "a", "distinct_id": "d", "uuid": "sent-overflow", "timestamp": "9999-12-01T00:00:00Z"},
    ]
    req = ph.parse_request(json.dumps({"api_key": "k", "batch": events, "sent_at": "1990-01-01T00:00:00Z"}).encode())
    n = ph.normalize(req, source="s", received_at_us=RECEIVED_US, tokenizer=tokenizer)
    assert n.events.column("event_id").to_pylist() == ["ok", "future"]
    assert [e["message"] for e in n.errors] == [f"$.batch[0].offset: {RANGE}", f"$.batch[1].offset: {RANGE}", f"$.sent_at: {RANGE}"]
    ts = dict(zip(n.events.column("event_id").to_pylist(), n.events.column("event_ts").to_pylist()))
    assert ts == {"ok": RECEIVED - dt.timedelta(seconds=2), "future": RECEIVED}
    ctx = json.loads(n.events.column("context")[1].as_py())
    assert ctx["headwater"]["event_ts_original"].startswith("3034-")  # skew-corrected by sent_at 1990, then replaced


# -- sources ----------------------------------------------------------------------------
CSV = """user,event,ts
u1,Viewed,2024-03-01T12:00:00Z
u2,Viewed,1960-01-01T00:00:00Z
u3,Viewed,20000-01-01T00:00:00Z
u4,Viewed,2100-01-01T00:00:00Z
u5,Viewed,1998-06-01T00:00:00Z
"""


def test_file_import_applies_the_same_rules(tmp_path):
    home = Home(tmp_path / "home")
    path = tmp_path / "export.csv"
    path.write_text(CSV)
    counts = import_file(home, path, Mapping(timestamp="ts", user_id="user", event="event"), source="shop")
    assert (counts.accepted, dict(counts.rejected)) == (3, {"envelope_violation": 2})
    log = open_log(home.settings.log_url)
    try:
        events = read_topic(log, "events").to_pylist()
        bad = read_topic(log, "bad_rows").to_pylist()
    finally:
        log.close()
    by_ts = sorted(r["event_ts"] for r in events)
    assert by_ts[0] == dt.datetime(1998, 6, 1, tzinfo=UTC) and by_ts[1] == dt.datetime(2024, 3, 1, 12, tzinfo=UTC)
    [future] = [r for r in events if "headwater" in json.loads(r["context"])]
    assert future["event_ts"] == future["received_at"]
    assert json.loads(future["context"])["headwater"]["event_ts_original"] == "2100-01-01T00:00:00.000000Z"
    assert json.loads(future["context"])["import"] == {"file": "export.csv"}  # the source's context kept
    assert sorted(b["reason"] for b in bad) == [f'row 2: column "ts" (timestamp): {RANGE}', f'row 3: column "ts" (timestamp): {RANGE}']
    assert all("u2" not in b["payload"] and "u3" not in b["payload"] for b in bad)  # ids tokenised


def test_server_log_applies_the_same_rules(tmp_path):
    home = Home(tmp_path / "home")
    path = tmp_path / "app.log"
    path.write_text("user=u1 | event=Viewed | ts=2024-03-01T12:00:00Z\nuser=u2 | event=Viewed | ts=1900-01-01T00:00:00Z\n")
    reader = ServerLog(home, path, Mapping(timestamp="ts", user_id="user", event="event"))
    try:
        counts = reader.poll()
    finally:
        reader.close()
    assert (counts.accepted, dict(counts.rejected)) == (1, {"envelope_violation": 1})
    log = open_log(home.settings.log_url)
    try:
        [bad] = read_topic(log, "bad_rows").to_pylist()
    finally:
        log.close()
    assert bad["reason"] == f'line 2: column "ts" (timestamp): {RANGE}' and bad["protocol"] == "serverlog"
    assert msgspec.json.decode(bad["payload"])["event_ts"].startswith("1900-01-01")


def test_one_sent_at_for_the_request_corrects_every_event_like_its_own():
    # The request's sentAt is one offset for every event; an event's own sentAt wins over it.
    ts = RECEIVED - 2 * H
    by_request = build([row("a", ts=ts), row("b")], sent_at=RECEIVED - 3 * H).events
    own = build([row("a", ts=ts, sent=RECEIVED - 3 * H), row("b", sent=RECEIVED - 3 * H)]).events
    assert by_request.column("event_ts").to_pylist() == own.column("event_ts").to_pylist() == [RECEIVED + H, RECEIVED]
    mixed = build([row("a", ts=ts, sent=RECEIVED - 2 * H), row("b", ts=ts)], sent_at=RECEIVED - 3 * H).events
    assert mixed.column("event_ts").to_pylist() == [RECEIVED, RECEIVED + H]
