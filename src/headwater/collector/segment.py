"""Segment HTTP Tracking API wire format → canonical events (``EVENT_SCHEMA``) + bad rows.

Pure functions, no I/O: :func:`parse_request` decodes a request body into an
:class:`Envelope` (or raises :class:`WireError` for a request that cannot be read at
all), :func:`normalize` turns the envelope's messages into one Arrow table of canonical
events plus one bad row per rejected message. The HTTP layer (:mod:`.app`) adds auth,
gzip, limits and the log.

Protocol: Segment HTTP Tracking API (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/)
— ``POST /v1/batch`` with ``{"batch": [message, ...], "sentAt", "context", "writeKey"}``
and ``POST /v1/<type>`` with a single message; limits 32 KB per message and 500 KB per
batch request. Messages are decoded one by one (``msgspec.Raw`` keeps each message's
exact bytes) so one bad message never rejects its neighbours.

Mapping of a message to a row (all timestamps ``timestamp[us, UTC]``):

- ``event_id``: ``messageId`` stringified; when absent (or empty), ``uuid5(NAMESPACE,
  source + "\\n" + raw message bytes)`` — deterministic, so a client retry that resends
  the same message bytes gets the same id and is removed by dedup downstream (the
  batch-level ``sentAt``, which changes on retry, is not part of the message bytes).
- ``event_type``: ``type`` (the endpoint's type when absent); ``event_name``: ``event``
  for track, ``name`` for page/screen, null otherwise.
- ``anonymous_id`` / ``user_id``: HMAC tokens (:mod:`.tokens`), never the raw ids.
- ``event_ts``: clock-skew corrected event time, as Segment computes ``timestamp``
  (https://segment.com/docs/connections/spec/common/#timestamps):
  ``t + (received_at − sentAt)`` where ``t`` = ``timestamp``, else ``originalTimestamp``,
  and ``sentAt`` = the message's, else the batch's; ``t`` uncorrected without any
  ``sentAt``; ``received_at`` without any ``t``. Naive timestamps are read as UTC.
- ``source``: the write key's source; ``surface`` from ``context.library.name``:
  analytics.js / analytics-next (and other JavaScript SDKs) → ``web``; analytics-ios,
  -android, -react-native, -flutter, -swift, -kotlin → ``mobile``; any other library, or
  none → ``server``. ``platform``: lowercase ``context.device.type``, else lowercase
  ``context.os.name``, else ``web`` / ``server`` / ``mobile`` by surface.
- ``properties``: JSON text of ``properties`` (track/page/screen) or ``traits``
  (identify/group), ``"{}"`` when absent; alias: ``{"previousId": <token>}``; group:
  the traits plus ``"groupId"`` (not tokenised). ``context``: the JSON text as sent
  (merged under a batch-level ``context`` when one is sent). ``schema_version``: null.
- ``ds``: UTC date of ``event_ts``.

Envelope rules (violations → bad row ``envelope_violation``, reason names field and
rule): valid ``type``; ``userId`` or ``anonymousId``; track needs a non-empty ``event``;
alias needs ``previousId`` and ``userId``; group needs ``groupId``; ``properties`` /
``traits`` / ``context`` are JSON objects; timestamps are RFC 3339. A message over
32 KB is a ``size_violation``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from headwater.collector.tokens import Tokenizer
from headwater.events import BAD_ROW_SCHEMA, DECODE_FAILURE, ENVELOPE_VIOLATION, EVENT_SCHEMA, EVENT_TYPES, SIZE_VIOLATION, TS

MAX_EVENT_BYTES = 32 * 1024  # Segment: "32KB per call" / per message inside a batch
MAX_REQUEST_BYTES = 500 * 1024  # Segment: "500KB per batch request" (after decompression)
MAX_BAD_PAYLOAD_CHARS = 32 * 1024  # a bad row keeps at most this much of the payload


# Namespace of derived event ids (uuid5 over source + raw message bytes).
EVENT_ID_NAMESPACE = uuid.UUID("5f6d8a3e-2c1b-5d4e-9a7f-0b1c2d3e4f50")
_ID_FIELDS = ("userId", "anonymousId", "previousId")
_US_PER_DAY = 86_400_000_000
_TYPES_TEXT = ", ".join(EVENT_TYPES)


# -- wire structs ------------------------------------------------------------------------
# Only the fields the canonical event needs are declared; msgspec skips the rest without
# building Python objects for them. properties/traits/context stay msgspec.Raw (the exact
# JSON bytes), so they are stored without a decode/encode round trip. `Raw | None` is not
# a valid msgspec union, so "absent" is Raw(b"") and JSON null is Raw(b"null").
# gc=False: these structs hold only scalars, so they cannot form reference cycles; keeping
# them out of the cyclic GC saves its traversal of ~100 objects per request.
_EMPTY = msgspec.Raw(b"")


class _Message(msgspec.Struct, gc=False):
    type: Literal["track", "identify", "alias", "page", "screen", "group"] | None = None
    messageId: str | int | None = None
    userId: str | int | None = None
    anonymousId: str | int | None = None
    event: str | None = None
    name: str | None = None
    previousId: str | int | None = None
    groupId: str | int | None = None
    properties: msgspec.Raw = _EMPTY
    traits: msgspec.Raw = _EMPTY
    context: msgspec.Raw = _EMPTY
    timestamp: datetime | None = None
    originalTimestamp: datetime | None = None
    sentAt: datetime | None = None


class _Named(msgspec.Struct, gc=False):
    name: str | None = None


class _Device(msgspec.Struct, gc=False):
    type: str | None = None


class _Context(msgspec.Struct, gc=False):
    library: _Named | None = None
    device: _Device | None = None
    os: _Named | None = None


class _BatchBody(msgspec.Struct, gc=False):
    batch: list[msgspec.Raw]
    sentAt: datetime | None = None
    context: msgspec.Raw = _EMPTY
    writeKey: str | None = None


class _SingleBody(msgspec.Struct, gc=False):
    writeKey: str | None = None


_decode_message = msgspec.json.Decoder(_Message).decode
_decode_context = msgspec.json.Decoder(_Context).decode
_decode_batch = msgspec.json.Decoder(_BatchBody).decode
_decode_single = msgspec.json.Decoder(_SingleBody).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


# -- errors and results -------------------------------------------------------------------
class WireError(Exception):
    """A request that cannot be read at all (every event of it is rejected).

    ``code`` is the bad-row error type (``decode_failure`` for malformed JSON / gzip,
    ``envelope_violation`` for a body of the wrong shape, ``size_violation``), ``status``
    the HTTP status to answer (400 or 413), ``message`` names the field and the rule."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Envelope:
    """A decoded request body.

    ``messages``: each message's raw JSON bytes (``utf8``: False when the body is not
    entirely valid UTF-8, so messages must be checked one by one); ``single``: True for ``/v1/<type>``
    bodies (one message, ``path_type`` fills a missing ``type``); ``sent_at``: the
    batch-level ``sentAt`` (tz-aware or naive-as-UTC ``datetime``) or None; ``context``:
    batch-level context JSON bytes (``b""`` when absent); ``write_key``: ``writeKey`` of
    the body or None."""

    messages: list[msgspec.Raw]
    single: bool = False
    path_type: str | None = None
    sent_at: datetime | None = None
    context: bytes = b""
    write_key: str | None = None
    utf8: bool = True

    def path(self, i: int) -> str:
        """JSON path of message ``i`` in the request body (``$`` or ``$.batch[i]``)."""
        return "$" if self.single else f"$.batch[{i}]"


