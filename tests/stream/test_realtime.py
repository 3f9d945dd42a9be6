"""The streaming query end to end on the default pipeline: real-time aggregates, late events,
metrics, backpressure and recovery of window state."""

import datetime as dt

import pytest
from deltalake import DeltaTable

from headwater.lake.store import Lake
from headwater.lake import sql
from headwater.stream.processor import QUERY, BronzeStream, StreamConfig

from .conftest import T0, append_events, table_rows

MIN = dt.timedelta(minutes=1)


def at(minutes: float) -> dict:
    ts = T0 + minutes * MIN
    return {"event_ts": ts, "received_at": ts}


def test_realtime_tables_are_upserted_per_batch_and_queryable_by_name(home, event_log):
    stream = BronzeStream(home)
    append_events(event_log, 0, ["a", "b"], **at(0))
    append_events(event_log, 1, ["c"], **at(0.5))
    stream.run_once()
    append_events(event_log, 0, ["d"], **at(0.7))
    append_events(event_log, 2, ["e"], **at(1.2))
    stream.run_once()
    got = sql.query(
        Lake.of(home), "SELECT window_start, window_end, event_name, platform, events FROM realtime.events_per_minute ORDER BY 1"
    ).to_pylist()
    assert [(r["window_start"], r["window_end"] - r["window_start"], r["events"]) for r in got] == [
        (T0, MIN, 4),
        (T0 + MIN, MIN, 1),
    ]
    assert {(r["event_name"], r["platform"]) for r in got} == {("Order Completed", "server")}
    users = sql.query(Lake.of(home), "SELECT round(users) AS users, events FROM realtime.users_per_hour").to_pylist()
    assert users == [{"users": 2.0, "events": 5}]  # canonical(): users u0, u1 (i % 7 within an append)
    history = DeltaTable(Lake.of(home).uri("realtime.events_per_minute")).history()
    assert [h["operation"] for h in history][:1] == ["MERGE"]
    assert Lake.of(home).committed_batch("realtime.sessions", QUERY) == 1


def test_readers_keep_their_snapshot_while_the_stream_commits(home, event_log):
    stream = BronzeStream(home)
    append_events(event_log, 0, ["a"], **at(0))
    stream.run_once()
    lake = Lake.of(home)
    con = sql.connect(lake)  # a dashboard's connection: snapshot as of registration
    try:
        sql.register(con, lake, "realtime.users_per_minute")
        append_events(event_log, 0, ["b", "c"], **at(0.1))
        stream.run_once()  # the writer is not blocked by the open reader
        assert con.sql("SELECT events FROM realtime.users_per_minute").fetchall() == [(1,)]
        sql.register(con, lake, "realtime.users_per_minute")
        assert con.sql("SELECT events FROM realtime.users_per_minute").fetchall() == [(3,)]
    finally:
        con.close()


def test_sessions_merge_in_the_table_when_an_event_fills_the_gap(home, event_log):
    stream = BronzeStream(home)
    append_events(event_log, 0, ["a"], **at(0))  # user u0 (canonical: i % 7)
    append_events(event_log, 0, ["b"], **at(35))
    stream.run_once()  # watermark: 25 min
    rows = table_rows(home, "realtime.sessions", ["window_start"])
    assert [(r["actor_id"], r["events"]) for r in rows] == [("u0", 1), ("u0", 1)]
    append_events(event_log, 0, ["c"], **at(28))  # < 30 min after a, < 30 min before b
    stream.run_once()
    rows = table_rows(home, "realtime.sessions")
    assert [(r["window_start"], r["window_end"], r["events"]) for r in rows] == [(T0, T0 + 65 * MIN, 3)]


def test_late_events_reach_bronze_and_late_events_with_the_deciding_watermark(home, event_log):
    stream = BronzeStream(home)
    append_events(event_log, 0, ["new"], **at(30))
    stream.run_once()  # watermark: 30 min - 10 min delay
    append_events(event_log, 0, ["old", "ok"], event_ts=T0 + 5 * MIN, received_at=T0 + 31 * MIN)
    append_events(event_log, 0, ["edge"], event_ts=T0 + 20 * MIN, received_at=T0 + 31 * MIN)  # == watermark
    append_events(event_log, 0, ["fine"], event_ts=T0 + 21 * MIN, received_at=T0 + 31 * MIN)
    result = stream.run_once()
    assert result.late_events == 3
    late = table_rows(home, "bronze.late_events", ["event_id"])
    assert [r["event_id"] for r in late] == ["edge", "ok", "old"]
    assert {r["watermark"] for r in late} == {T0 + 20 * MIN}
    assert "realtime.events_per_minute (lateness 0s)" in late[0]["reason"]
    bronze = {r["event_id"] for r in table_rows(home, "bronze.events")}
    assert bronze == {"new", "old", "ok", "edge", "fine"}
    counts = sql.query(Lake.of(home), "SELECT sum(events) AS n FROM realtime.events_per_minute").to_pylist()
    assert counts == [{"n": 2}]  # new + fine


