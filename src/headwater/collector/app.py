"""The collector's ASGI app: Segment HTTP Tracking API → the event log.

Routes (Segment HTTP Tracking API, https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):

- ``POST /v1/batch`` — ``{"batch": [message, ...], "sentAt"?, "context"?, "writeKey"?}``
- ``POST /v1/track|identify|page|screen|alias|group`` — one message; the path gives the
  type when the message has none
- aliases: ``/v1/import`` and ``/v1/b`` (= batch), ``/v1/t|i|p|s|a|g`` (analytics.js)
- ``GET /health`` — 200 ``{"status": "ok"}``

Auth: HTTP Basic, username = write key (password ignored), else ``writeKey`` in the
body; the key maps to a source via ``sources.json`` (re-read when it changes: checked at
most once a second, and at once for an unknown key). Missing / unknown key
→ 401 (not recorded: no source to attribute it to).

Bodies: ``Content-Encoding: gzip`` or none (else 415). At most 500 KB after
decompression → else 413; decompression is bounded (output capped, never inflated past
the limit). Malformed JSON → 400 ``decode_failure``; a body of the wrong shape → 400
``envelope_violation``. These request-level failures are recorded as one bad row each
when the request is authenticated (413: only the first 1 KB of the body).

Responses are JSON. Errors: ``{"code": <error type>, "message": <field and rule>}``
(what the Segment SDKs read). Success: 200 ``{"success": true, "accepted": n,
"rejected": m, "errors": [{"index", "code", "message"}, ...]}``; every event of the
request invalid → 400 with the same fields plus ``code``/``message``. 503 when the log
append fails (SDKs retry 5xx).

Durability: a request's events (grouped by partition, :mod:`.partitioning`) and bad rows
go to the log in **one** :class:`GroupCommitWriter` submission, and the response is sent
only after that transaction committed — a 200 means the events survive a crash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import time
import zlib
from contextlib import asynccontextmanager

import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.collector.partitioning import event_appends
from headwater.collector.segment import (
    DECODE_FAILURE,
    ENVELOPE_VIOLATION,
    MAX_REQUEST_BYTES,
    SIZE_VIOLATION,
    WireError,
    bad_row,
    bad_rows_table,
    normalize,
    parse_request,
    redact,
    write_key_of,
)
from headwater.collector.tokens import Tokenizer
from headwater.config import Home, partitions_from_env
from headwater.events import BAD_ROWS_TOPIC, EVENT_TYPES, EVENTS_TOPIC
from headwater.log.base import Append, EventLog
from headwater.log.codec import encode
from headwater.log.group_commit import GroupCommitWriter

OVERSIZE_PAYLOAD_BYTES = 1024  # a 413's bad row keeps only this much of the body
# A gzip body larger than this cannot inflate to <= MAX_REQUEST_BYTES (deflate's worst
# case expansion is ~0.03% + a few bytes per block), so it is refused without reading on.
_MAX_COMPRESSED_BYTES = MAX_REQUEST_BYTES + MAX_REQUEST_BYTES // 64 + 1024

_encode = msgspec.json.Encoder().encode


class WriteKeys:
    """Write key → source name, from ``home.sources()``, reloaded when ``sources.json``
    changes (mtime/size/inode). Known keys cost a dict lookup: the file is stat-ed at most
    every ``interval`` seconds. An unknown key re-stats it at once (one ``stat``, the file
    is re-read only if it changed), so a source added by ``headwater up`` works on its
    first request; a revoked key stops working within ``interval``."""

    def __init__(self, home: Home, interval: float = 1.0):
        self._home = home
        self._interval = interval
        self._stamp: tuple | None = None
        self._keys: dict[str, str] = {}
        self._checked = float("-inf")
        self._refresh(time.monotonic())

    def source(self, write_key: str) -> str | None:
        """The source name of ``write_key``, or None if unknown."""
        now = time.monotonic()
        if now - self._checked >= self._interval:
            self._refresh(now)
        name = self._keys.get(write_key)
        if name is None and now != self._checked:  # a miss: re-stat now (a source may just have been added)
            self._refresh(now)
            name = self._keys.get(write_key)
        return name

    def _refresh(self, now: float) -> None:
        self._checked = now
        try:
            st = os.stat(self._home.sources_path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        try:
            sources = self._home.sources()
        except (OSError, ValueError, TypeError):  # unreadable: keep the keys we have
            return
        self._keys = {s.write_key: s.name for s in sources}
        self._stamp = stamp


def basic_auth_user(header: str) -> str | None:
    """Username of an ``Authorization: Basic base64(user:password)`` header, else None."""
    scheme, _, cred = header.partition(" ")
    if scheme.lower() != "basic" or not cred:
        return None
    try:
        text = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return text.partition(":")[0] or None


def _json(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return _json(status, {"success": False, "code": code, "message": message}, headers)


class _Oversize(Exception):
    def __init__(self, prefix: bytes, what: str):
        self.prefix, self.what = prefix, what


async def read_body(request: Request, limit: int = MAX_REQUEST_BYTES) -> bytes:
    """The request body, gunzipped if ``Content-Encoding: gzip``, at most ``limit`` bytes.

    Raises :class:`WireError` (400 ``decode_failure`` for a corrupt gzip stream, 415 for
    another encoding) or ``_Oversize`` when the (decompressed) body exceeds ``limit``;
    reading stops there, so neither the wire bytes nor the inflated bytes are unbounded."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) <= limit:
            return await request.body()
        chunks, total = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _Oversize(b"".join(chunks)[:OVERSIZE_PAYLOAD_BYTES], f"Request body exceeds {limit} bytes")
        return b"".join(chunks)
    if encoding not in ("gzip", "x-gzip"):
        raise WireError(DECODE_FAILURE, f"Unsupported Content-Encoding {encoding!r}: send gzip or no encoding", 415)

    # Incremental, bounded inflate: each decompress() call may emit at most the bytes
    # still allowed (+1 to detect overflow); leftover input waits in unconsumed_tail.
    # Concatenated gzip members (RFC 1952 §2.2) are handled via unused_data.
    out: list[bytes] = []
    produced = wire = 0
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        async for chunk in request.stream():
            wire += len(chunk)
            if wire > _MAX_COMPRESSED_BYTES:
                raise _Oversize(b"".join(out)[:OVERSIZE_PAYLOAD_BYTES], f"Compressed request body exceeds {_MAX_COMPRESSED_BYTES} bytes")
            data = chunk
            while data:
                piece = d.decompress(data, limit + 1 - produced)
                out.append(piece)
                produced += len(piece)
                if produced > limit:
                    raise _Oversize(b"".join(out)[:OVERSIZE_PAYLOAD_BYTES], f"Decompressed request body exceeds {limit} bytes")
                if d.eof:
                    data = d.unused_data
                    if data:
                        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                else:
                    data = d.unconsumed_tail
        if not d.eof and (wire or produced):
            raise WireError(DECODE_FAILURE, "Invalid gzip body: stream is truncated (Content-Encoding: gzip)")
    except zlib.error as e:
        raise WireError(DECODE_FAILURE, f"Invalid gzip body: {e} (Content-Encoding: gzip)") from None
    return b"".join(out)


