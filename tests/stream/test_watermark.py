import datetime as dt

from headwater.stream.pipeline import Watermark
from headwater.stream.watermark import WatermarkTracker

S = 1_000_000


def tracker(delay_s=10, idle_s=30):
    # Event times here are small numbers, not tied to processing time: no cap (tests/stream/test_watermark_bound.py).
    return WatermarkTracker(Watermark(delay=dt.timedelta(seconds=delay_s), idle_timeout=dt.timedelta(seconds=idle_s)), tolerance_us=10**6 * S)


def test_global_watermark_is_the_min_over_partitions_of_max_event_time_minus_delay():
    wm = tracker()
    assert wm.advance({"events/0", "events/1"}, {"events/0": 100 * S, "events/1": 50 * S}, now_ms=0) == 40 * S
    assert wm.advance({"events/1"}, {"events/1": 70 * S}, now_ms=1000) == 60 * S
    assert wm.advance({"events/0"}, {"events/0": 80 * S}, now_ms=2000) == 60 * S  # max per partition never drops


def test_idle_partition_does_not_hold_the_watermark_back_and_it_never_decreases():
    wm = tracker(idle_s=30)
    wm.advance({"events/0", "events/1"}, {"events/0": 100 * S, "events/1": 50 * S}, now_ms=0)
    assert wm.advance({"events/0"}, {"events/0": 200 * S}, now_ms=30_000) == 40 * S  # 30 s: not yet idle
    assert wm.advance({"events/0"}, {"events/0": 210 * S}, now_ms=30_001) == 200 * S  # events/1 idle
    # events/1 comes back far behind: it is active again, but the watermark stays.
    assert wm.advance({"events/1"}, {"events/1": 60 * S}, now_ms=31_000) == 200 * S
    assert not wm.idle(wm.partitions["events/1"], 31_000)


def test_partitions_without_events_are_ignored_and_state_round_trips():
    wm = tracker()
    assert wm.advance({"events/2"}, {}, now_ms=0) is None
    wm.advance({"events/0"}, {"events/0": 100 * S}, now_ms=5)
    again = WatermarkTracker.from_dict(wm.spec, wm.to_dict(), wm.tolerance_us)
    assert again == wm