@dataclass
class Normalized:
    """Result of :func:`normalize`.

    ``events``: accepted messages as an ``EVENT_SCHEMA`` table (request order);
    ``bad_rows``: ``BAD_ROW_SCHEMA`` rows as dicts (``received_at`` in µs since the epoch,
    ``ds`` in days since the epoch), one per rejected message; ``errors``: per rejected
    message ``{"index", "code", "message"}`` for the HTTP response."""

    events: pa.Table
    bad_rows: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.events.num_rows

    @property
    def rejected(self) -> int:
        return len(self.errors)


# -- request decoding ---------------------------------------------------------------------
def parse_request(body: bytes, path_type: str | None = None) -> Envelope:
    """Decode a Segment request body (already decompressed).

    ``path_type`` None means ``/v1/batch`` (``{"batch": [...], ...}``), else the type of a
    single-message endpoint (``"track"``, ...). Raises :class:`WireError` with code
    ``decode_failure`` for malformed JSON and ``envelope_violation`` for a body of the
    wrong shape (not an object, ``batch`` missing or not an array, bad batch ``sentAt``)."""
    # JSON is UTF-8 (RFC 8259 §8.1). msgspec checks the strings it decodes but not the
    # bytes it keeps as Raw, and Arrow rejects invalid UTF-8 for a whole column: so
    # check the body once (ASCII fast path) and, only if that fails, each message.
    utf8 = body.isascii() or _is_utf8(body)
    try:
        if path_type is None:
            b = _decode_batch(body)
            ctx = bytes(b.context)
            if ctx == b"null":
                ctx = b""
            elif ctx and ctx[:1] != b"{":
                raise WireError(ENVELOPE_VIOLATION, f"Expected `object`, got {_json_kind(ctx)} - at `$.context`")
            if ctx and not _is_utf8(ctx):
                raise WireError(DECODE_FAILURE, "Invalid UTF-8 in JSON - at `$.context`")
            return Envelope(b.batch, sent_at=b.sentAt, context=ctx, write_key=b.writeKey, utf8=utf8)
        s = _decode_single(body)
        return Envelope([msgspec.Raw(body.strip())], single=True, path_type=path_type, write_key=s.writeKey, utf8=utf8)
    except msgspec.ValidationError as e:
        raise WireError(ENVELOPE_VIOLATION, _with_path(str(e), "$")) from None
    except msgspec.DecodeError as e:
        raise WireError(DECODE_FAILURE, _malformed(e)) from None
    except UnicodeDecodeError as e:  # a string msgspec decoded (e.g. writeKey)
        raise WireError(DECODE_FAILURE, f"Invalid UTF-8 in JSON: {e.reason} (JSON text must be UTF-8)") from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def write_key_of(body: bytes) -> str | None:
    """``writeKey`` of a JSON object body, or None (never raises): the auth fallback for
    requests whose body is otherwise unusable."""
    try:
        return _decode_single(body).writeKey
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None


