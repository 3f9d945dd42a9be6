"""Reading one micro-batch from the event log, and its dead letters.

The log returns each topic's events conformed to the topic's schema (one offset per event)
and the stored units it could not read as such — undecodable bytes, a missing column, a type
that does not cast, a null in a required field — as dead letters
(:class:`headwater.log.base.DeadLetter`). They become rows of ``bronze.dead_letter``; the
stream keeps going. The log reports a bad unit straddling two batches once, to the batch
whose range holds its first offset.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from headwater.lake.schemas import DEAD_LETTER_SCHEMA
from headwater.log.base import DeadLetter, EventLog, read_schema


def read_topic(
    log: EventLog, topic: str, plan: dict[int, tuple[int, int]], schema: pa.Schema
) -> tuple[pa.Table, list[DeadLetter]]:
    """Events of ``topic`` in the planned ``[start, end)`` ranges, conformed to ``schema``
    plus ``_partition`` / ``_offset`` / ``_appended_ms`` (:func:`headwater.log.base.read_schema`;
    possibly empty), and the dead letters of this batch."""
    parts, dead = [], []
    for p, (start, end) in sorted(plan.items()):
        if end > start:
            got = log.read(topic, p, start, end, schema)
            parts += [got.events] if got.events.num_rows else []
            dead += got.dead_letters
    return (pa.concat_tables(parts) if parts else read_schema(schema).empty_table()), dead


def dead_letter_table(dead: list[DeadLetter]) -> pa.Table | None:
    """Rows of ``bronze.dead_letter`` (:data:`DEAD_LETTER_SCHEMA`) for ``dead``; ``None`` if empty."""
    if not dead:
        return None
    appended = [dt.datetime.fromtimestamp(d.appended_ms / 1000, dt.timezone.utc) for d in dead]
    return pa.table(
        {
            "topic": [d.topic for d in dead],
            "partition": [d.partition for d in dead],
            "offset": [d.offset for d in dead],
            "count": [d.count for d in dead],
            "error": [d.error for d in dead],
            "payload": [d.payload for d in dead],
            "appended_at": appended,
            "ds": [a.date() for a in appended],
        },
        schema=DEAD_LETTER_SCHEMA,
    )
