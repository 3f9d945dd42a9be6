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

Each typed table is a model of the batch DAG (:func:`headwater.models.dag.typed_models`,
one per subject, discovered when the DAG is built): it reads ``silver.events`` day for day, so
``headwater batch``, ``headwater backfill`` and the late-data sensor build and restate it like
any other partitioned model. This module derives its declaration (:func:`table_spec`: the
``silver.evt_*`` family's partitioning and grain, the schema from the contract) and its rows
(:func:`extract`).

Writes (by the batch runner, :func:`headwater.models.run.run_model`): each run replaces the
``ds`` partitions of its range in one commit with Delta schema evolution: a property added
by a new version appears as a new nullable column; files of partitions outside the range
are not rewritten, so older rows read null there. A column whose *type* changes (a version
widening ``integer`` to ``number``) cannot be merged: the table is then rebuilt whole from
``silver.events``, the one case where history is rewritten.

Extraction is one DuckDB query per table over the catalog (``json_extract`` with JSON
pointers, ``TRY_CAST``), never a Python loop over rows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from headwater.events import EVENT_SCHEMA, TS
from headwater.lake import catalog
from headwater.lake.catalog import TableSpec
from headwater.registry.registry import table_name

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


def table_spec(subject: str, columns: Sequence[Column]) -> TableSpec:
    """The declaration of ``subject``'s typed table ``silver.evt_<name>``: the ``silver.evt_*``
    family's partitioning and grain, the schema :func:`typed_schema` of ``columns``."""
    name = f"silver.{table_name(subject)}"
    family = catalog.spec(name)
    return dataclasses.replace(family, name=name, schema=typed_schema(list(columns)),
                               description=f"Typed table of the event {subject!r}: one column per contract property.")


def extract(con: duckdb.DuckDBPyConnection, subject: str, columns: Sequence[Column], start: dt.date, end: dt.date) -> pa.RecordBatchReader:
    """The rows of ``subject``'s typed table for ``ds`` in ``[start, end]``, from the
    ``silver.events`` of SQL catalog connection ``con``, in the column order of
    :func:`typed_schema` (values not yet cast: the runner casts to the schema). Raises
    ``duckdb.CatalogException`` if ``silver.events`` is not registered in ``con``."""
    return con.sql(select_sql(list(columns)), params={"name": subject, "start": start, "end": end}).to_arrow_reader()
