import datetime as dt

import pyarrow as pa
import pytest

from headwater.errors import InvalidInputError
from headwater.events import BAD_ROW_SCHEMA, EVENT_SCHEMA
from headwater.log.schema import conform

T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def event(**changes) -> pa.Table:
    row = {f.name: None for f in EVENT_SCHEMA} | {
        "event_id": "a", "event_type": "track", "event_ts": T0, "received_at": T0, "source": "s",
        "surface": "server", "platform": "server", "ds": T0.date(),
    }
    return pa.Table.from_pylist([row | changes], schema=EVENT_SCHEMA)


@pytest.mark.parametrize(
    "mutate, message, field",
    [
        (lambda t: t.drop_columns(["event_ts"]), "missing required column", "event_ts"),
        (lambda t: t.set_column(5, "event_ts", pa.array(["yesterday"])), "column event_ts: cannot cast string", "event_ts"),
        (lambda t: t.set_column(0, pa.field("event_id", pa.string()), pa.array([None], pa.string())), "column event_id: 1 null value", "event_id"),
    ],
)
def test_invalid_rows_are_refused_naming_the_field_and_the_rule(mutate, message, field):
    with pytest.raises(InvalidInputError, match=message) as e:
        conform(mutate(event()), EVENT_SCHEMA)
    assert e.value.field == field


def test_missing_optional_column_is_filled_with_nulls_types_are_cast_and_extras_dropped():
    t = event().drop_columns(["schema_version"]).append_column("_extra", pa.array([1]))
    t = t.set_column(t.schema.get_field_index("event_ts"), "event_ts", pa.array([T0.replace(tzinfo=None)], pa.timestamp("ms")))
    out = conform(t, EVENT_SCHEMA)
    assert out.schema == EVENT_SCHEMA
    assert out.column("schema_version").to_pylist() == [None]
    old_bad_row = pa.table({"received_at": [T0], "error_type": ["decode_failure"], "reason": ["r"], "ds": [T0.date()]})
    assert conform(old_bad_row, BAD_ROW_SCHEMA).column("protocol").to_pylist() == [None]
