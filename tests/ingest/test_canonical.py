"""Canonical event building: typed columns (Python or Arrow) → ``EVENT_SCHEMA``, event time,
derived ids, client surface, and the outcome of a request."""

from __future__ import annotations

import datetime as dt
import uuid

import pyarrow as pa

from headwater.events import EVENT_SCHEMA, TS
from headwater.ingest.badrows import BadRow
from headwater.ingest.canonical import (
    EVENT_ID_NAMESPACE,
    EventColumns,
    Normalized,
    Rejection,
    build_events,
    derive_event_id,
    event_id_prefix,
    surface_of,
)

from .conftest import RECEIVED_US

UTC = dt.timezone.utc
RECEIVED = dt.datetime.fromtimestamp(RECEIVED_US / 1e6, UTC)


def row(event_id="e1", ts=None, ots=None, sent=None):
    return (event_id, "track", "Clicked", "anon-tok", None, ts, ots, sent, "web", "web", b'{"a":1}', "{}")


def test_columns_from_rows_and_the_empty_request():
    cols = EventColumns.from_rows([row("e1"), row("e2")])
    assert cols.event_ids == ("e1", "e2") and cols.properties == (b'{"a":1}', b'{"a":1}')
    empty = build_events(EventColumns.from_rows([]), source="s", received_at_us=RECEIVED_US).events
    assert empty.schema == EVENT_SCHEMA and empty.num_rows == 0


def test_event_time_is_skew_corrected_by_sent_at():
    t = dt.datetime(2024, 3, 1, 11, 0, tzinfo=UTC)
    rows = [
        row("own-sent", ts=t, sent=t - dt.timedelta(minutes=5)),  # client clock 5 min behind
        row("batch-sent", ts=t),  # the request's sent_at fills in
        row("original", ots=t.replace(tzinfo=None)),  # naive is UTC; originalTimestamp when no timestamp
        row("no-time"),  # received_at
    ]
    events = build_events(EventColumns.from_rows(rows), source="web-app", received_at_us=RECEIVED_US, sent_at=t).events
    got = dict(zip(events.column("event_id").to_pylist(), events.column("event_ts").to_pylist()))
    assert got == {
        "own-sent": t + (RECEIVED - (t - dt.timedelta(minutes=5))),
        "batch-sent": RECEIVED,
        "original": RECEIVED,
        "no-time": RECEIVED,
    }
    first = events.to_pylist()[0]
    assert (first["source"], first["received_at"], first["schema_version"], first["properties"]) == ("web-app", RECEIVED, None, '{"a":1}')
    assert first["ds"] == first["event_ts"].date()


def test_without_sent_at_event_time_is_as_sent():
    t = dt.datetime(2024, 2, 29, 23, 59, tzinfo=UTC)
    events = build_events(EventColumns.from_rows([row(ts=t)]), source="s", received_at_us=RECEIVED_US).events
    assert events.column("event_ts").to_pylist() == [t] and events.column("ds").to_pylist() == [dt.date(2024, 2, 29)]


def test_arrow_columns_are_taken_as_they_are():
    n = 2
    strings = pa.chunked_array([pa.array(["a", "b"])])
    cols = EventColumns(
        event_ids=strings, event_types=pa.array(["track", "page"]), event_names=pa.nulls(n, pa.string()),
        anonymous_ids=pa.nulls(n, pa.string()), user_ids=pa.array(["u1", "u2"]),
        timestamps=pa.array([dt.datetime(2024, 1, 1), dt.datetime(2024, 1, 2)], pa.timestamp("us")),  # naive: UTC
        original_timestamps=pa.nulls(n, TS), sent_ats=pa.nulls(n, TS),
        surfaces=pa.repeat(pa.scalar("server"), n), platforms=pa.array(["server", "ios"]),
        properties=pa.array(["{}", "{}"]), contexts=pa.repeat(pa.scalar("{}"), n),
    )
    events = build_events(cols, source="import", received_at_us=RECEIVED_US).events
    assert events.schema == EVENT_SCHEMA
    assert events.column("event_ts").to_pylist() == [dt.datetime(2024, 1, 1, tzinfo=UTC), dt.datetime(2024, 1, 2, tzinfo=UTC)]


def test_derived_event_id_is_uuid5_of_source_and_bytes():
    raw = b'{"type":"track","event":"x"}'
    assert derive_event_id(event_id_prefix("web"), raw) == str(uuid.uuid5(EVENT_ID_NAMESPACE, "web\n" + raw.decode()))
    assert derive_event_id(event_id_prefix("web"), raw) != derive_event_id(event_id_prefix("app"), raw)


def test_surface_of_library_names():
    assert [surface_of(n) for n in ("analytics.js", "analytics-next", "analytics-ios", "analytics-kotlin", "my-backend", None)] == [
        "web", "web", "mobile", "mobile", "server", "server"]


def test_normalized_errors_and_bad_rows_come_from_its_rejections():
    bad = BadRow("envelope_violation", "Object missing required field `event` - at `$.batch[1]`", "s", RECEIVED_US, "{}", "segment",
                 "$.batch[1].event", "required")
    norm = Normalized(EVENT_SCHEMA.empty_table(), [Rejection(1, bad)])
    assert norm.errors == [{"index": 1, "code": "envelope_violation", "message": bad.reason}]
    assert norm.bad_rows == [bad] and (norm.accepted, norm.rejected) == (0, 1)
