import datetime as dt

from headwater.events import EVENT_SCHEMA
from headwater.log import Append
from headwater.stream.records import dead_letter_table, read_topic

from .conftest import T0, canonical


def test_a_bad_record_straddling_two_batches_is_dead_lettered_once(event_log):
    event_log.append([Append("events", 0, canonical(["a", "b"]))])
    event_log._insert([("events", 0, 4, b"junk")])  # offsets 2..5, undecodable
    event_log.append([Append("events", 0, canonical(["c"]).drop_columns(["event_id"]))])  # offset 6
    first, dead1 = read_topic(event_log, "events", {0: (0, 4)}, EVENT_SCHEMA)
    second, dead2 = read_topic(event_log, "events", {0: (4, 7)}, EVENT_SCHEMA)
    assert first.column("event_id").to_pylist() == ["a", "b"] and second.num_rows == 0
    assert first.schema.names == [*EVENT_SCHEMA.names, "_partition", "_offset", "_appended_ms"]
    assert [(d.offset, d.count) for d in dead1] == [(2, 4)]
    assert [(d.offset, d.error) for d in dead2] == [(6, "invalid record: missing required column(s) event_id")]
    rows = dead_letter_table(dead1 + dead2).to_pylist()
    assert [(r["topic"], r["partition"], r["offset"], r["count"]) for r in rows] == [("events", 0, 2, 4), ("events", 0, 6, 1)]
    assert rows[0]["payload"] == b"junk" and rows[0]["ds"] == rows[0]["appended_at"].date()


def test_records_with_different_but_castable_schemas_are_read_together(event_log):
    narrow = canonical(["x"], event_ts=T0 + dt.timedelta(seconds=1)).drop_columns(["context"])
    event_log.append([Append("events", 1, canonical(["w"]))])
    event_log.append([Append("events", 1, narrow)])
    table, dead = read_topic(event_log, "events", {1: (0, 2)}, EVENT_SCHEMA)
    assert not dead and table.column("event_id").to_pylist() == ["w", "x"]
    assert table.column("context").to_pylist() == ["{}", None]
