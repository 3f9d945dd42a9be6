"""Typed silver tables: one Delta table ``silver.evt_<snake name>`` per registered event name.

Bronze and ``silver.events`` keep ``properties`` as raw JSON text; each subject of the
registry also gets a table with the event columns and **one column per property**, typed
from its contract. Grain: one row per event of that name in ``silver.events`` (deduplicated),
whether validated (``schema_version`` set) or accepted before the name was registered
(``schema_version`` null; a value that does not fit its column's type reads as null).

Columns: the canonical event's (``EVENT_SCHEMA``) without ``properties`` (``event_id`` …
``schema_version``; join ``silver.events`` on ``event_id`` for its derived columns such as
the resolved person), then the properties in order of first appearance over the subject's versions, then ``ds``. Property
names become snake-case columns (``orderId`` → ``order_id``; a clash with an event column
gets the prefix ``prop_``, a clash between properties a suffix ``_2``, ``_3``…). Types,
from the union of the property's JSON types over all versions (``null`` ignored):

==========================================  =======================================
JSON Schema                                  column
==========================================  =======================================
``integer``                                  ``int64``
``number`` (or ``integer`` and ``number``)  ``float64``
``boolean``                                  ``bool``
``string`` with ``format: date-time``        ``timestamp[us, UTC]``
``string`` with ``format: date``             ``date32``
``string``                                   ``string``
anything else (object, array, mixed)         ``string`` holding the JSON text
==========================================  =======================================

The batch build (:func:`headwater.models.run.build`, ``headwater batch``) runs :func:`build`
after the models, for the ``ds`` range it was asked for (even where it widened
``silver.events``' own range for identity re-stitching: typed tables carry no derived columns).

Writes: each build replaces the ``ds`` partitions of its range in one commit
(:func:`headwater.lake.tables.overwrite_partitions`, ``replaceWhere`` semantics) with Delta
schema evolution (``schema_mode="merge"``): a property added by a new version appears as a
new nullable column; files of partitions outside the range are not rewritten, so older
rows read null there. A column whose *type* changes (a version widening ``integer`` to
``number``) cannot be merged: the table is then rebuilt whole from ``silver.events``
(``schema_mode="overwrite"``), the one case where history is rewritten.

Extraction is one DuckDB query per table over the catalog (``json_extract`` with JSON
pointers, ``TRY_CAST``), never a Python loop over rows.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import duckdb
import pyarrow as pa
from deltalake import write_deltalake

from headwater.config import Home
from headwater.events import EVENT_SCHEMA, TS
from headwater.lake import tables
from headwater.registry.registry import Registry, table_name
from headwater.serve import catalog

EVENT_COLUMNS = [f for f in EVENT_SCHEMA if f.name not in ("properties", "ds")]


@dataclass(frozen=True)
class Column:
    """One property column: ``prop`` (the JSON key), ``name`` (column), Arrow ``type``,
    ``kind`` (``integer``, ``number``, ``boolean``, ``timestamp``, ``date``, ``string``,
    ``json``: how it is extracted)."""

    prop: str
    name: str
    type: pa.DataType
    kind: str


_KINDS = {
    "integer": (pa.int64(), "BIGINT"),
    "number": (pa.float64(), "DOUBLE"),
    "boolean": (pa.bool_(), "BOOLEAN"),
    "timestamp": (TS, "TIMESTAMPTZ"),
    "date": (pa.date32(), "DATE"),
    "string": (pa.string(), None),
    "json": (pa.string(), None),
}


def _snake(name: str) -> str:
    return table_name(name).removeprefix("evt_") or "prop"


def _json_types(schema: object) -> set[str]:
    if not isinstance(schema, dict):
        return set()
    t = schema.get("type")
    if t is not None:
        return {t} if isinstance(t, str) else set(t)
    values = schema.get("enum", [schema["const"]] if "const" in schema else None)
    if values is None:
        return {"any"}
    kinds = {"null" if v is None else "boolean" if isinstance(v, bool) else "integer" if isinstance(v, int)
             else "number" if isinstance(v, float) else "string" if isinstance(v, str) else "any" for v in values}
    return kinds


def _kind(schemas: list[object]) -> str:
    types = set().union(*(_json_types(s) for s in schemas)) - {"null"}
    if types == {"integer"}:
        return "integer"
    if types and types <= {"integer", "number"}:
        return "number"
    if types == {"boolean"}:
        return "boolean"
    if types == {"string"}:
        formats = {s.get("format") for s in schemas if isinstance(s, dict)}
        if formats == {"date-time"}:
            return "timestamp"
        if formats == {"date"}:
            return "date"
        return "string"
    return "json"


def property_columns(schemas: list[dict]) -> list[Column]:
    """The property columns of a subject with versions ``schemas`` (oldest first)."""
    seen: dict[str, list[object]] = {}
    for s in schemas:
        for prop, sub in (s.get("properties") or {}).items():
            seen.setdefault(prop, []).append(sub)
    reserved = {f.name for f in EVENT_COLUMNS} | {"ds", "properties"}
    taken = set(reserved)
    columns = []
    for prop, subs in seen.items():
        base = _snake(prop)
        if base in reserved:
            base = f"prop_{base}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}_{n}"
        taken.add(name)
        kind = _kind(subs)
        columns.append(Column(prop, name, _KINDS[kind][0], kind))
    return columns


def typed_schema(columns: list[Column]) -> pa.Schema:
    """Arrow schema of a typed table: event columns, property columns, ``ds``."""
    return pa.schema(EVENT_COLUMNS + [pa.field(c.name, c.type) for c in columns] + [EVENT_SCHEMA.field("ds")])


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _expr(c: Column) -> str:
    # JSON pointer (RFC 6901) of the key: any key text works, "~" and "/" escaped.
    ptr = _sql_string("/" + c.prop.replace("~", "~0").replace("/", "~1"))
    if c.kind == "json":
        e = f"NULLIF(CAST(json_extract(properties, {ptr}) AS VARCHAR), 'null')"
    elif c.kind == "string":
        e = f"json_extract_string(properties, {ptr})"
    elif c.kind in ("timestamp", "date"):
        e = f"TRY_CAST(json_extract_string(properties, {ptr}) AS {_KINDS[c.kind][1]})"
    else:
        e = f"TRY_CAST(json_extract(properties, {ptr}) AS {_KINDS[c.kind][1]})"
    return f"{e} AS {_quote(c.name)}"


def select_sql(columns: list[Column]) -> str:
    """The query of one typed table: parameters ``$name`` (event name), ``$start``, ``$end``."""
    cols = [_quote(f.name) for f in EVENT_COLUMNS] + [_expr(c) for c in columns] + ["ds"]
    return (
        f"SELECT {', '.join(cols)} FROM silver.events "
        "WHERE event_name = $name AND ds BETWEEN $start AND $end"
    )


def build(
    home: Home,
    start: dt.date,
    end: dt.date,
    con: duckdb.DuckDBPyConnection | None = None,
    registry: Registry | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Rebuild the ``ds`` partitions ``[start, end]`` of every subject's typed table from
    ``silver.events``. ``con``: a catalog connection (a fresh one if None; each written
    table is re-registered in it). Returns ``{"silver.evt_…": rows written}``; ``{}`` when
    no subject is registered or ``silver.events`` does not exist.

    Raises ``ValueError`` if ``start > end``; ``deltalake.exceptions.DeltaError`` from the
    write (nothing is committed for that table then)."""
    if start > end:
        raise ValueError(f"start: {start} is after end {end}")
    own_registry = registry is None
    registry = registry or Registry.from_home(home)
    try:
        subjects = {s: registry.versions(s) for s in registry.subjects()}
    finally:
        if own_registry:
            registry.close()
    if not subjects or not tables.exists(catalog.table_path(home, "silver.events")):
        return {}
    own = con is None
    con = con or catalog.connect(home)
    written = {}
    try:
        for subject, versions in subjects.items():
            t0 = time.perf_counter()
            table = f"silver.{table_name(subject)}"
            rows, s, e = _build_one(home, con, subject, [v.schema for v in versions], table, start, end)
            catalog.register(con, home, table)
            written[table] = rows
            if progress:
                progress(f"{table} {s}..{e}: {rows} rows in {time.perf_counter() - t0:.2f} s")
    finally:
        if own:
            con.close()
    return written


def _build_one(home, con, subject, schemas, table, start, end) -> tuple[int, dt.date, dt.date]:
    columns = property_columns(schemas)
    schema = typed_schema(columns)
    path = catalog.table_path(home, table)
    existing = tables.dataset(path)
    retyped = existing is not None and any(
        f.name in existing.schema.names and existing.schema.field(f.name).type != f.type for f in schema
    )
    if retyped:  # a type changed: rebuild every partition (see the module docstring)
        start, end = con.execute("SELECT min(ds), max(ds) FROM silver.events").fetchall()[0]
        if start is None:
            return 0, start, end
    result = con.sql(select_sql(columns), params={"name": subject, "start": start, "end": end}).to_arrow_reader()
    rows = 0

    def conformed() -> Iterator[pa.RecordBatch]:
        nonlocal rows
        for batch in result:
            batch = batch.cast(schema)
            rows += batch.num_rows
            yield batch

    data = pa.RecordBatchReader.from_batches(schema, conformed())
    if retyped:
        write_deltalake(str(path), data, mode="overwrite", schema_mode="overwrite", partition_by=["ds"])
    else:
        tables.overwrite_partitions(path, data, start, end)
    return rows, start, end
