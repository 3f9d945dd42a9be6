"""The SQL catalog: every Delta table of the lake, queryable from DuckDB as ``<layer>.<name>``.

A table lives in ``<home>/lake/<layer>/<name>`` (see :meth:`headwater.config.Home.table_path`)
and is exposed as the view ``<layer>.<name>`` of an in-memory DuckDB database, e.g.
``bronze.events``, ``bronze.bad_rows``, ``silver.events``, ``gold.active_users``,
``realtime.events_per_minute``. The schemas ``bronze``, ``silver``, ``gold`` and ``realtime``
always exist; any other layer directory holding a Delta
table gets a schema of its own. Tables are discovered, not listed: the typed table of each
registered event name (``silver.evt_order_completed``, :mod:`headwater.registry.typed_tables`)
appears as soon as the batch build has written it.

How a table is read. DuckDB's ``delta`` extension cannot be downloaded here, so each table's
current snapshot is opened with delta-rs (``DeltaTable(path).to_pyarrow_dataset()``, files
read through Arrow's local filesystem, see :func:`headwater.lake.tables.dataset`) and registered with the
connection as the temporary view ``__headwater_<layer>__<name>``. That dataset carries, per
data file, a partition expression built from the Delta log (``ds == 2024-03-01`` plus
min/max statistics of every column).
DuckDB pushes projections and filters of a query into the Arrow scan (``EXPLAIN`` shows
``Filters: ds>=...`` on the ``PYTHON_ARROW_SCAN``), and pyarrow drops every file whose
expression contradicts the filter before opening it: a ``WHERE ds ...`` query reads only the
files of the matching partitions (partition pruning), with prepared parameters too.

Snapshots. A connection sees the snapshot of each table as of :func:`connect` (or the last
:func:`register` of that table): later commits are not visible until the table is registered
again. A table that does not exist is simply absent, and a query on it fails with DuckDB's
``CatalogException`` naming the table (``Table with name active_users does not exist!``) —
except the stream's side outputs (:data:`SIDE_OUTPUTS`: ``bronze.bad_rows``,
``bronze.dead_letter``, ``bronze.late_events``), which read as empty tables of their schema
until their first row is written: "no late events" is an answer, not an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from headwater.config import Home
from headwater.lake import tables

LAYERS = ("bronze", "silver", "gold", "realtime")  # realtime: the stream's window aggregates

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _source_name(layer: str, name: str) -> str:
    """Name of the (temporary) Arrow scan a view ``layer.name`` selects from."""
    return f"__headwater_{layer}__{name}"


def list_tables(home: Home) -> list[str]:
    """Names ``"<layer>.<name>"`` of every existing Delta table under ``<home>/lake``, sorted.

    Directories that are not Delta tables, or whose names are not plain SQL identifiers
    (``[A-Za-z_][A-Za-z0-9_]*``), are ignored."""
    lake = home.root / "lake"
    if not lake.is_dir():
        return []
    found = []
    for layer_dir in sorted(p for p in lake.iterdir() if p.is_dir()):
        if not _IDENT.match(layer_dir.name):
            continue
        for table_dir in sorted(p for p in layer_dir.iterdir() if p.is_dir()):
            if _IDENT.match(table_dir.name) and tables.exists(table_dir):
                found.append(f"{layer_dir.name}.{table_dir.name}")
    return found


def register(con: duckdb.DuckDBPyConnection, home: Home, table: str) -> bool:
    """(Re-)register ``table`` (``"<layer>.<name>"``) in ``con`` at its current Delta snapshot.

    Creates the schema if needed and replaces the view, so a connection can pick up a commit
    made after :func:`connect` (the batch runner does this after writing each model).
    Returns ``False`` (and leaves ``con`` unchanged) if the table does not exist.
    Raises ``ValueError`` if ``table`` is not of the form ``layer.name``."""
    layer, _, name = table.partition(".")
    ds = tables.dataset(table_path(home, table))
    if ds is None:
        return False
    _view(con, layer, name, ds)
    return True


def _view(con: duckdb.DuckDBPyConnection, layer: str, name: str, data: Any) -> None:
    """Expose ``data`` (an Arrow dataset or table) as the view ``layer.name``."""
    source = _source_name(layer, name)
    con.register(source, data)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(layer)}")
    con.execute(f"CREATE OR REPLACE VIEW {_quote(layer)}.{_quote(name)} AS SELECT * FROM {_quote(source)}")


def _side_outputs() -> dict[str, pa.Schema]:
    from headwater.events import BAD_ROW_SCHEMA
    from headwater.stream.late import LATE_SCHEMA
    from headwater.stream.records import DEAD_LETTER_SCHEMA

    return {"bronze.bad_rows": BAD_ROW_SCHEMA, "bronze.dead_letter": DEAD_LETTER_SCHEMA, "bronze.late_events": LATE_SCHEMA}


SIDE_OUTPUTS = _side_outputs()
"""Tables that exist for queries even before their first row: name -> Arrow schema."""


def connect(home: Home) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection where every existing lake table is the view ``layer.name``.

    The session time zone is UTC, so ``timestamp[us, UTC]`` columns (``event_ts``,
    ``received_at``) display and truncate in UTC. Each table is read at its snapshot as of
    this call (see the module docstring for pruning and snapshot semantics). The caller owns
    the connection and should ``close()`` it. Raises ``deltalake.exceptions.DeltaError`` if
    a table's log cannot be read."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for layer in LAYERS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(layer)}")
    for table in list_tables(home):
        register(con, home, table)
    for table, schema in SIDE_OUTPUTS.items():
        if not tables.exists(table_path(home, table)):
            layer, _, name = table.partition(".")
            _view(con, layer, name, schema.empty_table())
    return con


def query(home: Home, sql: str, params: dict[str, Any] | list[Any] | None = None) -> pa.Table:
    """Run ``sql`` (DuckDB dialect) over a fresh :func:`connect` and return the result as Arrow.

    ``params`` are bound as DuckDB prepared parameters (``$name`` for a dict, ``?``/``$1`` for
    a list). A statement without a result (``SET``, ``CREATE``) gives an empty table. The
    connection is closed afterwards: views or settings created here do not persist. Raises ``duckdb.CatalogException`` for a table that does not exist,
    ``duckdb.ParserException`` / ``duckdb.BinderException`` for invalid SQL."""
    con = connect(home)
    try:
        rel = con.sql(sql, params=params)
        return rel.to_arrow_table() if rel is not None else pa.table({})
    finally:
        con.close()


def table_path(home: Home, table: str) -> Path:
    """Directory of the Delta table named ``"<layer>.<name>"``."""
    layer, _, name = table.partition(".")
    if not (_IDENT.match(layer) and _IDENT.match(name)):
        raise ValueError(f"table: expected '<layer>.<name>' (SQL identifiers), got {table!r}")
    return home.table_path(layer, name)
