"""Dedup in the embedded stream: keyed on (source, event_id), and kept through clock jumps."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pyarrow as pa

from headwater.log import Append
from headwater.stream.dedup import DedupState
from headwater.stream.processor import BronzeStream

from .conftest import T0, canonical, table_rows

US = 1_000_000
HOUR = 3600 * US
TEN_YEARS = dt.timedelta(days=3653)


def events(ids: list[str], source: str, **kw) -> pa.Table:
    t = canonical(ids, **kw)
    return t.set_column(t.schema.get_field_index("source"), "source", pa.array([source] * len(ids)))


def bronze(home) -> list[tuple[str, str]]:
    return sorted((r["source"], r["event_id"]) for r in table_rows(home, "bronze.events"))


def test_one_sources_message_id_does_not_drop_another_sources_event(home, event_log):
    stream = BronzeStream(home)
    event_log.append([Append("events", 0, events(["m1", "m2"], "web")), Append("events", 1, events(["m1"], "ios"))])
    assert stream.run_once().duplicates == 0  # the same id from two sources, one batch
    event_log.append([Append("events", 2, events(["m2"], "server")), Append("events", 3, events(["m1"], "web"))])
    result = stream.run_once()  # across batches: server's m2 is new, web's m1 a retry
    assert (result.written_events, result.duplicates) == (1, 1)
    assert bronze(home) == [("ios", "m1"), ("server", "m2"), ("web", "m1"), ("web", "m2")]


def test_a_forward_clock_jump_of_ten_years_keeps_the_dedup_state(home, event_log):
    clock = [int(T0.timestamp() * 1000)]
    stream = BronzeStream(home, clock=lambda: clock[0])
    event_log.append([Append("events", 0, events(["old"], "web"))])
    stream.run_once()
    # The collector's clock jumps ten years ahead: one batch is received "in 2034".
    clock[0] += 1000
    event_log.append([Append("events", 0, events(["future"], "web", received_at=T0 + TEN_YEARS))])
    stream.run_once()
    assert len(stream.dedup) == 2  # nothing evicted
    # The SDK retries the old event (clock back to normal, or still ahead): still dropped.
    clock[0] += 1000
    event_log.append([Append("events", 0, events(["old"], "web", received_at=T0 + dt.timedelta(seconds=2)))])
    event_log.append([Append("events", 1, events(["old"], "web", received_at=T0 + TEN_YEARS + dt.timedelta(seconds=2)))])
    assert stream.run_once().duplicates == 2
    # ... and after a restart (the clock is in the checkpoint).
    clock[0] += 1000
    event_log.append([Append("events", 2, events(["old"], "web", received_at=T0 + TEN_YEARS))])
    assert BronzeStream(home, clock=lambda: clock[0]).run_once().duplicates == 1
    assert bronze(home) == [("web", "future"), ("web", "old")]


def test_the_dedup_clock_moves_at_most_by_the_elapsed_processing_time(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series(["a"]), 0, 0)
    state.add(1, pl.Series(["b"]), 10 * 365 * 24 * HOUR, 1 * US)  # received ten years ahead, 1 s later
    state.add(2, pl.Series(["c"]), -10 * 365 * 24 * HOUR, 2 * US)  # and ten years behind
    assert len(state) == 3
    state.add(3, pl.Series(["d"]), 2 * HOUR, 2 * HOUR)  # two real hours later: a, b and c expire
    assert state.filter_new(pl.DataFrame({"event_id": ["a", "b", "c", "d", "e"]}))["event_id"].to_list() == ["a", "b", "c", "e"]
    again = DedupState(tmp_path, dt.timedelta(hours=1))  # the clock is durable
    again.load(3)
    again.add(4, pl.Series(["e"]), 50 * 365 * 24 * HOUR, 2 * HOUR + US)  # a jump after a restart
    assert len(again) == 2  # d is kept