# -- normalisation ------------------------------------------------------------------------
def normalize(env: Envelope, *, source: str, received_at_us: int, tokenizer: Tokenizer) -> Normalized:
    """Canonical events and bad rows of ``env``'s messages, sent by ``source`` and received
    at ``received_at_us`` (µs since the epoch, UTC). Never raises for bad messages: each
    becomes a bad row and an ``errors`` entry with its index in the request."""
    rows: list[tuple] = []  # one tuple per accepted message, transposed into columns once
    bad_rows: list[dict] = []
    errors: list[dict] = []

    single, path_type, batch_ctx, all_utf8 = env.single, env.path_type, env.context, env.utf8
    tok = tokenizer.token  # the memoised function itself: no wrapper frame per call
    source_prefix = EVENT_ID_NAMESPACE.bytes + source.encode() + b"\n"
    # Context → (surface, platform) memo: an SDK's batch often repeats the same context.
    ctx_memo: dict[bytes, tuple[str, str]] = {}

    def reject(i: int, code: str, reason: str, raw: msgspec.Raw) -> None:
        # `{at}` in reason → the message's JSON path; built only here, off the hot path.
        reason = reason.replace("{at}", "$" if single else f"$.batch[{i}]")
        errors.append({"index": i, "code": code, "message": reason})
        bad_rows.append(bad_row(received_at_us, source, code, reason, redact(bytes(raw), tokenizer)))

    for i, raw in enumerate(env.messages):
        if len(raw) > MAX_EVENT_BYTES:
            reject(i, SIZE_VIOLATION, f"Event of {len(raw)} bytes exceeds the limit of {MAX_EVENT_BYTES} bytes (32 KB) per event - at `{{at}}`", raw)
            continue
        if not all_utf8 and not _is_utf8(bytes(raw)):
            reject(i, DECODE_FAILURE, "Invalid UTF-8 in JSON (JSON text must be UTF-8) - at `{at}`", raw)
            continue
        try:
            m = _decode_message(raw)
        except msgspec.ValidationError as e:
            reason = _with_path(str(e), "{at}")
            if reason.endswith(".type`"):
                reason += f" (type must be one of {_TYPES_TEXT})"
            reject(i, ENVELOPE_VIOLATION, reason, raw)
            continue
        except msgspec.DecodeError as e:  # cannot happen for a member of a decoded array
            reject(i, DECODE_FAILURE, f"{_malformed(e)} - at `{{at}}`", raw)
            continue

        t = m.type
        if single:
            if t is None:
                t = path_type
            elif t != path_type:
                reject(i, ENVELOPE_VIOLATION, f"Field `type` is {t!r} but the endpoint is /v1/{path_type} - at `{{at}}.type`", raw)
                continue
        elif t is None:
            reject(i, ENVELOPE_VIOLATION, f"Object missing required field `type` (one of {_TYPES_TEXT}) - at `{{at}}`", raw)
            continue

        uid = m.userId
        if uid is not None and uid.__class__ is not str:
            uid = str(uid)
        aid = m.anonymousId
        if aid is not None and aid.__class__ is not str:
            aid = str(aid)
        if not uid and not aid:
            reject(i, ENVELOPE_VIOLATION, "Object missing required field `userId` or `anonymousId` (at least one must be a non-empty string) - at `{at}`", raw)
            continue

        # properties for track/page/screen, traits for identify/group; both must be objects.
        # bytes(): msgspec.Raw does not compare equal to bytes; b"" = absent or null.
        is_traits = t == "identify" or t == "group"
        body = bytes(m.traits if is_traits else m.properties)
        if body and body[0] != 0x7B:  # not "{"
            if body == b"null":
                body = b""
            else:
                reject(i, ENVELOPE_VIOLATION, _not_object(body, "traits" if is_traits else "properties"), raw)
                continue
        ctx = bytes(m.context)
        if ctx and ctx[0] != 0x7B:
            if ctx == b"null":
                ctx = b""
            else:
                reject(i, ENVELOPE_VIOLATION, _not_object(ctx, "context"), raw)
                continue

        name = None
        if t == "track":
            name = m.event
            if not name:
                reject(i, ENVELOPE_VIOLATION, "Object missing required field `event` (track events need a non-empty event name) - at `{at}`", raw)
                continue
            prop = body or b"{}"
        elif t == "page" or t == "screen":
            name = m.name
            prop = body or b"{}"
        elif t == "identify":
            prop = body or b"{}"
        elif t == "alias":
            prev = m.previousId
            if prev is None or prev == "":
                reject(i, ENVELOPE_VIOLATION, "Object missing required field `previousId` (alias events need previousId and userId) - at `{at}`", raw)
                continue
            if not uid:
                reject(i, ENVELOPE_VIOLATION, "Object missing required field `userId` (alias events need previousId and userId) - at `{at}`", raw)
                continue
            prop = _encode({"previousId": tok(str(prev))})
        else:  # group
            gid = m.groupId
            if gid is None or gid == "":
                reject(i, ENVELOPE_VIOLATION, "Object missing required field `groupId` (group events need a groupId) - at `{at}`", raw)
                continue
            traits = _decode_any(body) if body else {}
            traits["groupId"] = gid if gid.__class__ is str else str(gid)
            prop = _encode(traits)

        if batch_ctx:
            ctx = _merge_context(batch_ctx, ctx)
        sp = ctx_memo.get(ctx)
        if sp is None:
            sp = ctx_memo[ctx] = _surface_platform(ctx)

        mid = m.messageId
        if mid is None or mid == "":
            mid = derive_event_id(source_prefix, raw)
        elif mid.__class__ is not str:
            mid = str(mid)

        rows.append((
            mid, t, name, tok(aid) if aid else None, tok(uid) if uid else None,
            m.timestamp, m.originalTimestamp, m.sentAt, sp[0], sp[1], prop, ctx or b"{}",
        ))

    if rows:
        cols = list(zip(*rows))
    else:
        cols = [()] * 12
    event_ids, types, names, anons, users, tss, otss, sents, surfaces, platforms, props, ctxs = cols
    events = build_events(
        event_ids, types, names, anons, users, tss, otss, sents, env.sent_at, received_at_us,
        source, surfaces, platforms, props, ctxs,
    )
    return Normalized(events, bad_rows, errors)


