"""The collector's ASGI app: Segment HTTP Tracking API and PostHog capture → the event log.

Routes (Segment HTTP Tracking API, https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):

- ``POST /v1/batch`` — ``{"batch": [message, ...], "sentAt"?, "context"?, "writeKey"?}``
- ``POST /v1/track|identify|page|screen|alias|group`` — one message; the path gives the
  type when the message has none
- aliases: ``/v1/import`` and ``/v1/b`` (= batch), ``/v1/t|i|p|s|a|g`` (analytics.js)
- PostHog capture (:mod:`.posthog`): ``POST /batch/``, ``/e/``, ``/capture/``, ``/i/v0/e/``,
  ``/track/``, ``/engage/`` (also without the trailing slash); the write key is the PostHog
  project token (``api_key`` / ``token`` in the body, the events or the query string).
- ``GET /health`` — 200 ``{"status": "ok"}``
- ``GET /metrics`` — Prometheus text format: log offsets, lag, stream progress (:mod:`headwater.serve.metrics`)

Auth: HTTP Basic, username = write key (password ignored), else ``writeKey`` in the
body; the key maps to a source via ``sources.json`` (re-read when it changes: checked at
most once a second, and at once for an unknown key). Missing / unknown key
→ 401, recorded as an ``auth_failure`` bad row with source null, at most 60 a minute
(the rest are counted into the next one's reason); the presented key is kept only as its
HMAC token, the body only as its first 1 KB, scrubbed.

PII: accepted events' ``properties`` / ``context`` and every bad-row payload go through the
source's PII policy (:mod:`.pii`) before the log; events are validated against their
contracts (:mod:`headwater.registry.validate`) before that, on the values as sent.

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
import dataclasses
import os
import time
import zlib
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

import msgspec
import pyarrow as pa
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.collector import posthog
from headwater.collector.partitioning import event_appends
from headwater.collector.pii import scrubber
from headwater.collector.segment import (
    DECODE_FAILURE,
    MAX_BAD_PAYLOAD_CHARS,
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
from headwater.config import Home, PiiPolicy, Source, partitions_from_env
from headwater.events import AUTH_FAILURE, BAD_ROWS_TOPIC, EVENT_TYPES, EVENTS_TOPIC
from headwater.log.base import Append, EventLog
from headwater.log.codec import encode
from headwater.log.group_commit import GroupCommitWriter
from headwater.registry import validate as contracts
from headwater.registry.registry import Registry

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
        self._configs: dict[str, Source] = {}
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

    def config(self, name: str) -> Source | None:
        """The full configuration of source ``name`` (reloaded with ``sources.json``)."""
        return self._configs.get(name)

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
        self._configs = {s.name: s for s in sources}
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


@dataclass(frozen=True)
class Wire:
    """A wire format the collector speaks: ``parse(body, request)`` → an envelope with
    ``write_key``, ``single``, ``messages`` and ``path(i)`` (raises ``WireError``);
    ``normalize`` (as :func:`.segment.normalize`); ``redact(raw, tokenizer, limit)`` → bad-row
    text; ``write_key_of(body, request)`` → the key of an unusable body, never raises."""

    protocol: str
    parse: Callable[[bytes, Request], Any]
    normalize: Callable[..., Any]
    redact: Callable[..., str]
    write_key_of: Callable[[bytes, Request], str | None]
    key_help: str


def segment_wire(path_type: str | None) -> Wire:
    return Wire("segment", lambda body, _r: parse_request(body, path_type), normalize, redact,
                lambda body, _r: write_key_of(body), "HTTP Basic auth with the write key as username, or `writeKey` in the body")


def _posthog_parse(body: bytes, request: Request):
    query = request.query_params
    return posthog.parse_request(posthog.payload_bytes(body, request.headers.get("content-type", ""), query), query)


POSTHOG_WIRE = Wire("posthog", _posthog_parse, posthog.normalize, posthog.redact,
                    lambda body, r: posthog.write_key_of(body) or r.query_params.get("token") or r.query_params.get("api_key"),
                    "`api_key` / `token` in the body, in each event, or in the query string")

AUTH_FAILURE_ROWS_PER_MINUTE = 60
_WRITE_KEY_FIELDS = ("writeKey", "api_key")  # dropped from bad-row payloads


class AuthFailureLimiter:
    """At most ``per_minute`` ``auth_failure`` bad rows a minute (a fixed one-minute window):
    a client with a wrong key, or a scanner, must not fill the log. Failures over the limit
    are counted, and the count is reported in the reason of the next recorded one."""

    def __init__(self, per_minute: int = AUTH_FAILURE_ROWS_PER_MINUTE):
        self.per_minute = per_minute
        self._window = -1
        self._used = 0
        self.suppressed = 0

    def admit(self, now: float) -> bool:
        window = int(now // 60)
        if window != self._window:
            self._window, self._used = window, 0
        if self._used >= self.per_minute:
            self.suppressed += 1
            return False
        self._used += 1
        return True


def accept(norm, env, wire: Wire, *, source: str, config: Source | None, received_at_us: int, tokenizer: Tokenizer,
           validator: contracts.ContractValidator) -> tuple[pa.Table, Any]:
    """The last steps of ingestion after ``wire.normalize``, shared by HTTP and
    ``headwater badrows replay``: contract validation (on the values as sent), then the
    source's PII policy on ``properties`` / ``context`` (the log only sees scrubbed ones).
    Returns the events to log and the :class:`~.segment.Normalized` with contract bad rows."""
    norm = contracts.apply(
        norm, validator, messages=env.messages, at=env.path,
        reject_unregistered=config is not None and config.unregistered_events == "reject",
        redact=lambda raw: wire.redact(raw, tokenizer), source=source, received_at_us=received_at_us, protocol=wire.protocol,
    )
    events = scrubber(config.pii if config is not None else PiiPolicy(), tokenizer).apply(norm.events)
    return events, norm


def create_app(home: Home, log: EventLog) -> Starlette:
    """The collector ASGI app writing to ``log`` (usually ``SqliteLog(home.log_path)``).

    On startup (ASGI lifespan) it ensures the ``events`` topic (``HEADWATER_PARTITIONS``
    partitions if new, else the log's count) and the 1-partition ``bad_rows`` topic, and
    starts a :class:`GroupCommitWriter`; on shutdown it commits what was submitted and
    stops the writer. The HMAC key is ``home.hmac_key()``."""
    tokenizer = Tokenizer(home.hmac_key())
    keys = WriteKeys(home)
    validator = contracts.ContractValidator(Registry.from_home(home))
    state: dict = {}

    def record(appends: list[Append]):
        return asyncio.wrap_future(state["writer"].submit(appends))

    auth_limiter = AuthFailureLimiter()

    def policy(source: str | None) -> PiiPolicy:
        config = keys.config(source) if source is not None else None
        return config.pii if config is not None else PiiPolicy()

    def bad_rows_append(rows: list[dict], source: str | None = None) -> Append:
        # Payloads are scrubbed with the source's PII policy (idempotent: tokens stay as they
        # are), and the write key fields are dropped: a bad row never stores a credential.
        p = policy(source)
        scrub = scrubber(dataclasses.replace(p, drop=p.drop + _WRITE_KEY_FIELDS), tokenizer)
        for r in rows:
            r["payload"] = scrub.scrub_json(r["payload"])[:MAX_BAD_PAYLOAD_CHARS] if r["payload"] is not None else None
        return Append(BAD_ROWS_TOPIC, 0, len(rows), encode(bad_rows_table(rows)))

    async def unauthorized(received_us: int, message: str, wire: Wire, body: bytes | None = None, key: str | None = None) -> Response:
        """401, recorded as an ``auth_failure`` bad row (source null) within the rate limit.
        The presented key is stored only as its HMAC token (to tell clients apart), the body
        only as its first 1 KB, scrubbed like any payload."""
        if auth_limiter.admit(time.monotonic()):
            reason = message + (f" (key token {tokenizer(key)})" if key else "")
            if auth_limiter.suppressed:
                reason += f"; {auth_limiter.suppressed} earlier auth failures not recorded (limit {auth_limiter.per_minute}/min)"
                auth_limiter.suppressed = 0
            payload = wire.redact(body[:OVERSIZE_PAYLOAD_BYTES], tokenizer, OVERSIZE_PAYLOAD_BYTES) if body else None
            row = bad_row(received_us, None, AUTH_FAILURE, reason, payload, wire.protocol)
            await _try_record(record, [bad_rows_append([row])])
        return _error(401, "unauthorized", message)

    async def ingest(request: Request, wire: Wire) -> Response:
        received_us = time.time_ns() // 1000
        source = None
        auth = request.headers.get("authorization")
        if auth is not None and wire.protocol == "segment":
            key = basic_auth_user(auth)
            if key is None:
                return await unauthorized(received_us, "Authorization header: expected HTTP Basic auth with the write key as username and an empty password", wire)
            source = keys.source(key)
            if source is None:
                return await unauthorized(received_us, "Authorization header: unknown write key", wire, key=key)

        body = b""
        try:
            body = await read_body(request)
            env = wire.parse(body, request)
        except _Oversize as e:
            message = f"{e.what} ({MAX_REQUEST_BYTES // 1024} KB limit per request)"
            if source is not None:
                payload = wire.redact(e.prefix, tokenizer, OVERSIZE_PAYLOAD_BYTES)
                row = bad_row(received_us, source, SIZE_VIOLATION, message, payload, wire.protocol)
                await _try_record(record, [bad_rows_append([row], source)])
            # Close: the rest of the upload is not read.
            return _error(413, SIZE_VIOLATION, message, {"connection": "close"})
        except WireError as e:
            if source is None and (wk := wire.write_key_of(body, request)):
                source = keys.source(wk)
            if source is not None:
                limit = OVERSIZE_PAYLOAD_BYTES if e.code == SIZE_VIOLATION else MAX_BAD_PAYLOAD_CHARS
                row = bad_row(received_us, source, e.code, e.message, wire.redact(body, tokenizer, limit), wire.protocol)
                await _try_record(record, [bad_rows_append([row], source)])
            return _error(e.status, e.code, e.message)

        if source is None:
            if not env.write_key:
                return await unauthorized(received_us, f"Missing write key: send {wire.key_help}", wire, body)
            source = keys.source(env.write_key)
            if source is None:
                return await unauthorized(received_us, ("Field `writeKey`" if wire.protocol == "segment" else "Field `api_key` / `token`") + ": unknown write key", wire, body, env.write_key)

        norm = wire.normalize(env, source=source, received_at_us=received_us, tokenizer=tokenizer)
        events, norm = accept(norm, env, wire, source=source, config=keys.config(source), received_at_us=received_us,
                              tokenizer=tokenizer, validator=validator)
        appends = event_appends(events, state["partitions"], EVENTS_TOPIC)
        if norm.bad_rows:
            appends.append(bad_rows_append(norm.bad_rows, source))
        if appends:
            try:
                await record(appends)
            except Exception as e:  # the transaction failed: nothing of this request is stored
                return _error(503, "unavailable", f"Event log append failed, retry later: {type(e).__name__}: {e}")

        result = {"success": norm.accepted > 0 or norm.rejected == 0, "accepted": norm.accepted, "rejected": norm.rejected, "errors": norm.errors}
        if wire.protocol == "posthog":
            result["status"] = 1  # what PostHog's capture answers
        if norm.accepted == 0 and norm.rejected:
            first = norm.errors[0]
            what = f"Event rejected: {first['message']}" if env.single else f"All {norm.rejected} events rejected; first (index {first['index']}): {first['message']}"
            return _json(400, {"code": first["code"], "message": what, **result})
        return _json(200, result)

    def endpoint(wire: Wire):
        async def handler(request: Request) -> Response:
            return await ingest(request, wire)

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

    def metrics(request: Request) -> Response:  # sync: Starlette runs it in its thread pool (file + SQLite reads)
        from headwater.serve.metrics import CONTENT_TYPE, render

        return Response(render(home), media_type=CONTENT_TYPE)

    routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])]
    # /v1/import is Segment's historical-import alias of /v1/batch; analytics.js
    # (analytics-next) posts to the short paths /v1/b and /v1/<first letter of the type>.
    routes += [Route(p, endpoint(segment_wire(None)), methods=["POST"]) for p in ("/v1/batch", "/v1/import", "/v1/b")]
    routes += [Route(f"/v1/{t}", endpoint(segment_wire(t)), methods=["POST"]) for t in EVENT_TYPES]
    routes += [Route(f"/v1/{t[0]}", endpoint(segment_wire(t)), methods=["POST"]) for t in EVENT_TYPES]
    # PostHog capture (posthog-js, posthog-python, posthog-node), with and without the trailing slash.
    routes += [Route(p, endpoint(POSTHOG_WIRE), methods=["POST"]) for path in posthog.PATHS for p in (path, path.rstrip("/"))]
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
