"""Reading one micro-batch from the event log: decode, validate, dead-letter.

Each log record (an Arrow IPC payload, :mod:`headwater.log.codec`) is decoded and conformed
to its topic's schema on its own, so one bad record never fails the batch. A record is
*dead-lettered* (a row of ``bronze.dead_letter``: topic, partition, first offset, count,
reason, raw payload) when its payload is not Arrow IPC of the announced row count, or when
its rows do not fit the schema: a missing column, a type that does not cast, or a null in a
required field (the reason names the field and the rule).

A record may straddle two batches (batch boundaries are event offsets). Its rows are read by
each batch for the offsets it covers, but a bad record is dead-lettered only by the batch
whose range holds its *first* offset — once, whatever the batch boundaries.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from headwater.lake.schemas import DEAD_LETTER_SCHEMA
from headwater.events import TS
from headwater.log.base import EventLog
from headwater.log.codec import Undecodable, decode


EXTRA = ("_partition", "_offset")  # columns decode() adds: log partition and offset of each row


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema`` (column order and types), keeping :data:`EXTRA` columns;
    a missing *optional* column is filled with nulls (a record written before the column
    was added to the schema).

    Raises ``ValueError`` naming the field and the rule when a required column is missing,
    a column does not cast, or a required field holds nulls."""
    missing = [f.name for f in schema if f.name not in table.column_names and not f.nullable]
    if missing:
        raise ValueError(f"missing required column(s) {', '.join(missing)}")
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ValueError(f"column {f.name}: cannot cast {col.type} to {f.type} ({e})") from None
        if not f.nullable and col.null_count:
            raise ValueError(f"column {f.name}: {col.null_count} null value(s) in a required field")
        cols.append(col)
    cols += [table.column(c) for c in EXTRA]
    return pa.Table.from_arrays(cols, schema=pa.schema([*schema, *(table.schema.field(c) for c in EXTRA)]))


def read_topic(
    log: EventLog, topic: str, plan: dict[int, tuple[int, int]], schema: pa.Schema
) -> tuple[pa.Table | None, list[Undecodable]]:
    """Rows of ``topic`` in the planned ``[start, end)`` ranges, conformed to ``schema``
    (plus ``_partition``/``_offset``), and the bad records first seen by this batch."""
    parts, dead = [], []
    for p, (start, end) in sorted(plan.items()):
        if end <= start:
            continue
        records = log.read(topic, p, start, end)
        try:  # fast path: the partition's records decode and conform together
            t, bad = decode(records, start, end)
            parts += [conform(t, schema)] if t is not None else []
            dead += [d for d in bad if d.record.offset >= start]
            continue
        except (pa.ArrowException, ValueError):
            pass  # one record is invalid or their schemas clash: sort it out record by record
        for rec in records:
            owner = rec.offset >= start  # this batch reports the record if it is bad
            t, bad = decode([rec], start, end)
            if bad:
                dead += bad if owner else []
                continue
            if t is None:
                continue
            try:
                parts.append(conform(t, schema))
            except ValueError as e:
                if owner:
                    dead.append(Undecodable(rec, f"invalid record: {e}"))
    return (pa.concat_tables(parts) if parts else None), dead


def dead_letter_table(dead: list[tuple[str, Undecodable]]) -> pa.Table | None:
    """Rows of ``bronze.dead_letter`` (:data:`DEAD_LETTER_SCHEMA`) for ``(topic, record)`` pairs."""
    if not dead:
        return None
    appended = [dt.datetime.fromtimestamp(d.record.appended_ms / 1000, dt.timezone.utc) for _, d in dead]
    return pa.table(
        {
            "topic": [t for t, _ in dead],
            "partition": [d.record.partition for _, d in dead],
            "offset": [d.record.offset for _, d in dead],
            "count": [d.record.count for _, d in dead],
            "error": [d.error for _, d in dead],
            "payload": [d.record.payload for _, d in dead],
            "appended_at": appended,
            "ds": [a.date() for a in appended],
        },
        schema=DEAD_LETTER_SCHEMA,
    )
