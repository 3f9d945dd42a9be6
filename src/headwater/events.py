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
# The stream's bronze query: its consumer group of both topics (the collector reads its lag).
STREAM_GROUP = "bronze"

# Bad rows: the failed-event taxonomy, modelled on Snowplow's failed events
# (https://docs.snowplow.io/docs/fundamentals/failed-events/). One bad row per rejected
# event, or per rejected request when no event of it could be read.
SIZE_VIOLATION = "size_violation"  # event > 32 KB or request > 500 KB (Snowplow: size violation)
DECODE_FAILURE = "decode_failure"  # not readable: bad gzip/base64/UTF-8/JSON (Snowplow: adapter/tracker protocol)
ENVELOPE_VIOLATION = "envelope_violation"  # readable, but breaks the wire protocol: missing id/type/event name, wrong types
SCHEMA_VIOLATION = "schema_violation"  # properties break the event's registered JSON Schema (Snowplow: schema violation)
AUTH_FAILURE = "auth_failure"  # missing/unknown write key (rate-limited, source null; key itself never stored)
BAD_ROW_TYPES = (SIZE_VIOLATION, DECODE_FAILURE, ENVELOPE_VIOLATION, SCHEMA_VIOLATION, AUTH_FAILURE)

BAD_ROW_SCHEMA = pa.schema(
    [
        pa.field("received_at", TS, nullable=False),
        pa.field("source", pa.string()),  # null when the write key was not recognised
        pa.field("error_type", pa.string(), nullable=False),  # one of BAD_ROW_TYPES
        pa.field("reason", pa.string(), nullable=False),  # names the field and the rule
        pa.field("payload", pa.string()),  # the rejected JSON, identifiers and PII tokenised
        pa.field("protocol", pa.string()),  # wire format of the payload: segment, posthog, … (replay)
        pa.field("ds", pa.date32(), nullable=False),  # UTC date of received_at
    ]
)
