"""The SQL catalog: the lake's tables, queryable from DuckDB as ``<layer>.<name>``.

Each table declared in :mod:`headwater.lake.catalog` is exposed as the view
``<layer>.<name>`` of an in-memory DuckDB database, e.g. ``bronze.events``,
``silver.evt_order_completed``, ``gold.active_users``, ``realtime.events_per_minute``. The
schemas ``bronze``, ``silver``, ``gold`` and ``realtime`` always exist. Each view carries its
catalog description and grain as its comment (``duckdb_views().comment``).

Lazy. Opening the catalog costs nothing per table: :func:`query` registers only the tables
its SQL names (found with sqlglot, DuckDB dialect: every table reference with a schema
part), so ``SELECT 1`` reads no Delta log at all, however many tables and files the lake
holds. A statement sqlglot cannot parse falls back to scanning its text for
``<layer>.<name>`` tokens, then DuckDB reports its own error if the SQL is wrong. Catalog
introspection (``SHOW TABLES``, ``information_schema``, ``duckdb_tables()``…) registers every
existing table, as it has to.

How a table is read. DuckDB's ``delta`` extension cannot be downloaded here, so each table's
snapshot is opened as a pyarrow dataset of exactly the files of its current Delta version
(:meth:`headwater.lake.store.Lake.dataset`) and registered with the connection as the Arrow
scan ``__headwater_<layer>__<name>`` behind the view. Each file carries its partition values
(``ds == 2024-03-01``) as an expression. DuckDB pushes projections and filters of a query
into the Arrow scan (``EXPLAIN`` shows ``Filters: ds>=...`` on the ``ARROW_SCAN``), and
pyarrow drops every file whose partition contradicts the filter before opening it: a
``WHERE ds ...`` query reads only the files of the matching partitions (partition pruning),
with prepared parameters too; inside a file, Parquet row-group statistics skip the rest.

Snapshots. A connection sees each table at its snapshot as of its :func:`register` (done
by :func:`query` / :func:`register_referenced` for the tables a statement names, once per
connection): later commits are not visible until the table is registered again. A table
that does not exist is simply absent, and a query on it fails with DuckDB's
``CatalogException`` naming the table (``Table with name active_users does not exist!``) —
except the stream's side outputs (``empty_until_written`` in the catalog: ``bronze.bad_rows``,
``bronze.dead_letter``, ``bronze.late_events``), which read as empty tables of their schema
until their first row is written: "no late events" is an answer, not an error.
The session time zone is UTC, so ``timestamp[us, UTC]`` columns display and truncate in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from headwater.errors import ForbiddenError, InvalidInputError, NotFoundError, TransientError
from headwater.lake import catalog

if TYPE_CHECKING:
    from headwater.lake.store import Lake

# Names whose use means "which tables are there?": every existing table gets registered.
_INTROSPECTION = re.compile(r"\b(information_schema|duckdb_(tables|views|columns)|show_tables|pragma)\b|^\s*(show|describe\s*;?\s*$)", re.I | re.M)
# A table reference as text: <layer>.<name>, either part possibly quoted. Every reference to a
# lake table matches (a superset: strings and comments match too).
_TOKEN = re.compile(r'"?\b(' + "|".join(catalog.LAYERS) + r')\b"?\s*\.\s*"?([A-Za-z_][A-Za-z0-9_]*)', re.I)


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection holding the (empty) schemas of every layer, session time
    zone UTC. No table is registered yet: :func:`register` / :func:`register_referenced` do
    it. The caller owns the connection and should ``close()`` it."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    for layer in catalog.LAYERS:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(layer)}")
    return con


def register(con: duckdb.DuckDBPyConnection, lake: Lake, table: str, where: str | None = None) -> bool:
    """(Re-)register ``table`` (``"<layer>.<name>"``) in ``con`` at its current snapshot.

    Creates the schema if needed and replaces the view, so a connection can pick up a commit
    made after an earlier registration (the batch runner does this after writing each model).
    A side output that does not exist yet reads as an empty table of its schema. ``where``:
    a SQL condition over the table's columns (trusted text: no user input in it); the view
    then holds only the rows where it holds — the query API computes a metric on read over
    the events matching a property filter this way. Returns ``False`` (and leaves ``con``
    unchanged) if the table does not exist otherwise.
    :class:`headwater.errors.InvalidInputError` if ``table`` is not of the form ``layer.name``,
    :class:`headwater.errors.NotFoundError` if the catalog does not declare it."""
    layer, name = catalog.check_name(table)
    spec = catalog.spec(table)
    try:
        data: Any = lake.dataset(table)
    except NotFoundError:
        if not (spec.empty_until_written and spec.schema is not None):
            return False
        data = spec.schema.empty_table()
    source = f"__headwater_{layer}__{name}"
    con.register(source, data)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(layer)}")
    view = f"{_quote(layer)}.{_quote(name)}"
    condition = f" WHERE {where}" if where else ""
    con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {_quote(source)}{condition}")
    # The catalog's description travels with the view (duckdb_views().comment), so SQL
    # users see what a table is where they query it.
    comment = f"{spec.description} Grain: {spec.grain}.".replace("'", "''")  # COMMENT takes no parameters
    con.execute(f"COMMENT ON VIEW {view} IS '{comment}'")
    return True


def referenced_tables(sql: str) -> set[str] | None:
    """Declared lake tables (``"layer.name"``) that ``sql`` names; ``None`` when it
    introspects the catalog (every table is wanted). Names are matched as written, then
    lower-cased (DuckDB resolves unquoted names case-insensitively)."""
    if _INTROSPECTION.search(sql):
        return None
    found = {(m.group(1), m.group(2)) for m in _TOKEN.finditer(sql)}
    if not found:  # no candidate at all: spare the sqlglot import (~0.3 s) — `SELECT 1` stays instant
        return set()
    import sqlglot
    from sqlglot import exp

    try:
        found = {
            (t.db, t.name)
            for statement in sqlglot.parse(sql, read="duckdb")
            if statement is not None
            for t in statement.find_all(exp.Table)
            if t.db and not t.catalog
        }
    except sqlglot.errors.SqlglotError:
        pass  # DuckDB reports the error; the text's candidates are registered meanwhile
    names = set()
    for db, name in found:
        for candidate in (f"{db}.{name}", f"{db}.{name}".lower()):
            if catalog.declared(candidate):
                names.add(candidate)
                break
    return names


def registered(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Tables (``"layer.name"``) registered in ``con``."""
    rows = con.execute("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary").fetchall()
    return {f"{s}.{v}" for s, v in rows}


