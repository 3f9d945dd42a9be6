"""Column mapping of file and log sources, compiled to one DuckDB query.

A :class:`Mapping` says which input column is the user id, the anonymous id, the event
name, the event time (and how to read it), the properties and, optionally, the event id and
type. :func:`mapped_query` compiles it into a query over the source rows that returns, per
row, the mapped values, the bad-row reason if a rule fails, and the event id — all in
DuckDB's vectorised engine, no per-row Python.

Output columns (``MAPPED_COLUMNS``): ``_row`` (row / line number), ``_error_type``
(``decode_failure`` | ``envelope_violation`` | NULL), ``_error`` (reason naming the row, the
column and the rule), ``_payload`` (the input row as text, for the bad row), ``event_id``,
``event_type``, ``event_name``, ``user_raw``, ``anon_raw`` (raw ids: the caller tokenises
them), ``event_ts`` (TIMESTAMPTZ, UTC), ``properties`` (JSON object text), ``platform``
(NULL when not mapped).

Rules, checked in this order (the first failure is the reason): the row decodes; user id or
anonymous id non-empty; event type one of ``EVENT_TYPES``; a track event has a non-empty
event name; the timestamp is present and parses; the properties are a JSON object.

Event time: ISO 8601 / RFC 3339 text or a native timestamp by default (naive values are
UTC), a ``strftime`` pattern with ``timestamp_format`` (DuckDB ``strptime``), or a number of
seconds / milliseconds / microseconds since the Unix epoch with ``timestamp_unit``.

Event id: the mapped column when it has a value, else derived — a UUID formatted from
``md5(source, basis)`` where the source chooses the basis (file import: the row's mapped
values and their occurrence number, in row order, among identical rows; logs: the line's byte offset and
text). Deterministic, so re-reading the same input gives the same ids and the stream's and
silver's dedup remove the copies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from headwater.errors import InvalidInputError
from headwater.events import DECODE_FAILURE, ENVELOPE_VIOLATION, EVENT_TYPES

TIMESTAMP_UNITS = {"s": 1_000_000, "ms": 1_000, "us": 1}
MAPPED_COLUMNS = (
    "_row", "_error_type", "_error", "_payload", "event_id", "event_type", "event_name",
    "user_raw", "anon_raw", "event_ts", "properties", "platform",
)
_NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE")


@dataclass(frozen=True)
class Mapping:
    """Which input column plays which role. ``timestamp`` is required, and at least one of
    ``user_id`` / ``anonymous_id``; ``event`` names the event (required for track events);
    ``event_type`` (a column) defaults to ``track`` for every row; ``properties`` is a column
    holding a JSON object — when None, every unmapped column becomes a property;
    ``platform`` (a column, lowercased) fills the canonical ``platform`` (else the source's default).
    Raises :class:`~headwater.errors.InvalidInputError` naming the option for an impossible mapping."""

    timestamp: str
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    event_type: str | None = None
    event_id: str | None = None
    properties: str | None = None
    platform: str | None = None
    timestamp_format: str | None = None
    timestamp_unit: str | None = None

    def __post_init__(self):
        if not (self.user_id or self.anonymous_id):
            raise InvalidInputError("mapping: name the user id column, the anonymous id column, or both", field="mapping")
        if not (self.event or self.event_type):
            raise InvalidInputError("event: name the event name column (without an event type column every row is a track event, which needs a name)", field="event")
        if self.timestamp_unit is not None and self.timestamp_unit not in TIMESTAMP_UNITS:
            raise InvalidInputError(f"timestamp_unit: must be one of {', '.join(TIMESTAMP_UNITS)}, got {self.timestamp_unit!r}", field="timestamp_unit")
        if self.timestamp_unit and self.timestamp_format:
            raise InvalidInputError("timestamp_format, timestamp_unit: give one or the other, not both", field="timestamp_format")

    def roles(self) -> dict[str, str]:
        """``{role: column}`` of the mapped roles, e.g. ``{"user id": "uid", "timestamp": "ts"}``."""
        roles = {
            "user id": self.user_id, "anonymous id": self.anonymous_id, "event name": self.event,
            "event type": self.event_type, "event id": self.event_id, "properties": self.properties, "platform": self.platform,
            "timestamp": self.timestamp,
        }
        return {r: c for r, c in roles.items() if c}

    def id_columns(self) -> tuple[str, ...]:
        """Columns holding identifiers (tokenised in bad-row payloads too)."""
        return tuple(c for c in (self.user_id, self.anonymous_id) if c)


def lit(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ident(name: str) -> str:
    """``name`` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _uuid_text(h: str) -> str:
    """SQL of the 32 lowercase hex digits in column ``h`` as UUID text (8-4-4-4-12): their 16
    bytes cast to a UUID: the same text as cutting the hex into five pieces with ``substr``
    or parsing it as a UUID, at half the cost of the one and a third of the other."""
    return f"CAST(CAST(unhex({h}) AS UUID) AS VARCHAR)"


def renumber_repeats(con: duckdb.DuckDBPyConnection, table: str, source: str) -> None:
    """Finish the derived event ids of DuckDB table ``table`` (rows of :func:`mapped_query` with
    the mapped values as basis, plus ``_part``, the query that made them; ``source``: its
    ``$source``): a row whose mapped values repeat those of n - 1 earlier rows of its part (by
    ``_row``; rows with an event id count too) gets occurrence number n in its derived id
    instead of 1. Then drops the helper columns ``_repeat`` and ``_derived``."""
    basis = "concat_ws(chr(31), user_raw, anon_raw, event_type, event_name, epoch_us(event_ts), properties)"  # _hw_basis, from its columns
    con.execute(f"""
        UPDATE {table} SET event_id = {_uuid_text('r.h')}
        FROM (SELECT rid, md5($source || chr(31) || basis || chr(31) || occ) AS h
              FROM (SELECT rowid AS rid, _derived, {basis} AS basis, row_number() OVER (PARTITION BY _part, {basis} ORDER BY _row) AS occ
                    FROM {table} WHERE _repeat IN (SELECT _repeat FROM {table} GROUP BY ALL HAVING count(*) > 1))
              WHERE occ > 1 AND _derived) r
        WHERE {table}.rowid = r.rid""", {"source": source}).fetchall()
    for helper in ("_repeat", "_derived"):
        con.execute(f"ALTER TABLE {table} DROP COLUMN {helper}").fetchall()


def _trimmed(text: str) -> str:
    """SQL of ``trim(text)``, at half its cost for the usual value: ``trim`` strips only
    Unicode space separators (category Zs: U+0020, and non-ASCII ones), so an all-ASCII text
    (as many bytes as characters) that neither starts nor ends with a space is kept as it is."""
    return f"CASE WHEN strlen({text}) = length({text}) AND NOT starts_with({text}, ' ') AND NOT ends_with({text}, ' ') THEN {text} ELSE trim({text}) END"


def quoted(expr: str) -> str:
    """SQL of a value quoted in a reason: the JSON string of a text of at most 64 characters,
    else ``a value of N characters``. Never a cut-off piece: half an email or phone number is
    not recognised by the PII scrubber that every bad row goes through, a whole one is."""
    return f"CASE WHEN length({expr}) <= 64 THEN CAST(to_json({expr}) AS VARCHAR) ELSE 'a value of ' || length({expr}) || ' characters' END"


def check_columns(mapping: Mapping, columns: dict[str, str], what: str) -> None:
    """:class:`~headwater.errors.InvalidInputError` naming the role and the columns of ``what`` if a mapped column is absent,
    or if a numeric timestamp column has no ``timestamp_unit``. ``columns``: name → DuckDB type."""
    for role, col in mapping.roles().items():
        if col not in columns:
            raise InvalidInputError(f"mapping: column {col!r} ({role}) is not in {what}; its columns are {', '.join(map(repr, columns))}", field="mapping")
    ts_type = columns[mapping.timestamp].upper()
    if ts_type in _NUMERIC and not mapping.timestamp_unit:
        raise InvalidInputError(
            f"timestamp_unit: column {mapping.timestamp!r} holds numbers ({ts_type}): give the epoch unit (s, ms or us)",
            field="timestamp_unit",
        )


def mapped_query(
    mapping: Mapping,
    *,
    rows: str,
    value: Callable[[str], str],
    others: str,
    payload: str,
    basis: str | None,
    loc: str,
    ts_type: str = "VARCHAR",
) -> str:
    """The mapping query (parameter ``$source``: the source name, part of derived ids).

    ``rows``: SQL of the input relation (aliased ``src``) with columns ``_row`` and
    ``_decode_error`` (NULL for a readable row); ``value(column)``: SQL of a column's value;
    ``others``: SQL of the JSON object of the unmapped columns; ``payload``: SQL of the row
    as text; ``basis``: SQL of the id basis, or None for the mapped values + occurrence
    number — then the rows also have ``_repeat`` and ``_derived``, and their ids are final
    once :func:`renumber_repeats` ran over the table they were stored in; ``loc``: ``"row"``
    or ``"line"``, for reasons; ``ts_type``: DuckDB type of the timestamp column."""
    m = mapping

    def col(c: str | None) -> str:
        return f"NULLIF({_trimmed(f'CAST({value(c)} AS VARCHAR)')}, '')" if c else "NULL"

    def named(role: str, c: str) -> str:  # 'row 7: column "ts" (timestamp): '
        return f"'{loc} ' || _row || ': ' || {lit(f'column {ident(c)} ({role}): ')}"

    ts = value(m.timestamp)
    if m.timestamp_unit:
        ts_expr = f"try(make_timestamp(CAST(round(TRY_CAST({ts} AS DOUBLE) * {TIMESTAMP_UNITS[m.timestamp_unit]}) AS BIGINT)))::TIMESTAMPTZ"
        expected = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}[m.timestamp_unit] + " since the Unix epoch"
    elif m.timestamp_format:
        ts_expr = f"try_strptime(CAST({ts} AS VARCHAR), {lit(m.timestamp_format)})::TIMESTAMPTZ"
        expected = f"format {m.timestamp_format}"
    elif ts_type.upper().startswith(("TIMESTAMP", "DATE")):
        ts_expr = f"CAST({ts} AS TIMESTAMPTZ)"
        expected = "a timestamp"
    else:
        ts_expr = f"TRY_CAST({ts} AS TIMESTAMPTZ)"
        expected = "ISO 8601, e.g. 2024-03-01T12:00:00Z"

    props = others
    if m.properties:  # a JSON text column, or a nested (struct / map) one serialised
        p = value(m.properties)
        props = f"CASE WHEN typeof({p}) IN ('VARCHAR', 'JSON') THEN CAST({p} AS VARCHAR) ELSE CAST(to_json({p}) AS VARCHAR) END"

    ids = [c for c in (m.user_id, m.anonymous_id) if c]
    who = " and ".join(f"column {ident(c)} ({r})" for c, r in ((m.user_id, "user id"), (m.anonymous_id, "anonymous id")) if c)
    types = ", ".join(lit(t) for t in EVENT_TYPES)
    type_expr = f"lower({col(m.event_type)})" if m.event_type else "'track'"
    rules = [
        "WHEN _decode_error IS NOT NULL THEN _decode_error",
        f"WHEN _hw_user IS NULL AND _hw_anon IS NULL THEN '{loc} ' || _row || ': ' || "
        + lit(f"{who} {'are both' if len(ids) > 1 else 'is'} empty (a user id or an anonymous id is required)"),
    ]
    if m.event_type:
        rules.append(
            f"WHEN _hw_type IS NULL OR _hw_type NOT IN ({types}) THEN {named('event type', m.event_type)} || "
            f"coalesce({quoted('_hw_type')}, 'empty') || {lit(' is not one of ' + ', '.join(EVENT_TYPES))}"
        )
    name_rule = named("event name", m.event) if m.event else f"'{loc} ' || _row || ': event name: '"
    rules += [
        f"WHEN _hw_type = 'track' AND _hw_name IS NULL THEN {name_rule} || 'empty (track events need a non-empty event name)'",
        f"WHEN {ts} IS NULL THEN {named('timestamp', m.timestamp)} || 'empty (the event time is required)'",
        # The value as text only for the rows that reach this rule (a cast of every row cost ~10 %).
        f"WHEN _hw_ts IS NULL THEN {named('timestamp', m.timestamp)} || {quoted(f'CAST({ts} AS VARCHAR)')} || {lit(f' is not a timestamp (expected {expected})')}",
    ]
    if m.properties:  # ``others`` is an object by construction (a struct's JSON, a merge patch of an object)
        rules.append(f"WHEN NOT json_valid(_hw_props) OR json_type(_hw_props) <> 'OBJECT' THEN {named('properties', m.properties)} || 'not a JSON object'")
    inner = f"""
        SELECT
            _row,
            _decode_error,
            {col(m.user_id)} AS _hw_user,
            {col(m.anonymous_id)} AS _hw_anon,
            {type_expr} AS _hw_type,
            {col(m.event)} AS _hw_name,
            {ts_expr} AS _hw_ts,
            coalesce(CAST({props} AS VARCHAR), '{{}}') AS _hw_props,
            {col(m.event_id)} AS _hw_eid,
            lower({col(m.platform)}) AS _hw_platform,
            CASE {' '.join(rules)} END AS _hw_error,
            CASE WHEN _hw_error IS NOT NULL THEN {payload} END AS _hw_payload,
            {basis if basis is not None else "concat_ws(chr(31), _hw_user, _hw_anon, _hw_type, _hw_name, epoch_us(_hw_ts), _hw_props)"} AS _hw_basis
        FROM ({rows}) src"""
    # Occurrence number (mapped values as the basis; rows with an event id count too): every
    # derived id is made here as a first occurrence's; renumber_repeats() then fixes the rare
    # rows whose basis repeats, found by ``_repeat`` (ranking here cost a second copy of every row).
    repeat = ", hash(_hw_basis) AS _repeat, _hw_eid IS NULL AS _derived" if basis is None else ""
    occurrence = " || chr(31) || 1" if basis is None else ""
    return f"""
        SELECT
            _row,
            CASE WHEN _decode_error IS NOT NULL THEN {lit(DECODE_FAILURE)} WHEN _hw_error IS NOT NULL THEN {lit(ENVELOPE_VIOLATION)} END AS _error_type,
            _hw_error AS _error,
            _hw_payload AS _payload,
            coalesce(_hw_eid, {_uuid_text('_hw_h')}) AS event_id,
            _hw_type AS event_type,
            _hw_name AS event_name,
            _hw_user AS user_raw,
            _hw_anon AS anon_raw,
            _hw_ts AS event_ts,
            _hw_props AS properties,
            _hw_platform AS platform{repeat}
        FROM (SELECT *, CASE WHEN _hw_eid IS NULL THEN md5($source || chr(31) || _hw_basis{occurrence}) END AS _hw_h FROM ({inner}))"""