def create_app(home: Home, log: EventLog) -> Starlette:
    """The collector ASGI app writing to ``log`` (usually ``SqliteLog(home.log_path)``).

    On startup (ASGI lifespan) it ensures the ``events`` topic (``HEADWATER_PARTITIONS``
    partitions if new, else the log's count) and the 1-partition ``bad_rows`` topic, and
    starts a :class:`GroupCommitWriter`; on shutdown it commits what was submitted and
    stops the writer. The HMAC key is ``home.hmac_key()``."""
    tokenizer = Tokenizer(home.hmac_key())
    keys = WriteKeys(home)
    state: dict = {}

    def record(appends: list[Append]):
        return asyncio.wrap_future(state["writer"].submit(appends))

    def bad_rows_append(rows: list[dict]) -> Append:
        return Append(BAD_ROWS_TOPIC, 0, len(rows), encode(bad_rows_table(rows)))

    async def ingest(request: Request, path_type: str | None) -> Response:
        received_us = time.time_ns() // 1000
        source = None
        auth = request.headers.get("authorization")
        if auth is not None:
            key = basic_auth_user(auth)
            if key is None:
                return _error(401, "unauthorized", "Authorization header: expected HTTP Basic auth with the write key as username and an empty password")
            source = keys.source(key)
            if source is None:
                return _error(401, "unauthorized", "Authorization header: unknown write key")

        body = b""
        try:
            body = await read_body(request)
            env = parse_request(body, path_type)
        except _Oversize as e:
            message = f"{e.what} ({MAX_REQUEST_BYTES // 1024} KB limit per request)"
            if source is not None:
                payload = redact(e.prefix, tokenizer, OVERSIZE_PAYLOAD_BYTES)
                await _try_record(record, [bad_rows_append([bad_row(received_us, source, SIZE_VIOLATION, message, payload)])])
            # Close: the rest of the upload is not read.
            return _error(413, SIZE_VIOLATION, message, {"connection": "close"})
        except WireError as e:
            if source is None and e.code == ENVELOPE_VIOLATION and (wk := write_key_of(body)):
                source = keys.source(wk)
            if source is not None:
                await _try_record(record, [bad_rows_append([bad_row(received_us, source, e.code, e.message, redact(body, tokenizer))])])
            return _error(e.status, e.code, e.message)

        if source is None:
            if not env.write_key:
                return _error(401, "unauthorized", "Missing write key: send HTTP Basic auth with the write key as username, or `writeKey` in the body")
            source = keys.source(env.write_key)
            if source is None:
                return _error(401, "unauthorized", "Field `writeKey`: unknown write key")

        norm = normalize(env, source=source, received_at_us=received_us, tokenizer=tokenizer)
        appends = event_appends(norm.events, state["partitions"], EVENTS_TOPIC)
        if norm.bad_rows:
            appends.append(bad_rows_append(norm.bad_rows))
        if appends:
            try:
                await record(appends)
            except Exception as e:  # the transaction failed: nothing of this request is stored
                return _error(503, "unavailable", f"Event log append failed, retry later: {type(e).__name__}: {e}")

        result = {"success": norm.accepted > 0 or norm.rejected == 0, "accepted": norm.accepted, "rejected": norm.rejected, "errors": norm.errors}
        if norm.accepted == 0 and norm.rejected:
            first = norm.errors[0]
            what = f"Event rejected: {first['message']}" if env.single else f"All {norm.rejected} events rejected; first (index {first['index']}): {first['message']}"
            return _json(400, {"code": first["code"], "message": what, **result})
        return _json(200, result)

    def endpoint(path_type: str | None):
        async def handler(request: Request) -> Response:
            return await ingest(request, path_type)

        return handler

    async def health(request: Request) -> Response:
        return _json(200, {"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        state["partitions"] = log.ensure_topic(EVENTS_TOPIC, partitions_from_env())
        log.ensure_topic(BAD_ROWS_TOPIC, 1)
        state["writer"] = GroupCommitWriter(log)
        _warm_up(state["partitions"])
        try:
            yield
        finally:
            state["writer"].close()

    routes = [Route("/health", health, methods=["GET"])]
    # /v1/import is Segment's historical-import alias of /v1/batch; analytics.js
    # (analytics-next) posts to the short paths /v1/b and /v1/<first letter of the type>.
    routes += [Route(p, endpoint(None), methods=["POST"]) for p in ("/v1/batch", "/v1/import", "/v1/b")]
    routes += [Route(f"/v1/{t}", endpoint(t), methods=["POST"]) for t in EVENT_TYPES]
    routes += [Route(f"/v1/{t[0]}", endpoint(t), methods=["POST"]) for t in EVENT_TYPES]
    # Browsers (analytics.js) post cross-origin with the write key in the body.
    middleware = [Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"], allow_headers=["*"], max_age=86400)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)


def _warm_up(partitions: int) -> None:
    """Run the request path once before serving: pyarrow imports pandas (if installed)
    lazily on its first datetime conversion — about a second that would otherwise land
    on the first request."""
    body = b'{"batch":[{"type":"track","event":"warm-up","userId":"u","timestamp":"2024-01-01T00:00:00Z"}],"sentAt":"2024-01-01T00:00:00Z"}'
    norm = normalize(parse_request(body), source="warm-up", received_at_us=time.time_ns() // 1000, tokenizer=Tokenizer(b"warm-up"))
    event_appends(norm.events, partitions)


async def _try_record(record, appends: list[Append]) -> None:
    """Store a request-level bad row; a log failure must not turn a 4xx into a 5xx."""
    try:
        await record(appends)
    except Exception:
        pass
