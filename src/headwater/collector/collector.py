"""The collector's request path: :class:`Collector`, one object with explicit dependencies.

Steps of one request (:meth:`Collector.handle`), each a method:

0. :meth:`~Collector.admit` (:meth:`~Collector.answer` runs it before :meth:`~Collector.handle`)
   — load shedding before the body is read, on cached state only (this worker process's:
   with ``collector.workers`` processes each counts its own requests, queue and loop): more
   than ``collector.max_in_flight`` requests in progress, the event loop more than
   ``collector.max_loop_delay_ms`` behind (:class:`~.health.LoopDelay`), or ``collector.max_queue`` requests
   waiting for the group commit, or the stream more than ``collector.max_lag_events`` records
   behind → 429; the home's disk over ``collector.max_disk_used`` or the log writer stopped →
   503. Each with ``Retry-After`` (s) and ``{"code", "message", "limit"}`` naming the setting
   (:mod:`.health` samples the lag and the disk);
1. :meth:`~Collector.header_source` — HTTP Basic auth (formats that use it): the key's source;
2. :func:`~.body.read_body` + ``wire.read`` — the body, gunzipped and bounded, decoded into
   an envelope; a request that cannot be read is refused (413 / 415 / 400) and, when its
   source is known, recorded as one bad row (:meth:`~Collector.refuse`);
3. :meth:`~Collector.body_source` — the write key in the body when there was no header;
   missing / unknown keys → 401 (:meth:`~Collector.unauthorized`);
   a source over its request rate, or a client address with too many 401s in the last
   minute, → 429 with ``Retry-After`` (:class:`~.auth.RateLimits`);
4. :meth:`~Collector.validate` — the wire adapter's normalisation and contract validation
   (on the values as sent), per request;
5. :meth:`~Collector.record_batched` — the source's PII policy (the log only sees scrubbed
   values), partitioning, and the log: the requests that reach this step while this worker's
   previous submission is still in the :class:`GroupCommitWriter` (queued or committing), or
   else in the same turn of the event loop, form a *batch*, scrubbed and partitioned together
   (per source) and submitted as **one** submission once that previous one has committed. A
   batch is the group commit's idea applied to CPU: the Arrow compute calls of scrubbing and
   partitioning cost 10–100 µs each whatever the row count (RE2 compiles its pattern per
   call), so a request of 100 events costs 0.68 ms of CPU there alone, 0.47 ms in a batch of
   2, 0.33 ms in one of 4. Waiting for the previous commit costs a request little latency
   (the batch's preparation, ~1 ms, once that commit is done): its submission would have
   queued behind that commit anyway, the writer taking everything queued in one
   transaction (under ``bench/collector.py``'s load a worker's batches held 2.1 requests
   when only one turn of the loop was batched, 4.0 with this). The
   response is sent only after the submission committed — a 200 means the events survive a
   crash; 503 with ``Retry-After`` if the append fails or is not durable within
   ``collector.append_timeout_s``, 429 if the group-commit queue is full (``max_queue``
   counts requests: those of a batch past its room are refused). A batch's requests are
   stored or fail together (on SQLite one transaction, as the group commit stores many
   submissions anyway). A timed-out request stops waiting; its batch's submission is dropped
   if every request of it gave up while it was still queued, else committed: the client's
   retry then stores its events twice in the log, and they are deduplicated by ``event_id``
   downstream — nothing answered 200 is lost. On a log without
   ``atomic_multi_topic_append`` the writer appends each topic on its own: a 503 may then
   follow stored events or bad rows (a retry repeats them) but never lost events, and re-sent
   events are deduplicated by ``event_id``.

Dependencies: write-key lookup (:class:`~.auth.WriteKeys`), tokenizer, contract validator,
the event log (written through a group-commit writer started by :meth:`~Collector.start`) and
the settings (``log.partitions`` for a new ``events`` topic).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import NamedTuple

import msgspec
import pyarrow as pa
from starlette.requests import Request
from starlette.responses import Response

from headwater.collector import segment
from headwater.collector.auth import AuthFailureLimiter, RateLimited, RateLimits, WriteKeys, basic_auth_user
from headwater.collector.body import OVERSIZE_PAYLOAD_BYTES, Oversize, read_body
from headwater.collector.health import LoadMonitor, LoopDelay, Refusal
from headwater.collector.wire import MAX_REQUEST_BYTES, MAX_RESPONSE_ERRORS, Envelope, Limits, Wire, WireError
from headwater.config import Home, PiiPolicy
from headwater.errors import TransientError
from headwater.events import AUTH_FAILURE, BAD_ROWS_TOPIC, EVENTS_TOPIC, SIZE_VIOLATION
from headwater.ingest.badrows import MAX_BAD_PAYLOAD_CHARS, BadRow, bad_rows_append
from headwater.ingest.canonical import Normalized
from headwater.ingest.partitioning import event_appends
from headwater.ingest.pii import scrubber
from headwater.ingest.tokens import Tokenizer
from headwater.log.base import Append, EventLog
from headwater.log.group_commit import GroupCommitWriter, QueueFull
from headwater.registry import validate as contracts
from headwater.registry.registry import Registry
from headwater.settings import Settings

_encode = msgspec.json.Encoder().encode
logger = logging.getLogger(__name__)


def json_response(status: int, body: dict, headers: dict | None = None) -> Response:
    return Response(_encode(body), status_code=status, media_type="application/json", headers=headers)


def refusal_response(r: Refusal) -> Response:
    """``r`` as ``{"success": false, "code", "message", "limit"}`` with ``Retry-After``."""
    return json_response(r.status, {"success": False, "code": r.code, "message": r.message, "limit": r.limit},
                         {"retry-after": str(r.retry_after_s)})


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
        self.rate_limits = RateLimits(settings.collector.rate_limit_per_key, settings.collector.auth_failures_per_minute)
        self.partitions = 0  # of the events topic, known after start()
        self.in_flight = 0  # requests inside handle(); one event loop, so a plain counter
        self._writer: GroupCommitWriter | None = None
        self._monitor: LoadMonitor | None = None
        self._loop_delay: LoopDelay | None = None
        self._batch: list[_Pending] | None = None  # requests waiting for the next submission (record_batched)
        self._submitted: asyncio.Future | None = None  # the last submission to the writer

    @classmethod
    def from_home(cls, home: Home, log: EventLog, tokenizer: Tokenizer | None = None) -> "Collector":
        """A collector of ``home``'s sources, contracts and settings writing to ``log``;
        ``tokenizer`` defaults to one keyed with ``home.hmac_key()``."""
        return cls(WriteKeys(home), tokenizer or Tokenizer(home.hmac_key()),
                   contracts.ContractValidator(Registry.from_home(home)), log, home.settings)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Ensure the ``events`` topic (``log.partitions`` partitions if new, else the log's
        count) and the 1-partition ``bad_rows`` topic, start the group-commit writer (queue
        bounded by ``collector.max_queue``) and the load monitor, and run the request path
        once (warm-up)."""
        self.open_topics()
        self._writer = GroupCommitWriter(self.log, max_queue=self.settings.collector.max_queue)
        self._monitor = LoadMonitor(self.log, self.settings.home, self.settings.collector).start()
        try:  # under the ASGI lifespan: probe the serving loop
            self._loop_delay = LoopDelay(self.settings.collector).start(asyncio.get_running_loop())
        except RuntimeError:  # no running loop: nothing is served
            self._loop_delay = None
        self._warm_up()

    def open_topics(self) -> None:
        """Ensure the ``events`` and ``bad_rows`` topics; learn the partition count."""
        self.partitions = self.log.ensure_topic(EVENTS_TOPIC, self.settings.log.partitions)
        self.log.ensure_topic(BAD_ROWS_TOPIC, 1)

    def close(self) -> None:
        """Commit what was submitted and stop the writer and the load monitor."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
        if self._loop_delay is not None:
            self._loop_delay.close()
            self._loop_delay = None

    def _warm_up(self) -> None:
        """The first request's one-time costs, paid at start-up: the first conversions of
        each kind, and pandas, which pyarrow imports on its first conversion where it can
        (a process not started by the ``headwater`` program: :func:`headwater.spark.defer_pandas`)
        — about a second that would otherwise land on the first request."""
        body = b'{"batch":[{"type":"track","event":"warm-up","userId":"u","timestamp":"2024-01-01T00:00:00Z"}],"sentAt":"2024-01-01T00:00:00Z"}'
        norm = segment.normalize(segment.parse_request(body), source="warm-up", received_at_us=time.time_ns() // 1000,
                                 tokenizer=Tokenizer(b"warm-up"))
        event_appends(norm.events, self.partitions)

    # -- steps ----------------------------------------------------------------------------
    def policy(self, source: str | None) -> PiiPolicy:
        """The PII policy of ``source`` (the default policy for an unknown or no source)."""
        config = self.keys.config(source)
        return config.pii if config is not None else PiiPolicy()

    def validate(self, env: Envelope, wire: Wire, *, source: str, received_at_us: int) -> Normalized:
        """The :class:`Normalized` events of ``env`` (not yet scrubbed) with every rejection:
        ``wire.normalize``, then contract validation (on the values as sent)."""
        norm = wire.normalize(env, source=source, received_at_us=received_at_us, tokenizer=self.tokenizer,
                              future_tolerance_us=int(self.settings.collector.future_tolerance_h * 3_600_000_000))
        config = self.keys.config(source)
        return contracts.apply(
            norm, self.validator, messages=env.messages, at=env.path,
            reject_unregistered=config is not None and config.unregistered_events == "reject",
            redact=lambda raw: wire.redact(raw, self.tokenizer), source=source, received_at_us=received_at_us, protocol=wire.protocol,
        )

    def accept(self, env: Envelope, wire: Wire, *, source: str, received_at_us: int) -> tuple[pa.Table, Normalized]:
        """The events of ``env`` to log and the :class:`Normalized` with every rejection:
        :meth:`validate`, then the source's PII policy on ``properties`` / ``context`` (one
        request alone: ``headwater badrows replay``; serving batches it, :meth:`record_batched`)."""
        norm = self.validate(env, wire, source=source, received_at_us=received_at_us)
        return scrubber(self.policy(source), self.tokenizer).apply(norm.events), norm

    def appends(self, events: pa.Table, bad_rows: Sequence[BadRow], source: str | None) -> list[Append]:
        """The log appends of one request: events by partition, then its bad rows (payloads
        scrubbed with ``source``'s PII policy, write keys removed)."""
        appends = event_appends(events, self.partitions)
        if bad_rows:
            appends.append(bad_rows_append(bad_rows, self.policy(source), self.tokenizer))
        return appends

    async def record(self, appends: list[Append]) -> None:
        """Submit ``appends`` to the group-commit writer; returns once they are durable.
        Raises :class:`QueueFull` (``collector.max_queue`` appends waiting), ``TimeoutError``
        (not durable within ``collector.append_timeout_s``: the submission is cancelled if
        still queued, else committed anyway) or the log's error."""
        await asyncio.wait_for(asyncio.wrap_future(self._writer.submit(appends)), self.settings.collector.append_timeout_s)

    async def record_batched(self, source: str, events: pa.Table, bad_rows: Sequence[BadRow]) -> None:
        """Store one request's validated ``events`` (scrubbed with ``source``'s PII policy here)
        and ``bad_rows`` durably, in the batch of the requests that reach this point in the same
        turn of the event loop (module doc, step 5); returns once the batch committed. Raises
        as :meth:`record`: :class:`QueueFull`, ``TimeoutError`` or the log's error."""
        loop = asyncio.get_running_loop()
        if self._batch is None:
            self._batch = []
            previous = self._submitted
            if previous is not None and not previous.done():  # flushed once it has committed (module doc, step 5)
                previous.add_done_callback(lambda _: self._flush_batch())
            else:
                loop.call_soon(self._flush_batch)
        waiter = loop.create_future()
        self._batch.append(_Pending(source, events, bad_rows, waiter))
        await asyncio.wait_for(waiter, self.settings.collector.append_timeout_s)

    def _flush_batch(self) -> None:
        """Scrub, partition and submit the waiting batch; its waiters resolve with the commit.
        ``collector.max_queue`` counts requests: those past the writer's room are refused."""
        batch = [p for p in self._batch if not p.waiter.done()]
        self._batch = None
        if self._writer is None:  # closed while the batch waited for the previous commit: a 503, retried
            for p in batch:
                p.waiter.set_exception(TransientError("the collector is stopping", field="writer", retry_after_s=1.0))
            return
        room = self._writer.room()
        if room is not None and room < len(batch):
            full = QueueFull(f"{self._writer.waiting} requests already waiting for the group commit (limit {self._writer.max_queue})",
                             field="max_queue", retry_after_s=1.0)
            for p in batch[room:]:
                p.waiter.set_exception(full)
            batch = batch[:room]
        if not batch:
            return
        try:
            by_source: dict[str, list[_Pending]] = {}
            for p in batch:
                by_source.setdefault(p.source, []).append(p)
            appends = []
            for source, requests in by_source.items():
                tables = [p.events for p in requests if p.events.num_rows]
                events = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0] if tables else requests[0].events
                appends += self.appends(scrubber(self.policy(source), self.tokenizer).apply(events),
                                        [row for p in requests for row in p.bad_rows], source)
            submitted = self._submitted = asyncio.wrap_future(self._writer.submit(appends, weight=len(batch)))
        except Exception as e:  # QueueFull, or a bug scrubbing: every request of the batch learns it
            if not isinstance(e, QueueFull):
                logger.exception("collector: preparing %d requests for the event log failed", len(batch))
            for p in batch:
                if not p.waiter.done():
                    p.waiter.set_exception(e)
            return
        waiting = len(batch)

        def settled(waiter: asyncio.Future) -> None:
            nonlocal waiting
            if waiter.cancelled():  # its request's timeout gave up on it
                waiting -= 1
                if waiting == 0 and not submitted.done():
                    submitted.cancel()  # dropped unless the writer has taken it already

        def resolve(done: asyncio.Future) -> None:
            for p in batch:
                if p.waiter.done():
                    continue
                if done.cancelled():
                    p.waiter.cancel()
                elif done.exception() is not None:
                    p.waiter.set_exception(done.exception())
                else:
                    p.waiter.set_result(None)

        for p in batch:
            p.waiter.add_done_callback(settled)
        submitted.add_done_callback(resolve)

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

    # -- load and health ------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Requests waiting for the group commit: in the writer's queue, and in the batch
        waiting for this worker's previous submission to commit (:meth:`record_batched`)."""
        return self._writer.waiting + (len(self._batch) if self._batch is not None else 0)

    def admit(self) -> Refusal | None:
        """The 429 / 503 refusing a new request (module doc, step 0), or None to take it.
        Reads counters and the monitor's last sample only: no I/O, no body."""
        limits = self.settings.collector
        if not self._writer.alive:  # first: a dead writer also fills the queue
            return Refusal(503, "unavailable", "writer", "The event log writer has stopped; retry later", 30)
        if self.in_flight >= limits.max_in_flight:
            return Refusal(429, "overloaded", "collector.max_in_flight",
                           f"{self.in_flight} requests in progress (limit {limits.max_in_flight}); retry later", 1)
        if (queued := self.queued) >= limits.max_queue:
            return Refusal(429, "overloaded", "collector.max_queue",
                           f"{queued} requests waiting for the event log (limit {limits.max_queue}); retry later", 1)
        if self._loop_delay is not None and (refused := self._loop_delay.refusal()) is not None:
            return refused
        return self._monitor.refusal()

    async def answer(self, request: Request, wire: Wire) -> Response:
        """:meth:`admit`, then :meth:`handle` counted in :attr:`in_flight`."""
        if (refused := self.admit()) is not None:
            return refusal_response(refused)
        self.in_flight += 1
        try:
            return await self.handle(request, wire)
        finally:
            self.in_flight -= 1

    def health(self) -> tuple[int, dict]:
        """``GET /health``: 200, or 503 when a component is ``down``; the body has
        ``status`` and ``writer`` (this worker process: its ``pid``, writer thread alive, queue,
        requests in flight; each worker of ``collector.workers`` answers for itself), ``stream`` (lag,
        progressing), ``disk`` (share used) and ``log`` (the backend's background problems,
        e.g. a failing SQLite checkpoint) sections, each with its own ``status``."""
        limits, writer = self.settings.collector, self._writer
        alive = writer is not None and writer.alive
        # Backends with background work (SqliteLog) list its failures in ``problems``.
        problems = list(getattr(self.log, "problems", ()))
        body = {
            "writer": {"status": "ok" if alive else "down", "alive": alive, "pid": os.getpid(), "queued": self.queued if writer else 0,
                       "max_queue": limits.max_queue, "in_flight": self.in_flight, "max_in_flight": limits.max_in_flight,
                       "loop_delay_ms": round(self._loop_delay.delay_ms, 1) if self._loop_delay else None},
            **(self._monitor.report() if self._monitor is not None else {}),
            "log": {"status": "down" if problems else "ok", "problems": problems},
        }
        down = not alive or self._monitor is None or any(part["status"] == "down" for part in body.values())
        return (503 if down else 200), {"status": "down" if down else "ok", **body}

    def ready(self) -> tuple[int, dict]:
        """``GET /ready``: 200 ``{"status": "ready"}`` when a request would be taken now
        (writer running, topics open, nothing shed by :meth:`admit`), else 503 with
        ``reason`` (the refusal's message) and ``limit``."""
        if self._writer is None or not self.partitions:
            return 503, {"status": "not_ready", "reason": "starting: the event log topics are not open yet", "limit": None}
        refused = self.admit()
        if refused is not None:
            return 503, {"status": "not_ready", "reason": refused.message, "limit": refused.limit}
        return 200, {"status": "ready"}

    # -- the request path -----------------------------------------------------------------
    async def handle(self, request: Request, wire: Wire) -> Response:
        """Answer one ingestion request in ``wire``'s format (see the module doc)."""
        received_us = time.time_ns() // 1000
        body = b""
        source = None
        client = request.client.host if request.client else None
        try:
            self.rate_limits.check_client(client)
            source = self.header_source(request, wire)
            if source is not None:
                self.rate_limits.admit_key(source)
            try:
                body = await read_body(request)
                env = wire.read(body, request.query_params, request.headers.get("content-type", ""), Limits.of(self.settings.collector))
            except (Oversize, WireError) as e:
                return await self.refuse(e, wire, request, body, source, received_us)
            if source is None:
                source = self.body_source(env, wire, body)
                self.rate_limits.admit_key(source)
        except Unauthorized as e:
            self.rate_limits.auth_failed(client)
            return await self.unauthorized(e, wire, received_us)
        except RateLimited as e:
            return error_response(429, "rate_limited", e.message, {"retry-after": str(e.retry_after_s)})

        norm = self.validate(env, wire, source=source, received_at_us=received_us)
        if norm.events.num_rows or norm.bad_rows:
            try:
                await self.record_batched(source, norm.events, norm.bad_rows)
            except QueueFull as e:
                return refusal_response(Refusal(429, "overloaded", "collector.max_queue", f"Too many requests waiting for the event log ({e}); retry later", 1))
            except TimeoutError:
                limit = self.settings.collector.append_timeout_s
                return refusal_response(Refusal(503, "unavailable", "collector.append_timeout_s", f"Event log append not durable within {limit:g} s; retry later", 1))
            except Exception as e:  # the transaction failed: nothing of this request is stored
                retry = math.ceil(getattr(e, "retry_after_s", None) or 1)
                return error_response(503, "unavailable", f"Event log append failed, retry later: {type(e).__name__}: {e}", {"retry-after": str(retry)})
        return self.response(norm, env, wire)

    @staticmethod
    def response(norm: Normalized, env: Envelope, wire: Wire) -> Response:
        """200 ``{"success", "accepted", "rejected", "errors"}``; 400 with ``code`` /
        ``message`` of the first error when every event of the request was rejected. At most
        :data:`~.wire.MAX_RESPONSE_ERRORS` errors are listed, ``errors_truncated`` counts the
        rest (the bad rows hold them all), so the response stays small whatever the batch."""
        result = {"success": norm.accepted > 0 or norm.rejected == 0, "accepted": norm.accepted, "rejected": norm.rejected,
                  "errors": norm.errors[:MAX_RESPONSE_ERRORS], **wire.response}
        if norm.rejected > MAX_RESPONSE_ERRORS:
            result["errors_truncated"] = norm.rejected - MAX_RESPONSE_ERRORS
        if norm.accepted == 0 and norm.rejected:
            first = result["errors"][0]
            what = f"Event rejected: {first['message']}" if env.single else f"All {norm.rejected} events rejected; first (index {first['index']}): {first['message']}"
            return json_response(400, {"code": first["code"], "message": what, **result})
        return json_response(200, result)


class _Pending(NamedTuple):
    """A request waiting in :meth:`Collector.record_batched`: its source, validated events and
    bad rows, and the future its handler awaits."""

    source: str
    events: pa.Table
    bad_rows: Sequence[BadRow]
    waiter: asyncio.Future


class Unauthorized(Exception):
    """A missing or unknown write key: ``message`` for the 401, the ``key`` presented (stored
    only as its token) and the ``body`` (its first 1 KB is kept, redacted)."""

    def __init__(self, message: str, *, key: str | None = None, body: bytes | None = None):
        super().__init__(message)
        self.message, self.key, self.body = message, key, body