def register_referenced(con: duckdb.DuckDBPyConnection, lake: Lake, sql: str,
                        allowed: Callable[[str], bool] | None = None) -> set[str]:
    """Register the tables ``sql`` names that ``con`` does not hold yet (at their current
    snapshot); returns the names registered. Already registered tables keep their snapshot.
    ``allowed``: only tables it accepts are registered (the others stay absent)."""
    wanted = referenced_tables(sql)
    if wanted is None:
        wanted = set(lake.tables()) | {t.name for t in catalog.TABLES if t.empty_until_written}
    if allowed is not None:
        wanted = {t for t in wanted if allowed(t)}
    done = set()
    for table in sorted(wanted - registered(con)):
        if register(con, lake, table):
            done.add(table)
    return done


def query(lake: Lake, sql: str, params: dict[str, Any] | list[Any] | None = None, *,
          tables: Callable[[str], bool] | None = None,
          hw_token: Callable[[pa.Array], pa.Array] | None = None) -> pa.Table:
    """Run ``sql`` (DuckDB dialect) over a fresh :func:`connect` holding the tables it names,
    and return the result as Arrow.

    ``params`` are bound as DuckDB prepared parameters (``$name`` for a dict, ``?``/``$1`` for
    a list). A statement without a result (``SET``, ``CREATE``) gives an empty table. The
    connection is closed afterwards: views or settings created here do not persist.

    ``tables`` makes a restricted session (a read token's role, :mod:`headwater.serve.access`):
    only the tables it accepts are registered (introspection lists only them, any other reads
    as absent), and before ``sql`` runs DuckDB's file system access is disabled and the
    configuration locked, so no ``read_parquet('…/lake/…')``, ``ATTACH`` or ``COPY … TO``
    reaches around the catalog (the registered Arrow scans read through pyarrow and keep
    working). ``None`` (the CLI, the models): every table, no restriction.

    ``hw_token``: a vectorised identifier tokenizer (string array → token array, e.g.
    :meth:`headwater.ingest.tokens.Tokenizer.column`), registered as the SQL function
    ``hw_token(VARCHAR) -> VARCHAR`` (NULL → NULL) so that an admin can join the lake's
    tokens with raw ids; absent by default (``hw_token`` then does not exist).

    Raises :class:`~headwater.errors.NotFoundError` for a table, column or function that does
    not exist, :class:`~headwater.errors.ForbiddenError` for file access in a restricted
    session, :class:`~headwater.errors.InvalidInputError` for invalid SQL or a value DuckDB
    cannot convert, :class:`~headwater.errors.TransientError` for an I/O failure (each with
    DuckDB's message, naming the object and position; the DuckDB error is the ``__cause__``)."""
    with session(lake, sql, tables=tables, hw_token=hw_token) as con, errors():
        rel = con.sql(sql, params=params)
        return rel.to_arrow_table() if rel is not None else pa.table({})


@contextmanager
def session(lake: Lake, sql: str, *, tables: Callable[[str], bool] | None = None,
            hw_token: Callable[[pa.Array], pa.Array] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A :func:`connect` ready to run ``sql``: the tables it names registered, ``hw_token``
    and the restrictions of ``tables`` applied as :func:`query` describes; closed on exit.
    For callers that run ``sql`` themselves (streamed results, a statement timeout with
    ``con.interrupt()``); wrap the execution in :func:`errors`."""
    con = connect(lake)
    try:
        with errors():
            register_referenced(con, lake, sql, tables)
            if hw_token is not None:
                con.create_function("hw_token", hw_token, ["VARCHAR"], "VARCHAR", type="arrow")
            if tables is not None:
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


@contextmanager
def errors() -> Iterator[None]:
    """DuckDB errors raised inside as headwater errors, as :func:`query` documents."""
    try:
        yield
    except duckdb.CatalogException as e:
        raise NotFoundError(str(e), field="sql") from e
    except duckdb.IOException as e:
        raise TransientError(str(e), field="sql") from e
    except duckdb.PermissionException as e:  # file access in a restricted session
        raise ForbiddenError(str(e), field="sql") from e
    except duckdb.Error as e:  # parser, binder, conversion, invalid input, ...
        raise InvalidInputError(str(e), field="sql") from e
