"""Conforming stored events to a reader's schema: what a backend applies on read (Kafka's
value deserializer), so that events written before a column was added still read."""

from __future__ import annotations

import pyarrow as pa

from headwater.errors import InvalidInputError


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` cast to ``schema``: its columns in its order and types, other columns
    dropped, a missing *optional* column filled with nulls.

    Raises :class:`InvalidInputError` (``field`` = the column) naming the rule when a
    required column is missing, a column does not cast, or a required field holds nulls."""
    missing = [f.name for f in schema if f.name not in table.column_names and not f.nullable]
    if missing:
        raise InvalidInputError(f"missing required column(s) {', '.join(missing)}", field=missing[0])
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise InvalidInputError(f"column {f.name}: cannot cast {col.type} to {f.type} ({e})", field=f.name) from None
        if not f.nullable and col.null_count:
            raise InvalidInputError(f"column {f.name}: {col.null_count} null value(s) in a required field", field=f.name)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)
