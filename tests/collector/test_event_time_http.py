"""Event-time rules through a real collector (uvicorn on 127.0.0.1) and then the stream:
a far-future time is clamped to the receive time and flagged in ``context.headwater``, a time
outside 1970..9999 is a bad row naming the field, past times stay as sent, and an ordinary
event sent after a year-2100 one still reaches ``realtime.events_per_minute``."""

from __future__ import annotations

import datetime as dt
import json

import httpx

from headwater.lake import sql
from headwater.lake.store import Lake
from headwater.stream.processor import BronzeStream
from tests.helpers import LogTail, start_collector

from .conftest import HMAC_KEY, SOURCE, WRITE_KEY, basic

UTC = dt.timezone.utc
RANGE = "event time must be within 1970-01-01..9999-12-31 (rule event_time_range)"


def rfc(t: dt.datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def seg(mid: str, ts: str | None, **kw) -> dict:
    m = {"type": "track", "event": "Clicked", "userId": "device-with-a-broken-clock", "messageId": mid, **kw}
    if ts is not None:
        m["timestamp"] = ts
    return m


def by_id(rows) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows}


def minute_counts(home) -> dict[dt.datetime, int]:
    rows = sql.query(Lake.of(home), "SELECT window_start, events FROM realtime.events_per_minute").to_pylist()
    out: dict[dt.datetime, int] = {}
    for r in rows:
        out[r["window_start"]] = out.get(r["window_start"], 0) + r["events"]
    return out


