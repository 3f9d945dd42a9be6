"""Micro-batches are bounded in bytes of stored log records, as well as in events."""

from __future__ import annotations

from headwater.stream.processor import BronzeStream, StreamConfig

from .conftest import append_events, table_rows


def unit_sizes(event_log, partition: int) -> list[int]:
    return [n for (n,) in event_log._conn().execute(
        "SELECT length(payload) FROM records WHERE topic = 'events' AND partition = ? ORDER BY base_offset", (partition,))]


def test_the_log_cuts_a_range_at_a_stored_unit_within_the_byte_budget(event_log):
    for i in range(4):
        append_events(event_log, 0, [f"e{i}-{j}" for j in range(10)])  # 4 units of 10 events
    size = unit_sizes(event_log, 0)[0]
    assert event_log.end_within_bytes("events", 0, 0, 40, 2 * size + 10) == 20
    assert event_log.end_within_bytes("events", 0, 5, 40, 2 * size + 10) == 20  # the unit holding 5 counts whole
    assert event_log.end_within_bytes("events", 0, 0, 40, 1) == 10  # one unit at least: always progress
    assert event_log.end_within_bytes("events", 0, 0, 15, 10**9) == 15  # never past the planned end
    assert event_log.end_within_bytes("events", 0, 40, 40, 1) == 40


def test_batches_stay_within_max_batch_bytes_and_deliver_everything_once(home, event_log):
    ids = []
    for i in range(6):
        for p in (0, 1):
            batch = [f"p{p}-{i}-{j}" for j in range(50)]
            append_events(event_log, p, batch)
            ids += batch
    size = max(unit_sizes(event_log, 0) + unit_sizes(event_log, 1))
    budget = 4 * size  # two units per partition with a backlog
    stream = BronzeStream(home, StreamConfig(max_batch_bytes=budget, max_records_per_partition=10_000, compact_every=0))
    results = []
    while (result := stream.run_once()) is not None:
        results.append(result)
    assert [r.input_events for r in results] == [200, 200, 200]
    for n in range(3):
        plan = stream.checkpoint.read_offsets(n)["events"]
        read = sum(sum(unit_sizes(event_log, p)[s // 50 : e // 50]) for p, (s, e) in plan.items())
        assert read <= budget
    got = [r["event_id"] for r in table_rows(home, "bronze.events")]
    assert sorted(got) == sorted(ids)


def test_a_unit_larger_than_the_budget_still_goes_through(home, event_log):
    append_events(event_log, 0, [f"e{j}" for j in range(500)])
    stream = BronzeStream(home, StreamConfig(max_batch_bytes=1024, compact_every=0))
    assert stream.run_once().input_events == 500
    assert stream.run_once() is None
