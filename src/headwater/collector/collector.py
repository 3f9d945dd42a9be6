"""The collector's request path: :class:`Collector`, one object with explicit dependencies.

Steps of one request (:meth:`Collector.handle`), each a method:

1. :meth:`~Collector.header_source` — HTTP Basic auth (formats that use it): the key's source;
2. :func:`~.body.read_body` + ``wire.parse`` — the body, gunzipped and bounded, decoded into
   an envelope; a request that cannot be read is refused (413 / 415 / 400) and, when its
   source is known, recorded as one bad row (:meth:`~Collector.refuse`);
3. :meth:`~Collector.body_source` — the write key in the body when there was no header;
   missing / unknown keys → 401 (:meth:`~Collector.unauthorized`);
4. :meth:`~Collector.accept` — the wire adapter's normalisation, contract validation (on
   the values as sent) and the source's PII policy (the log only sees scrubbed values);
5. :meth:`~Collector.record` — the request's events (grouped by partition) and bad rows go
   to the log in **one** :class:`GroupCommitWriter` submission; the response is sent only
   after it committed — a 200 means the events survive a crash; 503 if the append fails.
   On a log without ``atomic_multi_topic_append`` the writer appends each topic on its own:
   a 503 may then follow stored bad rows (a retry repeats them) but never lost events, and
   re-sent events are deduplicated by ``event_id``.

Dependencies: write-key lookup (:class:`~.auth.WriteKeys`), tokenizer, contract validator,
the event log (written through a group-commit writer started by :meth:`~Collector.start`) and
the settings (``log.partitions`` for a new ``events`` topic).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import msgspec
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from headwater.collector import segment
from headwater.collector.auth import AuthFailureLimiter, WriteKeys, basic_auth_user
from headwater.collector.body import OVERSIZE_PAYLOAD_BYTES, Oversize, read_body
from headwater.collector.wire import MAX_REQUEST_BYTES, Envelope, Wire, WireError
from headwater.config import Home, PiiPolicy
from headwater.events import AUTH_FAILURE, BAD_ROWS_TOPIC, EVENTS_TOPIC, SIZE_VIOLATION
from headwater.ingest.badrows import MAX_BAD_PAYLOAD_CHARS, BadRow, bad_rows_append
from headwater.ingest.canonical import Normalized
from headwater.ingest.partitioning import event_appends
from headwater.ingest.pii import scrubber
from headwater.ingest.tokens import Tokenizer
from headwater.log.base import Append, EventLog
from headwater.log.group_commit import GroupCommitWriter
from headwater.registry import validate as contracts
from headwater.registry.registry import Registry
from headwater.settings import Settings

_encode = msgspec.json.Encoder().encode


def json_response(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json", headers=headers)


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    """``{"success": false, "code", "message"}``: what the Segment SDKs read."""
    return json_response(status, {"success": False, "code": code, "message": message}, headers)


class Collector:
    """The request path of the collector (see the module doc).

    ``keys``: write key → source and source configuration; ``tokenizer``: identifier HMAC;
    ``validator``: contracts of the schema registry; ``log``: the event log; ``settings``:
    the installation's settings. :meth:`start` / :meth:`close` bracket serving (the ASGI
    lifespan); :meth:`accept` alone needs neither (``headwater badrows replay`` uses it)."""

    def __init__(self, keys: WriteKeys, tokenizer: Tokenizer, validator: contracts.ContractValidator,
                 log: EventLog, settings: Settings):
        self.keys, self.tokenizer, self.validator, self.log, self.settings = keys, tokenizer, validator, log, settings
        self.auth_limiter = AuthFailureLimiter()
        self.partitions = 0  # of the events topic, known after start()
        self._writer: GroupCommitWriter | None = None

    @classmethod
    def from_home(cls, home: Home, log: EventLog, tokenizer: Tokenizer | None = None) -> "Collector":
        """A collector of ``home``'s sources, contracts and settings writing to ``log``;
        ``tokenizer`` defaults to one keyed with ``home.hmac_key()``."""
        return cls(WriteKeys(home), tokenizer or Tokenizer(home.hmac_key()),
                   contracts.ContractValidator(Registry.from_home(home)), log, home.settings)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Ensure the ``events`` topic (``log.partitions`` partitions if new, else the log's
        count) and the 1-partition ``bad_rows`` topic, start the group-commit writer and
        run the request path once (warm-up)."""
        self.open_topics()
        self._writer = GroupCommitWriter(self.log)
        self._warm_up()

    def open_topics(self) -> None:
        """Ensure the ``events`` and ``bad_rows`` topics; learn the partition count."""
        self.partitions = self.log.ensure_topic(EVENTS_TOPIC, self.settings.log.partitions)
        self.log.ensure_topic(BAD_ROWS_TOPIC, 1)

    def close(self) -> None:
        """Commit what was submitted and stop the writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _warm_up(self) -> None:
        """pyarrow imports pandas (if installed) lazily on its first datetime conversion —
        about a second that would otherwise land on the first request."""
        body = b'{"batch":[{"type":"track","event":"warm-up","userId":"u","timestamp":"2024-01-01T00:00:00Z"}],"sentAt":"2024-01-01T00:00:00Z"}'
        norm = segment.normalize(segment.parse_request(body), source="warm-up", received_at_us=time.time_ns() // 1000,
                                 tokenizer=Tokenizer(b"warm-up"))
        event_appends(norm.events, self.partitions)

    # -- steps ----------------------------------------------------------------------------
    def policy(self, source: str | None) -> PiiPolicy:
        """The PII policy of ``source`` (the default policy for an unknown or no source)."""
        config = self.keys.config(source)
        return config.pii if config is not None else PiiPolicy()

    def accept(self, env: Envelope, wire: Wire, *, source: str, received_at_us: int) -> tuple[pa.Table, Normalized]:
        """The events of ``env`` to log and the :class:`Normalized` with every rejection:
        ``wire.normalize``, then contract validation (on the values as sent), then the
        source's PII policy on ``properties`` / ``context``."""
        norm = wire.normalize(env, source=source, received_at_us=received_at_us, tokenizer=self.tokenizer)
        config = self.keys.config(source)
        norm = contracts.apply(
            norm, self.validator, messages=env.messages, at=env.path,
            reject_unregistered=config is not None and config.unregistered_events == "reject",
            redact=lambda raw: wire.redact(raw, self.tokenizer), source=source, received_at_us=received_at_us, protocol=wire.protocol,
        )
        return scrubber(self.policy(source), self.tokenizer).apply(norm.events), norm

    def appends(self, events: pa.Table, bad_rows: Sequence[BadRow], source: str | None) -> list[Append]:
        """The log appends of one request: events by partition, then its bad rows (payloads
        scrubbed with ``source``'s PII policy, write keys removed)."""
        appends = event_appends(events, self.partitions)
        if bad_rows:
            appends.append(bad_rows_append(bad_rows, self.policy(source), self.tokenizer))
        return appends

    async def record(self, appends: list[Append]) -> None:
        """Submit ``appends`` to the group-commit writer; returns once they are durable."""
        await asyncio.wrap_future(self._writer.submit(appends))

    async def record_quietly(self, row: BadRow) -> None:
        """Store a request-level bad row; a log failure must not turn a 4xx into a 5xx."""
        try:
            await self.record([bad_rows_append([row], self.policy(row.source), self.tokenizer)])
        except Exception:
            pass

    def header_source(self, request: Request, wire: Wire) -> str | None:
        """The source of the ``Authorization`` header's write key, None without a header (or
        for a format that does not use it). Raises :class:`Unauthorized`."""
        auth = request.headers.get("authorization")
        if auth is None or not wire.basic_auth:
            return None
        key = basic_auth_user(auth)
        if key is None:
            raise Unauthorized("Authorization header: expected HTTP Basic auth with the write key as username and an empty password")
        source = self.keys.source(key)
        if source is None:
            raise Unauthorized("Authorization header: unknown write key", key=key)
        return source

    def body_source(self, env: Envelope, wire: Wire, body: bytes) -> str:
        """The source of the write key in the decoded body. Raises :class:`Unauthorized`."""
        if not env.write_key:
            raise Unauthorized(f"Missing write key: send {wire.key_help}", body=body)
        source = self.keys.source(env.write_key)
        if source is None:
            raise Unauthorized(f"{wire.key_field}: unknown write key", body=body, key=env.write_key)
        return source

    async def unauthorized(self, e: "Unauthorized", wire: Wire, received_us: int) -> Response:
        """401, recorded as an ``auth_failure`` bad row (source null) within the rate limit.
        The presented key is stored only as its HMAC token (to tell clients apart), the body
        only as its first 1 KB, scrubbed like any payload."""
        limiter = self.auth_limiter
        if limiter.admit(time.monotonic()):
            reason = e.message + (f" (key token {self.tokenizer(e.key)})" if e.key else "")
            if suppressed := limiter.take_suppressed():
                reason += f"; {suppressed} earlier auth failures not recorded (limit {limiter.per_minute}/min)"
            payload = wire.redact(e.body[:OVERSIZE_PAYLOAD_BYTES], self.tokenizer, OVERSIZE_PAYLOAD_BYTES) if e.body else None
            field = "Authorization" if e.message.startswith("Authorization") else "writeKey"
            await self.record_quietly(BadRow(AUTH_FAILURE, reason, None, received_us, payload, wire.protocol, field, "known_write_key"))
        return error_response(401, "unauthorized", e.message)

    async def refuse(self, e: WireError | Oversize, wire: Wire, request: Request, body: bytes, source: str | None,
                     received_us: int) -> Response:
        """The answer to a request that cannot be read, recorded as one bad row when its
        source is known (from the header, else from the write key of the unusable body)."""
        if isinstance(e, Oversize):
            message = f"{e.what} ({MAX_REQUEST_BYTES // 1024} KB limit per request)"
            if source is not None:
                payload = wire.redact(e.prefix, self.tokenizer, OVERSIZE_PAYLOAD_BYTES)
                await self.record_quietly(BadRow(SIZE_VIOLATION, message, source, received_us, payload, wire.protocol, "$", "max_bytes"))
            # Close: the rest of the upload is not read.
            return error_response(413, SIZE_VIOLATION, message, {"connection": "close"})
        if source is None and (key := wire.write_key_of(body, request.query_params)):
            source = self.keys.source(key)
        if source is not None:
            limit = OVERSIZE_PAYLOAD_BYTES if e.code == SIZE_VIOLATION else MAX_BAD_PAYLOAD_CHARS
            await self.record_quietly(BadRow(e.code, e.message, source, received_us, wire.redact(body, self.tokenizer, limit), wire.protocol))
        return error_response(e.status, e.code, e.message)

    # -- the request path -----------------------------------------------------------------
    async def handle(self, request: Request, wire: Wire) -> Response:
        """Answer one ingestion request in ``wire``'s format (see the module doc)."""
        received_us = time.time_ns() // 1000
        body = b""
        source = None
        try:
            source = self.header_source(request, wire)
            try:
                body = await read_body(request)
                env = wire.parse(body, request.query_params, request.headers.get("content-type", ""))
            except (Oversize, WireError) as e:
                return await self.refuse(e, wire, request, body, source, received_us)
            if source is None:
                source = self.body_source(env, wire, body)
        except Unauthorized as e:
            return await self.unauthorized(e, wire, received_us)

        events, norm = self.accept(env, wire, source=source, received_at_us=received_us)
        appends = self.appends(events, norm.bad_rows, source)
        if appends:
            try:
                await self.record(appends)
            except Exception as e:  # the transaction failed: nothing of this request is stored
                return error_response(503, "unavailable", f"Event log append failed, retry later: {type(e).__name__}: {e}")
        return self.response(norm, env, wire)

    @staticmethod
    def response(norm: Normalized, env: Envelope, wire: Wire) -> Response:
        """200 ``{"success", "accepted", "rejected", "errors"}``; 400 with ``code`` /
        ``message`` of the first error when every event of the request was rejected."""
        result = {"success": norm.accepted > 0 or norm.rejected == 0, "accepted": norm.accepted, "rejected": norm.rejected,
                  "errors": norm.errors, **wire.response}
        if norm.accepted == 0 and norm.rejected:
            first = result["errors"][0]
            what = f"Event rejected: {first['message']}" if env.single else f"All {norm.rejected} events rejected; first (index {first['index']}): {first['message']}"
            return json_response(400, {"code": first["code"], "message": what, **result})
        return json_response(200, result)


class Unauthorized(Exception):
    """A missing or unknown write key: ``message`` for the 401, the ``key`` presented (stored
    only as its token) and the ``body`` (its first 1 KB is kept, redacted)."""

    def __init__(self, message: str, *, key: str | None = None, body: bytes | None = None):
        super().__init__(message)
        self.message, self.key, self.body = message, key, body
