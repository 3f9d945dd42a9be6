import datetime as dt

import pyarrow as pa
import pytest

from headwater.events import BAD_ROW_SCHEMA, EVENT_SCHEMA
from headwater.log.base import Append
from headwater.log.codec import encode
from headwater.stream.records import conform, read_topic

from .conftest import T0, canonical


def with_extras(t: pa.Table) -> pa.Table:
    return t.append_column("_partition", pa.array([0] * t.num_rows, pa.int32())).append_column(
        "_offset", pa.array(range(t.num_rows), pa.int64())
    )


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop_columns(["event_ts"]), "missing required column"),
        (lambda t: t.set_column(5, "event_ts", pa.array(["yesterday"])), "column event_ts: cannot cast string"),
        (
            lambda t: t.set_column(0, pa.field("event_id", pa.string()), pa.array([None], pa.string())),
            "column event_id: 1 null value",
        ),
    ],
)
def test_invalid_rows_are_refused_naming_the_field_and_the_rule(mutate, message):
    with pytest.raises(ValueError, match=message):
        conform(with_extras(mutate(canonical(["a"]))), EVENT_SCHEMA)


def test_missing_optional_column_is_filled_with_nulls_and_types_are_cast():
    t = canonical(["a"]).drop_columns(["schema_version"])
    t = t.set_column(t.schema.get_field_index("event_ts"), "event_ts", pa.array([T0.replace(tzinfo=None)], pa.timestamp("ms")))
    out = conform(with_extras(t), EVENT_SCHEMA)
    assert out.schema.names == [*EVENT_SCHEMA.names, "_partition", "_offset"]
    assert out.column("schema_version").to_pylist() == [None]
    assert out.column("event_ts").type == EVENT_SCHEMA.field("event_ts").type
    old_bad_row = pa.table({"received_at": [T0], "error_type": ["decode_failure"], "reason": ["r"], "ds": [T0.date()]})
    assert conform(with_extras(old_bad_row), BAD_ROW_SCHEMA).column("protocol").to_pylist() == [None]


def test_a_bad_record_straddling_two_batches_is_dead_lettered_once(event_log):
    event_log.append([Append("events", 0, 2, encode(canonical(["a", "b"])))])
    event_log.append([Append("events", 0, 4, b"junk")])  # offsets 2..5
    event_log.append([Append("events", 0, 1, encode(canonical(["c"]).drop_columns(["event_id"])))])  # offset 6
    first, dead1 = read_topic(event_log, "events", {0: (0, 4)}, EVENT_SCHEMA)
    second, dead2 = read_topic(event_log, "events", {0: (4, 7)}, EVENT_SCHEMA)
    assert first.column("event_id").to_pylist() == ["a", "b"] and second is None
    assert [(d.record.offset, d.record.count) for d in dead1] == [(2, 4)]
    assert [(d.record.offset, d.error) for d in dead2] == [(6, "invalid record: missing required column(s) event_id")]


def test_records_with_different_but_castable_schemas_are_read_together(event_log):
    narrow = canonical(["x"], event_ts=T0 + dt.timedelta(seconds=1)).drop_columns(["context"])
    event_log.append([Append("events", 1, 1, encode(canonical(["w"])))])
    event_log.append([Append("events", 1, 1, encode(narrow))])
    table, dead = read_topic(event_log, "events", {1: (0, 2)}, EVENT_SCHEMA)
    assert not dead and table.column("event_id").to_pylist() == ["w", "x"]
    assert table.column("context").to_pylist() == ["{}", None]