def test_segment_far_future_is_clamped_and_flagged_out_of_range_is_a_bad_row_and_the_stream_goes_on(http, home, events, bad_rows):
    now = dt.datetime.now(UTC)
    batch = [
        seg("y2100", "2100-01-01T00:00:00Z"),  # no sentAt: stored 640,516 h ahead before the fix
        seg("y1998", "1998-06-01T12:00:00Z"),  # history: kept as sent
        seg("y1960", "1960-01-01T00:00:00Z"),
        seg("unparsable", "2024-13-45T99:00:00Z"),
        seg("skew-overflow", "9999-12-31T23:59:59Z", sentAt="1990-01-01T00:00:00Z"),  # corrected past 9999
        seg("tz-overflow", "9999-12-31T23:00:00-05:00"),  # 10000-01-01T04:00Z in UTC
        seg("ok-1", rfc(now - dt.timedelta(seconds=1))),
    ]
    r = http.post("/v1/batch", content=json.dumps({"batch": batch}), headers=basic(WRITE_KEY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (3, 4)
    errors = {e["index"]: e for e in body["errors"]}
    assert errors[2] == {"index": 2, "code": "envelope_violation", "message": f"$.batch[2].timestamp: {RANGE}"}
    assert errors[3]["code"] == "envelope_violation" and "`$.batch[3].timestamp`" in errors[3]["message"]
    assert errors[4]["message"] == f"$.batch[4].sentAt: {RANGE}"
    assert errors[5]["message"] == f"$.batch[5].timestamp: {RANGE}"

    rows = by_id(events.rows())
    assert set(rows) == {"y2100", "y1998", "ok-1"}  # valid neighbours kept
    clamped = rows["y2100"]
    assert clamped["event_ts"] == clamped["received_at"] and clamped["ds"] == clamped["received_at"].date()
    assert json.loads(clamped["context"])["headwater"] == {"event_ts_original": "2100-01-01T00:00:00.000000Z", "event_ts_rule": "future_tolerance"}
    assert rows["y1998"]["event_ts"] == dt.datetime(1998, 6, 1, 12, tzinfo=UTC) and "headwater" not in json.loads(rows["y1998"]["context"])
    stored = sorted(b["reason"] for b in bad_rows.rows() if b["reason"].endswith("(rule event_time_range)"))
    assert stored == [f"$.batch[2].timestamp: {RANGE}", f"$.batch[4].sentAt: {RANGE}", f"$.batch[5].timestamp: {RANGE}"]
    assert all(b["error_type"] == "envelope_violation" for b in bad_rows.rows())

    stream = BronzeStream(home)
    try:
        stream.run(available_now=True)
        # The next ordinary event from the same device, sent after the year-2100 one.
        events.mark()
        r = http.post("/v1/batch", content=json.dumps({"batch": [seg("ok-2", rfc(dt.datetime.now(UTC)))], "sentAt": rfc(dt.datetime.now(UTC))}), headers=basic(WRITE_KEY))
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
        [ok2] = events.rows()
        stream.run(available_now=True)
    finally:
        stream.close()
    minute = ok2["event_ts"].replace(second=0, microsecond=0)
    assert minute_counts(home).get(minute, 0) >= 1
    late = sql.query(Lake.of(home), "SELECT event_id FROM bronze.late_events").column("event_id").to_pylist()
    assert "ok-2" not in late and "ok-1" not in late
    bronze = set(sql.query(Lake.of(home), "SELECT event_id FROM bronze.events").column("event_id").to_pylist())
    assert {"y2100", "y1998", "ok-1", "ok-2"} <= bronze


def test_posthog_huge_offset_is_a_bad_row_far_future_is_clamped_and_neighbours_are_kept(http, events, bad_rows):
    now = dt.datetime.now(UTC)
    batch = [
        {"event": "a", "distinct_id": "d1", "uuid": "ph-offset-huge", "offset": 10**17},  # ~3 million years ago
        {"event": "a", "distinct_id": "d1", "uuid": "ph-offset-neg", "offset": -(10**30)},  # far future, past int64
        {"event": "a", "distinct_id": "d1", "uuid": "ph-2100", "timestamp": "2100-01-01T00:00:00Z"},
        {"event": "a", "distinct_id": "d1", "uuid": "ph-offset-ok", "offset": 1500},
        {"event": "a", "distinct_id": "d1", "uuid": "ph-ok", "timestamp": rfc(now)},
    ]
    r = http.post("/batch/", content=json.dumps({"api_key": WRITE_KEY, "batch": batch}))
    assert r.status_code == 200, r.text
    rows = by_id(events.rows())
    assert set(rows) == {"ph-2100", "ph-offset-ok", "ph-ok"}
    assert rows["ph-2100"]["event_ts"] == rows["ph-2100"]["received_at"]
    assert json.loads(rows["ph-2100"]["context"])["headwater"]["event_ts_rule"] == "future_tolerance"
    ok = rows["ph-offset-ok"]
    assert ok["event_ts"] == ok["received_at"] - dt.timedelta(milliseconds=1500)
    assert sorted(b["reason"] for b in bad_rows.rows()) == [f"$.batch[0].offset: {RANGE}", f"$.batch[1].offset: {RANGE}"]
    assert [e["index"] for e in r.json().get("errors", [])] in ([0, 1], [])  # PostHog's answer may carry no errors


def test_an_hour_ahead_is_kept_by_default_and_the_tolerance_comes_from_settings(http, events, tmp_path):
    ahead = rfc(dt.datetime.now(UTC) + dt.timedelta(hours=1))
    r = http.post("/v1/batch", content=json.dumps({"batch": [seg("hour-ahead", ahead)]}), headers=basic(WRITE_KEY))
    assert r.status_code == 200, r.text
    [row] = events.rows()
    assert row["event_ts"] - row["received_at"] > dt.timedelta(minutes=59) and "headwater" not in json.loads(row["context"])

    env = {"HEADWATER_HMAC_KEY": HMAC_KEY.hex(), "HEADWATER_COLLECTOR_FUTURE_TOLERANCE_H": "0.5"}
    with start_collector(tmp_path / "strict", write_key=WRITE_KEY, source=SOURCE, env=env) as strict:
        tail = LogTail(strict.log, "events")
        with httpx.Client(base_url=strict.url, timeout=10) as client:
            r = client.post("/v1/batch", content=json.dumps({"batch": [seg("hour-ahead", ahead)]}), headers=basic(WRITE_KEY))
        assert r.status_code == 200, r.text
        [row] = tail.rows()
        assert row["event_ts"] == row["received_at"]
        assert json.loads(row["context"])["headwater"]["event_ts_rule"] == "future_tolerance"
