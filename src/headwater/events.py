"""The canonical event: the grain of ``bronze.events`` and ``silver.events``, one row per event.

Every source (Segment wire format today) is normalised to this Arrow schema before it
enters the event log; the stream processor and the batch models only ever see it.
Timestamps are ``timestamp[us, tz=UTC]``; ``ds`` is the UTC date of ``event_ts``.
"""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),  # messageId, or derived (collector)
        pa.field("event_type", pa.string(), nullable=False),  # track identify alias page screen group
        pa.field("event_name", pa.string()),  # track event; page/screen name
        pa.field("anonymous_id", pa.string()),  # HMAC token, never the raw id
        pa.field("user_id", pa.string()),  # HMAC token, never the raw id
        pa.field("event_ts", TS, nullable=False),  # event time, clock-skew corrected
        pa.field("received_at", TS, nullable=False),  # processing time at the collector
        pa.field("source", pa.string(), nullable=False),  # the write key's source name
        pa.field("surface", pa.string()),  # web / mobile / server: kind of client library
        pa.field("platform", pa.string()),  # device platform: web, ios, android, desktop, …
        pa.field("properties", pa.string()),  # JSON object (traits for identify/group)
        pa.field("context", pa.string()),  # JSON object, as sent
        pa.field("schema_version", pa.string()),  # registry version validated against
        pa.field("ds", pa.date32(), nullable=False),  # partition: UTC date of event_ts
    ]
)

EVENT_TYPES = ("track", "identify", "alias", "page", "screen", "group")

# Event-log topics: EVENTS_TOPIC records hold EVENT_SCHEMA rows (partitioned by identity
# key), BAD_ROWS_TOPIC records hold BAD_ROW_SCHEMA rows (one partition).
EVENTS_TOPIC = "events"
BAD_ROWS_TOPIC = "bad_rows"

# Bad rows (Snowplow-style failed events): one row per rejected event or request.
BAD_ROW_SCHEMA = pa.schema(
    [
        pa.field("received_at", TS, nullable=False),
        pa.field("source", pa.string()),  # null when the write key was not recognised
        pa.field("error_type", pa.string(), nullable=False),  # size_violation, envelope_violation, decode_failure
        pa.field("reason", pa.string(), nullable=False),  # names the field and the rule
        pa.field("payload", pa.string()),  # the rejected JSON, identifiers tokenised where decodable
        pa.field("ds", pa.date32(), nullable=False),  # UTC date of received_at
    ]
)