def derive_event_id(source_prefix: bytes, raw: bytes) -> str:
    """Event id of a message sent without one: ``uuid5(EVENT_ID_NAMESPACE, source + "\\n" +
    message text)``, computed on bytes; ``source_prefix`` is ``EVENT_ID_NAMESPACE.bytes +
    source.encode() + b"\\n"``. A retry resending the same bytes gets the same id."""
    return str(uuid.UUID(bytes=hashlib.sha1(source_prefix + bytes(raw)).digest()[:16], version=5))


def build_events(event_ids, types, names, anons, users, tss, otss, sents, batch_sent, received_at_us,
                 source, surfaces, platforms, props, ctxs) -> pa.Table:
    """The ``EVENT_SCHEMA`` table of one request, from equal-length columns (sequences), with
    event time computed on whole columns (shared by every wire format).

    ``anons`` / ``users``: tokens or None; ``tss`` / ``otss`` / ``sents``: ``timestamp`` /
    ``originalTimestamp`` / per-event ``sentAt`` as ``datetime`` or None; ``batch_sent``: the
    request's ``sentAt`` or None (fills missing ``sents``); ``props`` / ``ctxs``: JSON text
    (``bytes`` or ``str``). Event time is ``coalesce(ts + (received_at − sent), ts, received_at)``
    with ``ts = coalesce(tss, otss)`` and ``sent = coalesce(sents, batch_sent)``."""
    n = len(event_ids)
    recv = pa.scalar(received_at_us, TS)
    # pa.array converts tz-aware datetimes to UTC and reads naive ones as UTC.
    ts = pa.array(tss, TS) if any(tss) else pa.nulls(n, TS)
    if any(otss):
        ts = pc.coalesce(ts, pa.array(otss, TS))
    sent = pa.array(sents, TS) if any(sents) else pa.nulls(n, TS)
    if batch_sent is not None:
        sent = pc.coalesce(sent, pa.scalar(batch_sent, TS))
    # Segment's skew correction: the client clock is off by (sentAt - received_at), the
    # same offset for every message of a request, so event time = t + (received_at - sentAt).
    # Null sentAt → null sum → uncorrected t; null t → received_at.
    event_ts = pc.coalesce(pc.add(ts, pc.subtract(recv, sent)), ts, recv)
    return pa.Table.from_arrays(
        [
            pa.array(event_ids, pa.string()),
            pa.array(types, pa.string()),
            pa.array(names, pa.string()),
            pa.array(anons, pa.string()),
            pa.array(users, pa.string()),
            event_ts,
            pa.repeat(recv, n),
            pa.repeat(pa.scalar(source, pa.string()), n),
            pa.array(surfaces, pa.string()),
            pa.array(platforms, pa.string()),
            pa.array(props, pa.string()),  # bytes → utf8, validated by Arrow
            pa.array(ctxs, pa.string()),
            pa.nulls(n, pa.string()),
            pc.cast(event_ts, pa.date32()),  # tz is UTC, so this is the UTC date
        ],
        schema=EVENT_SCHEMA,
    )