def test_commit_info_carries_the_batch_metrics(home, event_log):
    clock = [int((T0 + 20 * MIN).timestamp() * 1000)]  # after the events: the watermark is capped at processing time + 60 s
    stream = BronzeStream(home, clock=lambda: clock[0])
    append_events(event_log, 0, ["a", "a", "b"], **at(15))
    append_events(event_log, 3, ["c"], **at(12))
    stream.run_once()
    m = stream.checkpoint.read_commit(0)["metrics"]
    assert set(m) >= {"started_ms", "duration_ms", "records_in", "records_out", "watermark_ms", "partitions"}
    assert (m["records_in"], m["records_out"]) == (4, 3)
    ms = lambda d: int(d.timestamp() * 1000)  # noqa: E731
    assert m["watermark_ms"] == ms(T0 + 2 * MIN)  # min over partitions 0 and 3, minus 10 min
    assert m["partitions"]["events/0"] == {
        "start": 0, "end": 3, "max_event_ms": ms(T0 + 15 * MIN), "watermark_ms": ms(T0 + 5 * MIN), "idle": False,
    }
    assert m["partitions"]["events/1"]["idle"] and m["partitions"]["events/1"]["watermark_ms"] is None
    assert m["batch_timestamp_ms"] == clock[0]
    clock[0] += 31_000  # partition 3 has been idle for more than 30 s ...
    append_events(event_log, 0, ["d"], **at(16))
    stream.run_once()
    m = stream.checkpoint.read_commit(1)["metrics"]
    assert m["partitions"]["events/3"]["idle"]
    assert m["watermark_ms"] == ms(T0 + 6 * MIN)  # ... so only partition 0 holds the watermark
    assert m["state_rows"]["dedup"] == 4


def test_a_total_cap_bounds_each_batch_across_partitions(home, event_log):
    for p in range(4):
        append_events(event_log, p, [f"p{p}-{i}" for i in range(30)], **at(0))
    stream = BronzeStream(home, StreamConfig(max_records_per_batch=40))
    sizes = []
    while (r := stream.run_once()) is not None:
        sizes.append(r.input_events)
    assert max(sizes) <= 40 and sum(sizes) == 120


def test_recorded_batches_can_be_re_run_but_only_in_order(home, event_log, tmp_path):
    from headwater.config import Home

    append_events(event_log, 1, ["a", "b"], **at(0))
    stream = BronzeStream(home)
    stream.run_once()
    other = BronzeStream(Home(tmp_path / "other"), event_log=event_log)
    plan, meta = stream.checkpoint.read_offsets(0), stream.checkpoint.read_metadata(0)
    other.run_once(plan, meta["batch_timestamp_ms"])
    with pytest.raises(ValueError, match="plan: events/1 starts at 0, this query is at 2"):
        other.run_once(plan)
    assert table_rows(other.home, "realtime.sessions") == table_rows(stream.home, "realtime.sessions")


def test_window_state_is_recovered_from_the_last_committed_batch(home, event_log):
    stream = BronzeStream(home)
    append_events(event_log, 0, ["a"], **at(0))
    stream.run_once()
    append_events(event_log, 0, ["b"], **at(0.5))
    stream.run_once()
    # Kill -9 after the sinks of batch 1, before its commit: the window state of batch 1 and
    # commits/1 are gone; the restart re-runs batch 1 on the state of batch 0.
    (stream.checkpoint.commits_dir / "1").unlink()
    (stream.checkpoint.state_dir / "windows" / "1.arrow").unlink()
    BronzeStream(home)
    append_events(event_log, 0, ["c"], **at(0.6))
    BronzeStream(home).run_once()
    rows = table_rows(home, "realtime.users_per_minute")
    assert [(r["events"], round(r["users"])) for r in rows] == [(3, 1)]
