"""``POST /api/sql``: read-only SQL over the catalog's tables, for analysts and admins.

Body ``{"sql": "...", "limit": n}``. The statement runs in the restricted session of the
caller's role (:func:`headwater.serve.access.sql_session`: only the role's tables, no file
access; an admin also has ``hw_token()``), under a statement timeout of
``serve.sql_timeout_s`` (a timer calls DuckDB's ``interrupt()``), and returns at most
``min(limit, serve.sql_max_rows)`` rows.

The result is streamed from DuckDB's Arrow record batches as **one JSON document**::

    {"columns": [{"name", "type"}...], "rows": [{...}, ...], "row_count": n, "truncated": bool, "error": null}

Rows are objects (dates and times ISO 8601, decimals as strings, binary as base64).
``truncated`` is true when the statement had more rows than the limit. Everything up to the
first batch happens before the response starts, so errors there get their status (400
invalid SQL, 403 forbidden table or role, 404 unknown table, column or function, 504 timed
out); a failure while later batches stream (the timeout included) ends the document with
``"error": "<message>"`` instead (the 200 is already sent).

Read-only by construction: the session is a private in-memory DuckDB database over Arrow
scans of the lake, without file access, closed after the request — a ``CREATE`` or
``INSERT`` there changes nothing in the lake.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Annotated

import duckdb
import msgspec
import pyarrow as pa
from fastapi import APIRouter, Body
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from headwater.errors import HeadwaterError, InvalidInputError
from headwater.lake import sql as lake_sql
from headwater.serve.access import sql_session
from headwater.serve.api_deps import HomeDep, PrincipalDep

BATCH_ROWS = 10_000
router = APIRouter(tags=["sql"])


class StatementTimeout(HeadwaterError):
    """The statement ran longer than ``serve.sql_timeout_s`` and was interrupted (HTTP 504)."""


class SqlRequest(BaseModel):
    sql: str = Field(min_length=1, description="One DuckDB SQL statement over `<layer>.<table>` names.")
    limit: int | None = Field(None, ge=1, description="Most rows returned; at most (and default) `serve.sql_max_rows`.")


@router.post("/sql", summary="Run read-only SQL over the role's tables (analyst, admin); streamed JSON",
             responses={200: {"content": {"application/json": {}}, "description": "The result document, streamed."}})
def run(home: HomeDep, principal: PrincipalDep, request: Annotated[SqlRequest, Body()]) -> StreamingResponse:
    settings = home.settings.serve
    limit = min(request.limit or settings.sql_max_rows, settings.sql_max_rows)
    resources = ExitStack()  # closed by _document when the response ends, or here on an early error
    try:
        con = resources.enter_context(sql_session(home, principal, request.sql))  # 403: a viewer, a forbidden table
        timer = _Interrupter(con, settings.sql_timeout_s)
        resources.callback(timer.cancel)
        with lake_sql.errors(), timer.errors():
            rel = con.sql(request.sql)
            if rel is None:
                raise InvalidInputError("sql: the statement has no result to return", field="sql")
            reader = rel.to_arrow_reader(BATCH_ROWS)
            first = _next(reader)
    except BaseException:
        resources.close()
        raise
    return StreamingResponse(_document(resources, timer, reader, first, limit), media_type="application/json")


def _next(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def _document(resources: ExitStack, timer: _Interrupter, reader: pa.RecordBatchReader, first: pa.RecordBatch | None,
              limit: int) -> Iterator[bytes]:
    """The JSON document, a batch of rows per chunk; closes the session at the end or when
    the client goes away (the generator is closed)."""
    enc = msgspec.json.Encoder()
    count, truncated, error = 0, False, None
    with resources:
        columns = [{"name": f.name, "type": str(f.type)} for f in reader.schema]
        yield b'{"columns":' + enc.encode(columns) + b',"rows":['
        batch = first
        while batch is not None:
            if count + batch.num_rows > limit:
                batch, truncated = batch.slice(0, limit - count), True
            if batch.num_rows:
                yield (b"," if count else b"") + enc.encode(batch.to_pylist())[1:-1]
                count += batch.num_rows
            if truncated:
                break
            try:
                with lake_sql.errors(), timer.errors():
                    batch = _next(reader)
            except HeadwaterError as e:  # the 200 is sent: the document says what went wrong
                error = str(e)
                break
            # exactly `limit` rows so far and more to come: truncated
            truncated = batch is not None and count == limit and batch.num_rows > 0
        yield b'],"row_count":' + enc.encode(count) + b',"truncated":' + enc.encode(truncated) + b',"error":' + enc.encode(error) + b"}"


class _Interrupter:
    """Interrupts ``con`` after ``timeout_s``: DuckDB's ``interrupt()`` is safe from another
    thread and makes the running statement (or the Arrow stream it feeds) raise."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float):
        self.timeout_s = timeout_s
        self.fired = threading.Event()

        def fire() -> None:
            self.fired.set()
            con.interrupt()

        self._timer = threading.Timer(timeout_s, fire)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        self._timer.cancel()

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Inside, any failure after the timer fired is :class:`StatementTimeout`."""
        try:
            yield
        except Exception as e:
            if self.fired.is_set() and not isinstance(e, StopIteration):
                raise StatementTimeout(f"sql: the statement ran longer than serve.sql_timeout_s = {self.timeout_s:g} s "
                                       "and was interrupted (narrow it, or add a LIMIT)", field="sql") from e
            raise
