"""The watermark never runs ahead of processing time + ``stream.watermark_tolerance_s``: one
event stamped 2100 cannot freeze the realtime tables (issue 10, event-time rules)."""

import datetime as dt

import pyarrow as pa

from headwater.lake import sql
from headwater.log import Append
from headwater.lake.store import Lake
from headwater.stream.pipeline import Watermark
from headwater.stream.processor import BronzeStream
from headwater.stream.watermark import TOLERANCE_US, WatermarkTracker

from .conftest import append_events, canonical, table_rows

S = 1_000_000
UTC = dt.timezone.utc
NOW = dt.datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
Y2100 = dt.datetime(2100, 1, 1, tzinfo=UTC)
DELAY = Watermark().delay


def us(t: dt.datetime) -> int:
    return int(t.timestamp() * S)


def test_an_event_far_ahead_moves_the_watermark_only_to_processing_time_plus_tolerance():
    wm = WatermarkTracker(Watermark())
    got = wm.advance({"events/0"}, {"events/0": us(Y2100)}, now_ms=NOW_MS)
    assert got == NOW_MS * 1000 + TOLERANCE_US - DELAY.total_seconds() * S
    assert got <= NOW_MS * 1000 + TOLERANCE_US
    # Two minutes later an ordinary event (5 s old) is not late, and moves the watermark as usual.
    later = NOW_MS + 120_000
    ordinary = us(NOW + dt.timedelta(seconds=115))
    assert ordinary > got
    assert wm.advance({"events/0"}, {"events/0": ordinary}, now_ms=later) == ordinary - DELAY.total_seconds() * S


def test_the_cap_holds_for_every_partition_and_a_custom_tolerance():
    wm = WatermarkTracker(Watermark(delay=dt.timedelta(0)), tolerance_us=5 * S)
    got = wm.advance({"events/0", "events/1"}, {"events/0": us(Y2100), "events/1": us(dt.datetime(9999, 12, 31, tzinfo=UTC))}, now_ms=NOW_MS)
    assert got == NOW_MS * 1000 + 5 * S
    assert all(c.max_event_us <= NOW_MS * 1000 + 5 * S for c in wm.partitions.values())


def test_a_state_saved_before_the_cap_is_brought_back_under_it():
    frozen = {"global_us": us(Y2100) - 600 * S, "partitions": {"events/0": [us(Y2100), NOW_MS - 1000]}}
    wm = WatermarkTracker.from_dict(Watermark(), frozen, tolerance_us=60 * S)
    got = wm.advance({"events/0"}, {"events/0": us(NOW)}, now_ms=NOW_MS)
    assert got == NOW_MS * 1000 + 60 * S - DELAY.total_seconds() * S
    assert wm.to_dict()["partitions"]["events/0"][0] == NOW_MS * 1000 + 60 * S


def test_replay_decides_the_cap_with_the_recorded_batch_timestamp():
    a, b = WatermarkTracker(Watermark()), WatermarkTracker(Watermark())
    assert a.advance({"events/0"}, {"events/0": us(Y2100)}, NOW_MS) == b.advance({"events/0"}, {"events/0": us(Y2100)}, NOW_MS)


def test_an_event_stamped_2100_in_the_log_does_not_freeze_the_realtime_tables(home, event_log):
    now = [NOW_MS]
    stream = BronzeStream(home, clock=lambda: now[0])
    # Straight into the log (as from a collector before the event-time rules, or another writer).
    append_events(event_log, 0, ["broken-clock"], event_ts=Y2100, received_at=NOW)
    stream.run_once()
    now[0] += 2_000
    # Ordinary events after it, on the same partition and another one.
    append_events(event_log, 0, ["next"], event_ts=NOW + dt.timedelta(seconds=1), received_at=NOW + dt.timedelta(seconds=2))
    append_events(event_log, 1, ["other"], event_ts=NOW + dt.timedelta(seconds=1), received_at=NOW + dt.timedelta(seconds=2))
    result = stream.run_once()
    assert result.late_events == 0
    assert table_rows(home, "bronze.late_events") == []
    assert stream.watermark.global_us <= now[0] * 1000 + home.settings.stream.watermark_tolerance_s * S
    minute = sql.query(
        Lake.of(home), f"SELECT events FROM realtime.events_per_minute WHERE window_start = TIMESTAMPTZ '{NOW.isoformat()}'"
    ).to_pylist()
    assert sum(r["events"] for r in minute) == 2  # next, other
    bronze = {r["event_id"] for r in table_rows(home, "bronze.events")}
    assert bronze == {"broken-clock", "next", "other"}


def test_an_event_past_year_9999_in_the_log_does_not_crash_the_stream_or_its_replay(home, event_log):
    now = [NOW_MS]
    far = canonical(["far"], received_at=NOW)
    beyond = pa.array([253_402_300_800_000_000 + 3600 * S], pa.int64()).cast(far.schema.field("event_ts").type)  # 10000-01-01T01:00Z
    far = far.set_column(far.schema.get_field_index("event_ts"), "event_ts", beyond)
    far = far.set_column(far.schema.get_field_index("ds"), "ds", pa.array([dt.date(9999, 12, 31)], pa.date32()))
    event_log.append([Append("events", 0, far)])
    append_events(event_log, 0, ["ok"], event_ts=NOW, received_at=NOW)
    stream = BronzeStream(home, clock=lambda: now[0])
    stream.run_once()
    assert stream.watermark.global_us <= NOW_MS * 1000 + home.settings.stream.watermark_tolerance_s * S
    stream.close()
    # A new processor on the same home (recovery path) goes on with the next event.
    now[0] += 1_000
    append_events(event_log, 0, ["after"], event_ts=NOW + dt.timedelta(seconds=1), received_at=NOW)
    again = BronzeStream(home, clock=lambda: now[0])
    assert again.run_once().late_events == 0
    ids = sql.query(Lake.of(home), "SELECT event_id FROM bronze.events").column("event_id").to_pylist()
    assert sorted(ids) == ["after", "far", "ok"]