# -- context → surface / platform ---------------------------------------------------------
_WEB_LIBRARIES = {"analytics.js", "analytics-next", "@segment/analytics-next", "analytics.js-next"}
_MOBILE_MARKERS = ("ios", "android", "react-native", "flutter", "swift", "kotlin", "xamarin", "unity")
_SURFACE_MEMO: dict[str | None, str] = {}


def surface_of(library_name: str | None) -> str:
    """``"web"`` / ``"mobile"`` / ``"server"`` for a ``context.library.name`` (see module doc)."""
    s = _SURFACE_MEMO.get(library_name)
    if s is None:
        n = (library_name or "").lower()
        if not n:
            s = "server"
        elif n in _WEB_LIBRARIES or n.startswith(("analytics.js", "analytics-next")) or "javascript" in n:
            s = "web"
        elif any(k in n for k in _MOBILE_MARKERS):
            s = "mobile"
        else:
            s = "server"
        if len(_SURFACE_MEMO) < 4096:
            _SURFACE_MEMO[library_name] = s
    return s


def _surface_platform(ctx: bytes) -> tuple[str, str]:
    lib = dev = os_name = None
    if ctx:
        try:
            c = _decode_context(ctx)
            lib = c.library.name if c.library else None
            dev = c.device.type if c.device else None
            os_name = c.os.name if c.os else None
        except msgspec.ValidationError:  # odd sub-fields (e.g. library: "x"): read leniently
            c = _decode_any(ctx)
            lib, dev, os_name = (_get_str(c, k, f) for k, f in (("library", "name"), ("device", "type"), ("os", "name")))
    surface = surface_of(lib)
    platform = (dev or os_name or "").lower() or surface
    return surface, platform


def _get_str(obj: Any, key: str, sub: str) -> str | None:
    v = obj.get(key) if isinstance(obj, dict) else None
    v = v.get(sub) if isinstance(v, dict) else None
    return v if isinstance(v, str) else None


