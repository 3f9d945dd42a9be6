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
A connection made with ``connect(lake, files=True)`` (the batch build: trusted SQL, no
restriction) reads a local table with DuckDB's own Parquet scan of the same files instead
(``read_parquet([...files], hive_partitioning)``, :meth:`headwater.lake.store.Lake.parquet_files`),
where they allow it: half the CPU of the Arrow scan, and row counts for the planner. An
object store, a protocol with reader features and a side output not written yet keep the
Arrow scan.

Snapshots. A connection sees each table at its snapshot as of its :func:`register` (done
by :func:`query` / :func:`register_referenced` for the tables a statement names, once per
connection): later commits are not visible until the table is registered again. A table
that does not exist is simply absent, and a query on it fails with DuckDB's
``CatalogException`` naming the table (``Table with name active_users does not exist!``) —
except the stream's side outputs (``empty_until_written`` in the catalog: ``bronze.bad_rows``,
``bronze.dead_letter``, ``bronze.late_events``), which read as empty tables of their schema
until their first row is written: "no late events" is an answer, not an error.
The session time zone is UTC, so ``timestamp[us, UTC]`` columns display and truncate in UTC.

The served read path (:func:`read`). A fresh connection per statement costs ~15 ms before any
work (connection, schemas, one registration per table, parsing the SQL): more than running a
query on a small gold table. :func:`read` runs the server's own statements over a small pool
of connections kept per lake (per process): each connection keeps its views, and re-registers
a table only when its Delta version changed since, so a commit is visible to the next
statement. The version is checked without delta-rs (:func:`version`: a stat of the next
commit's log file, ~1 µs, against 0.16 ms for ``DeltaTable.update_incremental()`` on a cached
handle); the snapshot itself comes from :meth:`headwater.lake.store.Lake.dataset` of one
``Lake`` per root, opened once per commit. :func:`reads` records the version of every table
a thread reads, and :func:`unchanged` tells whether those versions are still current: what a
cache of answers (:mod:`headwater.serve.cache`) keys its entries by.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs

from headwater.errors import ForbiddenError, InvalidInputError, NotFoundError, TransientError
from headwater.lake import catalog, objectstore

if TYPE_CHECKING:
    from headwater.lake.store import Lake

# Names whose use means "which tables are there?": every existing table gets registered.
_INTROSPECTION = re.compile(r"\b(information_schema|duckdb_(tables|views|columns)|show_tables|pragma)\b|^\s*(show|describe\s*;?\s*$)", re.I | re.M)
# A table reference as text: <layer>.<name>, either part possibly quoted. Every reference to a
# lake table matches (a superset: strings and comments match too).
_TOKEN = re.compile(r'"?\b(' + "|".join(catalog.LAYERS) + r')\b"?\s*\.\s*"?([A-Za-z_][A-Za-z0-9_]*)', re.I)


