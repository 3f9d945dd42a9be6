"""The value encoding of the Kafka event log: one JSON object per message (docs/kafka.md).

A message's value is the UTF-8 JSON object of one row of the topic's canonical schema
(:data:`headwater.events.EVENT_SCHEMA` for ``events``, :data:`~headwater.events.BAD_ROW_SCHEMA`
for ``bad_rows``): one member per column, ``null`` for a null; strings as JSON strings;
timestamps as ISO 8601 with offset, microseconds (``"2024-03-01T12:00:00.123456+00:00"``);
dates as ``"YYYY-MM-DD"``. Any Kafka consumer reads it with a JSON deserializer (Spark:
``from_json``). Headers: ``content-type: application/json`` and
``headwater-schema-version: 1`` (:data:`SCHEMA_VERSION`, the version of this encoding of the
canonical columns; a consumer refuses a version it does not know).

Both directions are columnar: encoding writes the whole table as NDJSON with Polars (one line
per row, and JSON escapes every newline inside strings, so lines are rows); decoding joins a
read's values with newlines and parses them in one ``pyarrow.json`` call against the reader's
schema. Only when that fails (a bad message among them) are the messages parsed one by one,
to tell the good from the dead letters.
"""

from __future__ import annotations

import io

import polars as pl
import pyarrow as pa
import pyarrow.json as pj

from headwater.errors import InvalidInputError
from headwater.log.schema import conform

SCHEMA_VERSION = b"1"
VERSION_HEADER = "headwater-schema-version"
HEADERS = [("content-type", b"application/json"), (VERSION_HEADER, SCHEMA_VERSION)]


def encode(table: pa.Table) -> list[bytes]:
    """One JSON value per row of ``table`` (module doc), in row order."""
    if table.num_rows == 0:
        return []
    buf = io.BytesIO()
    pl.from_arrow(table).write_ndjson(buf)
    lines = buf.getvalue().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    assert len(lines) == table.num_rows, "NDJSON lines are rows"  # JSON escapes newlines in strings
    return lines


def _parse_schema(schema: pa.Schema) -> pa.Schema:
    """What ``pyarrow.json`` parses into before :func:`conform`: every field nullable (conform
    checks required ones and names the column), dates as strings (the JSON reader does not
    parse a date from a string; the cast in conform does)."""
    return pa.schema([pa.field(f.name, pa.string() if pa.types.is_date(f.type) else f.type) for f in schema])


def _parse(data: bytes, schema: pa.Schema, rows: int, one: bool = False) -> pa.Table:
    """``data`` (NDJSON of ``rows`` objects; ``one``: a single object, newlines allowed)
    conformed to ``schema``; raises ``pa.ArrowException`` / :class:`InvalidInputError`."""
    table = pj.read_json(
        io.BytesIO(data),
        read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(data) + 1)),
        parse_options=pj.ParseOptions(explicit_schema=_parse_schema(schema), unexpected_field_behavior="ignore", newlines_in_values=one),
    )
    if table.num_rows != rows:
        raise InvalidInputError(f"expected {rows} JSON object(s), found {table.num_rows}", field="value")
    return conform(table, schema)


def decode(values: list[bytes | None], versions: list[bytes | None], schema: pa.Schema) -> tuple[pa.Table, list[int], list[tuple[int, str]]]:
    """Decode message ``values`` (with their :data:`VERSION_HEADER` values, ``None`` where
    absent) into ``schema``.

    Returns the events table (the good messages, in order), the indices of those messages,
    and ``(index, error)`` of each message that is not an event of ``schema``: no value, an
    unknown schema version, not one JSON object, or columns that break the schema. Never
    raises on bad bytes."""
    bad: dict[int, str] = {}
    for i, (value, version) in enumerate(zip(values, versions)):
        if value is None:
            bad[i] = "no value (a tombstone)"
        elif version is not None and version != SCHEMA_VERSION:
            bad[i] = f"unsupported {VERSION_HEADER} {version[:20]!r} (this reader knows {SCHEMA_VERSION.decode()})"
    kept = [i for i in range(len(values)) if i not in bad]
    if kept:
        try:  # fast path: every message is good
            table = _parse(b"\n".join(values[i] for i in kept), schema, len(kept))
            return table, kept, sorted(bad.items())
        except (pa.ArrowException, InvalidInputError, UnicodeDecodeError):
            pass
    tables, good = [], []
    for i in kept:
        try:
            tables.append(_parse(values[i], schema, 1, one=True))
            good.append(i)
        except (pa.ArrowException, InvalidInputError, UnicodeDecodeError) as e:
            bad[i] = f"{type(e).__name__}: {e}"
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return table, good, sorted(bad.items())