def _merge_context(batch_ctx: bytes, ctx: bytes) -> bytes:
    """Batch-level context with the message's own context on top (shallow, message wins)."""
    merged = _decode_any(batch_ctx)
    if ctx:
        merged.update(_decode_any(ctx))
    return _encode(merged)


# -- helpers ------------------------------------------------------------------------------
def _json_kind(raw: bytes) -> str:
    c = raw[:1]
    return {b"[": "`array`", b'"': "`str`", b"t": "`bool`", b"f": "`bool`"}.get(c, "`number`")


def _not_object(raw: bytes, name: str) -> str:
    """Reason text for field ``name`` whose JSON value ``raw`` is not an object."""
    return f"Expected `object`, got {_json_kind(raw)} - at `{{at}}.{name}` ({name} must be a JSON object)"


def _malformed(e: msgspec.DecodeError) -> str:
    text = str(e).removeprefix("JSON is malformed: ")
    return f"Malformed JSON: {text[:1].lower()}{text[1:]}"


def _with_path(msg: str, at: str) -> str:
    """Rebase msgspec's ``$``-rooted path onto ``at`` (e.g. ``$.batch[3]``)."""
    if "`$" in msg:
        return msg if at == "$" else msg.replace("`$", f"`{at}", 1)
    return f"{msg} - at `{at}`"


def bad_row(received_at_us: int, source: str | None, error_type: str, reason: str, payload: str | None,
            protocol: str | None = "segment") -> dict:
    """One ``BAD_ROW_SCHEMA`` row as a dict (``received_at`` µs, ``ds`` days since epoch);
    ``protocol`` names the wire format of ``payload`` (what ``headwater badrows replay`` re-runs)."""
    return {
        "received_at": received_at_us,
        "source": source,
        "error_type": error_type,
        "reason": reason,
        "payload": payload,
        "protocol": protocol,
        "ds": received_at_us // _US_PER_DAY,
    }


def bad_rows_table(rows: list[dict]) -> pa.Table:
    """``BAD_ROW_SCHEMA`` table of :func:`bad_row` dicts."""
    return pa.Table.from_pylist(rows, schema=BAD_ROW_SCHEMA)


# Identifier values inside text that is not decodable JSON (truncated / malformed bodies).
_ID_TEXT = re.compile(r'"(userId|anonymousId|previousId)"(\s*:\s*)("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?)')
_ID_TAIL = re.compile(r'"(?:userId|anonymousId|previousId)"\s*:\s*"(?:[^"\\]|\\.)*\\?$')


def redact(raw: bytes, tokenizer: Tokenizer, limit: int = MAX_BAD_PAYLOAD_CHARS) -> str:
    """``raw`` as text for a bad row, at most ``limit`` characters, identifiers tokenised.

    A JSON object has its ``userId`` / ``anonymousId`` / ``previousId`` values (and those of
    each object in a ``batch`` array) replaced by their tokens and is re-encoded; anything
    else is decoded as UTF-8 (invalid bytes replaced) and identifier values that look like
    ``"userId": "..."`` are replaced textually, so no raw id is stored either way."""
    try:
        obj = _decode_any(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict):
        _tokenise_ids(obj, tokenizer)
        if isinstance(obj.get("batch"), list):
            for m in obj["batch"]:
                if isinstance(m, dict):
                    _tokenise_ids(m, tokenizer)
        return _encode(obj).decode()[:limit]
    text = raw[: limit * 4].decode("utf-8", "replace")[:limit]
    # Tokens may be longer than the ids they replace: cut again after substituting. An id
    # cut in half at the end of the text is not matched (no closing quote): drop the tail.
    text = _ID_TEXT.sub(lambda mt: f'"{mt[1]}"{mt[2]}"{tokenizer(_unquote(mt[3]))}"', text)
    text = _ID_TAIL.sub("", text)
    return text[:limit]


def _unquote(v: str) -> str:
    if v.startswith('"'):
        try:
            return msgspec.json.decode(v)
        except msgspec.DecodeError:
            return v[1:-1]
    return v


def _tokenise_ids(obj: dict, tokenizer: Tokenizer) -> None:
    for k in _ID_FIELDS:
        v = obj.get(k)
        if v is not None and v != "" and not isinstance(v, (dict, list)):
            obj[k] = tokenizer(v if isinstance(v, str) else str(v))