def _quote(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def connect(lake: Lake, *, files: bool = False) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection holding the (empty) schemas of every layer, session time
    zone UTC. No table is registered yet: :func:`register` / :func:`register_referenced` do
    it. ``files``: :func:`register` reads a table of a local lake with DuckDB's own Parquet
    scan of its snapshot's files where it can (module docstring), for an unrestricted
    connection only: it reads files by path, which a restricted session forbids (the batch
    build). The caller owns the connection and should ``close()`` it."""
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    if files:
        con.execute(f"SET VARIABLE {_FILES} = true")
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
    if _recording():  # before the snapshot is opened: what is recorded is never newer than what is read
        version(lake, table)
    try:
        data: Any = lake.dataset(table)
    except NotFoundError:
        if not (spec.empty_until_written and spec.schema is not None):
            return False
        data = spec.schema.empty_table()
    source = f"__headwater_{layer}__{name}"
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(layer)}")
    view = f"{_quote(layer)}.{_quote(name)}"
    condition = f" WHERE {where}" if where else ""
    if not _files_view(con, lake, table, data, view, condition):
        con.register(source, data)
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {_quote(source)}{condition}")
    # The catalog's description travels with the view (duckdb_views().comment), so SQL
    # users see what a table is where they query it.
    comment = f"{spec.description} Grain: {spec.grain}.".replace("'", "''")  # COMMENT takes no parameters
    con.execute(f"COMMENT ON VIEW {view} IS '{comment}'")
    return True


_FILES = "headwater_files"  # the connection variable set by connect(files=True)
_GLOB = re.compile(r"[*?\[]")  # characters that make a path a pattern to DuckDB


def _files_view(con: duckdb.DuckDBPyConnection, lake: Lake, table: str, data: Any, view: str, condition: str) -> bool:
    """On a ``connect(files=True)`` connection, make ``view`` DuckDB's Parquet scan of the
    files of ``table``'s snapshot ``data`` (:meth:`Lake.parquet_files`), its columns those of
    the snapshot's schema, in order and type; ``False`` (nothing done) where the Arrow scan
    must read it instead (no such files, or a path DuckDB would take for a pattern).

    Why: DuckDB's own scan costs about half the CPU of the Arrow dataset's, and it gives the
    planner row counts (an Arrow scan is planned as one row: join sides are guessed blind)."""
    if isinstance(data, pa.Table) or not con.execute(f"SELECT getvariable('{_FILES}')").fetchall()[0][0]:
        return False
    found = lake.parquet_files(table)
    if found is None or any(_GLOB.search(p) for p in found[0]):
        return False
    paths, uniform = found
    types = dict(zip(data.schema.names, (str(t) for t in con.from_arrow(data.schema.empty_table()).types)))
    partitions = [c for c in catalog.spec(table).partition_by if c in types]
    hive = ", ".join(f"{_quote(c)}: {types[c]}" for c in partitions)
    options = f"hive_partitioning = true, hive_types = {{{hive}}}" if partitions else "hive_partitioning = false"
    if not uniform:  # columns matched by name, one a file lacks (added by a later schema merge) read as nulls
        options += ", union_by_name = true"
    listed = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    # the casts are no-ops but where a writer stored another physical type (Spark's INT96 timestamps)
    columns = ", ".join(f"CAST({_quote(c)} AS {types[c]}) AS {_quote(c)}" for c in data.schema.names)
    try:
        con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT {columns} FROM read_parquet([{listed}], {options}){condition}")
    except duckdb.BinderException:  # a column of the schema no file holds (a merge that wrote no row)
        return False
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
    return _declared(found)


def _declared(pairs: set[tuple[str, str]]) -> set[str]:
    """The declared tables among ``(layer, name)`` pairs, as written or lower-cased."""
    names = set()
    for db, name in pairs:
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
                # DuckDB takes every parameter of the Python signature as a SQL argument,
                # keyword-only ones with defaults included: the function it sees has one.
                con.create_function("hw_token", lambda ids: hw_token(ids), ["VARCHAR"], "VARCHAR", type="arrow")
            if tables is not None:
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


@contextmanager
def errors() -> Iterator[None]:
    """DuckDB errors raised inside as headwater errors, as :func:`query` documents; an
    object-store failure while a scan reads files (:func:`headwater.lake.objectstore.failure`)
    names the setting to check."""
    try:
        yield
    except duckdb.Error as e:
        raise _error(e) from e


def _error(e: duckdb.Error) -> Exception:
    remote = objectstore.failure("sql", e)
    if remote is not None:
        return remote
    if isinstance(e, duckdb.CatalogException):
        return NotFoundError(str(e), field="sql")
    if isinstance(e, duckdb.IOException):
        return TransientError(str(e), field="sql")
    if isinstance(e, duckdb.PermissionException):  # file access in a restricted session
        return ForbiddenError(str(e), field="sql")
    return InvalidInputError(str(e), field="sql")  # parser, binder, conversion, invalid input, ...


# -- the served read path -----------------------------------------------------------------------
Version = tuple[int, int]
"""A table's version as :func:`version` tells it: (Delta version, mtime of its commit file in ns)."""

POOL_SIZE = 8  # idle connections kept per lake; more are opened under load and closed after use


def read(lake: Lake, sql: str, params: dict[str, Any] | list[Any] | None = None) -> pa.Table:
    """Run ``sql``, one of the server's own statements (trusted text; user input only in
    ``params``), over a pooled connection of ``lake`` holding the tables it names at their
    current versions, and return the result as Arrow (module docstring: the served read path).

    Same result and errors as :func:`query` (``params`` bound as prepared parameters), with
    the pool's differences: a statement must not change the connection (no ``SET``, ``CREATE``,
    ``ATTACH``: they would persist in the pool), and catalog introspection is refused
    (:class:`InvalidInputError`), as every table would then be checked on every statement.
    Thread-safe: each thread takes a connection of its own from the pool."""
    tables = _tables_of(sql)
    if tables is None:
        raise InvalidInputError("sql: catalog introspection is not a served read (use query())", field="sql")
    reader = _reader(lake)
    with reader.connection() as conn, errors():
        for table in sorted(tables):
            reader.refresh(conn, table)
        rel = conn.con.sql(sql, params=params)
        return rel.to_arrow_table() if rel is not None else pa.table({})


def version(lake: Lake, table: str) -> Version | None:
    """``table``'s current version (:data:`Version`), ``None`` if it does not exist; a commit
    always changes it. Local lakes: one or two stats of ``_delta_log`` files (the next commit's
    file appears with each commit; the version is looked up with delta-rs once per process and
    table, and again if the table was deleted and re-created); object stores: the same
    questions as ``HEAD`` requests on the table's filesystem (~5 ms on moto, against ~50 ms to
    open the table with delta-rs).
    Recorded by :func:`reads`. :class:`NotFoundError` for a table the catalog does not declare."""
    return _seen(_reader(lake), table)


@contextmanager
def reads() -> Iterator[dict[tuple[Any, str], Version | None]]:
    """Record the tables this thread reads inside: every table registered (:func:`register`,
    :func:`read`) or looked up (:func:`version`) adds its version, the first one seen if read
    twice (the older, so a change in between shows as a change), to the yielded dict, keyed
    by (the lake, the table). Nested blocks each get their reads. :func:`unchanged` checks
    the record later."""
    recorded: dict[tuple[Any, str], Version | None] = {}
    stack = _local.__dict__.setdefault("reads", [])
    stack.append(recorded)
    try:
        yield recorded
    finally:
        stack.remove(recorded)


def unchanged(recorded: dict[tuple[Any, str], Version | None]) -> bool:
    """Whether every table of a :func:`reads` record is still at its recorded version (a few
    stats per table); the versions checked are recorded in the enclosing :func:`reads`."""
    # a lake without a reader here: recorded before this process forked, so unknown
    return all(key in _READERS and _seen(_READERS[key], table) == seen for (key, table), seen in recorded.items())


class _Connection:
    """A pooled connection and the version of each table it holds a view of (``None``: the
    table was absent, no view)."""

    def __init__(self, lake: Lake):
        self.con = connect(lake)
        self.versions: dict[str, Version | None] = {}


class _Reader:
    """The pooled connections and the known table versions of one lake root, in this process."""

    def __init__(self, lake: Lake, key: tuple):
        # The one Lake of this root in the process: its snapshot cache is opened once per commit.
        self.lake = type(lake)(lake.root, lake.storage_options)
        self.key = key
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._known: dict[str, Version] = {}
        self._logs: dict[str, _Log] = {}  # table -> its _delta_log directory

    @contextmanager
    def connection(self) -> Iterator[_Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = _Connection(self.lake)
        try:
            yield conn
        finally:
            with self._lock:
                keep = len(self._idle) < POOL_SIZE
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.con.close()

    def refresh(self, conn: _Connection, table: str) -> None:
        """Give ``conn`` a view of ``table`` at its current version, unless it has one."""
        current = _seen(self, table)
        if table in conn.versions and conn.versions[table] == current:
            return
        conn.versions.pop(table, None)  # until the view is right again
        # An absent table gets no view (not even of a snapshot cached before it was deleted),
        # unless it reads as empty until written (register() makes that).
        absent = current is None and not catalog.spec(table).empty_until_written
        if absent or not register(conn.con, self.lake, table):
            layer, name = catalog.check_name(table)
            conn.con.execute(f"DROP VIEW IF EXISTS {_quote(layer)}.{_quote(name)}")
        conn.versions[table] = current

    def version(self, table: str) -> Version | None:
        log = self._logs.get(table)
        if log is None:
            uri = self.lake.uri(table)  # checks the name
            # An object store: the same questions as HEAD requests on the table's filesystem,
            # instead of opening the table with delta-rs (a listing and log reads).
            log = self._logs[table] = (None, os.path.join(uri, "_delta_log")) if "://" not in uri else (self.lake.filesystem(table), "_delta_log")
        known = self._known.get(table)
        if known is not None and _stamp(log, known[0]) == known[1]:
            latest = known[0]
            while _stamp(log, latest + 1) is not None:  # Delta versions are dense: each commit adds the next file
                latest += 1
            stamp = _stamp(log, latest) if latest != known[0] else known[1]
            if stamp is not None:
                found = (latest, stamp)
                self._known[table] = found
                return found
        if known is not None:
            # Deleted (and perhaps re-created): Lake.dataset's cached handle would not notice a
            # new log starting at version 0, so snapshots are opened by a new Lake from now on.
            self.lake = type(self.lake)(self.lake.root, self.lake.storage_options)
        # First look, or the table was deleted: ask delta-rs.
        self._known.pop(table, None)
        if not _isdir(log):
            return None
        try:
            latest = self.lake.version(table)
        except NotFoundError:
            return None
        stamp = _stamp(log, latest)
        if stamp is None:
            return None
        self._known[table] = (latest, stamp)
        return (latest, stamp)


_Log = tuple[pafs.FileSystem | None, str]
"""A table's ``_delta_log`` directory: ``(None, local path)``, or ``(the table's pyarrow
filesystem, "_delta_log")`` on an object store."""


def _commit(log: _Log, v: int) -> str:
    return os.path.join(log[1], f"{v:020d}.json")


def _stamp(log: _Log, v: int) -> int | None:
    """The modification time (ns) of commit ``v``'s log file, ``None`` if it does not exist.
    On S3 that is the object's ``Last-Modified``, whole seconds: a table deleted and
    re-created to the same version within one second goes unnoticed there."""
    fs, _ = log
    if fs is None:
        try:
            return os.stat(_commit(log, v)).st_mtime_ns
        except FileNotFoundError:
            return None
    info = _remote_info(fs, _commit(log, v))
    return None if info.type == pafs.FileType.NotFound else info.mtime_ns


def _isdir(log: _Log) -> bool:
    fs, path = log
    return os.path.isdir(path) if fs is None else _remote_info(fs, path).type == pafs.FileType.Directory


def _remote_info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as e:
        raise objectstore.failure("lake root", e) or TransientError(f"lake root: {e}", field="lake.root") from e


_local = threading.local()
_READERS: dict[tuple, _Reader] = {}
_READERS_LOCK = threading.Lock()


def _reader(lake: Lake) -> _Reader:
    key = (lake.root, tuple(sorted((lake.storage_options or {}).items())))
    reader = _READERS.get(key)
    if reader is None:
        with _READERS_LOCK:
            reader = _READERS.setdefault(key, _Reader(lake, key))
    return reader


_INHERITED: list[dict] = []


def _forget_readers() -> None:
    """A forked child starts without its parent's connections (DuckDB's are not fork-safe).

    The inherited ones are set aside, never released: their destructors would run DuckDB's
    teardown in the child, whose other threads did not survive the fork (a segfault, seen when
    pyspark forked its gateway — ``preexec_fn`` runs the at-fork hooks — from a test process
    holding a reader)."""
    global _READERS, _READERS_LOCK
    _INHERITED.append(_READERS)
    _READERS = {}
    _READERS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_readers)


def _recording() -> bool:
    return bool(getattr(_local, "reads", None))


def _seen(reader: _Reader, table: str) -> Version | None:
    """``table``'s current version, recorded in every active :func:`reads` of this thread."""
    current = reader.version(table)
    for recorded in getattr(_local, "reads", ()):
        recorded.setdefault((reader.key, table), current)
    return current


@functools.lru_cache(maxsize=512)
def _tables_of(sql: str) -> frozenset[str] | None:
    """The tables a served statement names (``None``: it introspects), found once per text.
    The server's own text names its tables plainly, so the ``layer.name`` tokens are enough
    (a superset: one in a string would be registered too, harmlessly); sqlglot, whose import
    alone costs ~0.3 s, is not needed."""
    if _INTROSPECTION.search(sql):
        return None
    return frozenset(_declared({(m.group(1), m.group(2)) for m in _TOKEN.finditer(sql)}))


def warm(lake: Lake) -> None:
    """Pay the read path's one-time costs of this process now rather than in its first
    request: the Arrow dataset module (~0.5 s, more where it imports pandas) and a pooled connection."""
    import pyarrow.dataset  # noqa: F401

    with _reader(lake).connection():
        pass
