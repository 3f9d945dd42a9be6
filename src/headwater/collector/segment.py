"""Segment HTTP Tracking API wire format → canonical events (``EVENT_SCHEMA``) + bad rows.

A wire adapter over the ingest core (:mod:`headwater.ingest`), pure functions, no I/O:
:func:`parse_request` decodes a request body into an :class:`Envelope` (or raises
:class:`~.wire.WireError` for a request that cannot be read at all), :func:`normalize`
turns the envelope's messages into canonical event columns (built into one Arrow table by
:func:`headwater.ingest.canonical.build_events`) plus one bad row per rejected message. The
HTTP layer (:mod:`.collector`) adds auth, gzip, limits and the log.

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
- ``anonymous_id`` / ``user_id``: HMAC tokens (:mod:`headwater.ingest.tokens`), never the raw ids.
- ``event_ts``: clock-skew corrected event time, as Segment computes ``timestamp``
  (https://segment.com/docs/connections/spec/common/#timestamps):
  ``t + (received_at − sentAt)`` where ``t`` = ``timestamp``, else ``originalTimestamp``,
  and ``sentAt`` = the message's, else the batch's; ``t`` uncorrected without any
  ``sentAt``; ``received_at`` without any ``t``. Naive timestamps are read as UTC.
- ``source``: the write key's source; ``surface`` from ``context.library.name``
  (:func:`headwater.ingest.canonical.surface_of`): analytics.js / analytics-next (and other
  JavaScript SDKs) → ``web``; analytics-ios, -android, -react-native, -flutter, -swift,
  -kotlin → ``mobile``; any other library, or none → ``server``. ``platform``: lowercase ``context.device.type``, else lowercase
  ``context.os.name``, else ``web`` / ``server`` / ``mobile`` by surface.
- ``properties``: JSON text of ``properties`` (track/page/screen) or ``traits``
  (identify/group), ``"{}"`` when absent; alias: ``{"previousId": <token>}``; group:
  the traits plus ``"groupId"`` (not tokenised). ``context``: the JSON text as sent
  (merged under a batch-level ``context`` when one is sent). ``schema_version``: null.
- ``ds``: UTC date of ``event_ts``.

Envelope rules (violations → bad row ``envelope_violation``, reason names field and
rule): valid ``type``; ``userId`` or ``anonymousId``; track needs a non-empty ``event``;
alias needs ``previousId`` and ``userId``; group needs ``groupId``; ``properties`` /
``traits`` / ``context`` are JSON objects; timestamps are RFC 3339; the event time lies in
years 1970..9999 (rule ``event_time_range``; one more than 23 h ahead of the receive time is
replaced by it and flagged in ``context.headwater``: :mod:`headwater.ingest.canonical`). A message over
32 KB is a ``size_violation``; one nested deeper than ``collector.max_depth`` levels an
``envelope_violation`` with rule ``max_depth`` (:func:`~.wire.cut_deep`: its neighbours are
kept); a request of more than ``collector.max_events_per_request`` messages is refused (413).
An unexpected error while normalising one message rejects that message alone
(``decode_failure``, rule ``internal``, logged). Bad-row payloads have ``userId`` / ``anonymousId`` /
``previousId`` tokenised (:data:`ID_FIELDS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec

from headwater.collector.wire import (
    DEPTH_CUT,
    MAX_EVENT_BYTES,
    Limits,
    Wire,
    WireError,
    contained,
    cut_deep,
    depth_reason,
    reason_text,
    reject_time_violations,
)
from headwater.events import (
    DECODE_FAILURE,
    ENVELOPE_VIOLATION,
    EVENT_TYPES,
    SIZE_VIOLATION,
)
from headwater.ingest.badrows import BadRow, redact
from headwater.ingest.canonical import (
    FUTURE_TOLERANCE_US,
    EventColumns,
    Normalized,
    Rejection,
    build_events,
    derive_event_id,
    event_id_prefix,
    surface_of,
)
from headwater.ingest.tokens import Tokenizer

PROTOCOL = "segment"
# Batch paths: /v1/import is Segment's historical-import alias of /v1/batch, /v1/b analytics.js's.
BATCH_PATHS = ("/v1/batch", "/v1/import", "/v1/b")
ID_FIELDS = ("userId", "anonymousId", "previousId")  # tokenised in bad-row payloads
_TYPES_TEXT = ", ".join(EVENT_TYPES)
# Where each event-time input lives (TimeViolation.field → path below the message, or absolute).
_TIME_PATHS = {"timestamp": ".timestamp", "original_timestamp": ".originalTimestamp", "sent_at": ".sentAt", "request_sent_at": "$.sentAt"}


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


# -- request decoding ---------------------------------------------------------------------
@dataclass(frozen=True)
class Envelope:
    """A decoded request body.

    ``messages``: each message's raw JSON bytes (``utf8``: False when the body is not
    entirely valid UTF-8, so messages must be checked one by one); ``single``: True for ``/v1/<type>``
    bodies (one message, ``path_type`` fills a missing ``type``); ``sent_at``: the
    batch-level ``sentAt`` (tz-aware or naive-as-UTC ``datetime``) or None; ``context``:
    batch-level context JSON bytes (``b""`` when absent); ``write_key``: ``writeKey`` of
    the body or None; ``depth_limit``: the nesting limit when some message was nested deeper
    (its values past the limit replaced by :data:`~.wire.DEPTH_CUT`), else None."""

    messages: list[msgspec.Raw]
    single: bool = False
    path_type: str | None = None
    sent_at: datetime | None = None
    context: bytes = b""
    write_key: str | None = None
    utf8: bool = True
    depth_limit: int | None = None

    def path(self, i: int) -> str:
        """JSON path of message ``i`` in the request body (``$`` or ``$.batch[i]``)."""
        return "$" if self.single else f"$.batch[{i}]"


def parse_request(body: bytes, path_type: str | None = None, limits: Limits = Limits()) -> Envelope:
    """Decode a Segment request body (already decompressed).

    ``path_type`` None means ``/v1/batch`` (``{"batch": [...], ...}``), else the type of a
    single-message endpoint (``"track"``, ...). Raises :class:`WireError` with code
    ``decode_failure`` for malformed JSON and ``envelope_violation`` for a body of the
    wrong shape (not an object, ``batch`` missing or not an array, bad batch ``sentAt``, a
    batch ``context`` nested deeper than ``limits.max_depth``), and 413 ``size_violation``
    for more than ``limits.max_events`` messages."""
    # JSON is UTF-8 (RFC 8259 §8.1). msgspec checks the strings it decodes but not the
    # bytes it keeps as Raw, and Arrow rejects invalid UTF-8 for a whole column: so
    # check the body once (ASCII fast path) and, only if that fails, each message.
    utf8 = body.isascii() or _is_utf8(body)
    # Messages sit at level 2 of a batch ({"batch": [...]}), at level 0 of a single body.
    body = cut_deep(body, limits.max_depth + (2 if path_type is None else 0))
    depth_limit = limits.max_depth if DEPTH_CUT in body else None
    try:
        if path_type is None:
            b = _decode_batch(body)
            limits.check_count(len(b.batch))
            ctx = bytes(b.context)
            if ctx == b"null":
                ctx = b""
            elif ctx and ctx[:1] != b"{":
                raise WireError(ENVELOPE_VIOLATION, f"Expected `object`, got {_json_kind(ctx)} - at `$.context`")
            if depth_limit is not None and DEPTH_CUT in ctx:
                raise WireError(ENVELOPE_VIOLATION, depth_reason(limits.max_depth, "$.context"))
            if ctx and not _is_utf8(ctx):
                raise WireError(DECODE_FAILURE, "Invalid UTF-8 in JSON - at `$.context`")
            return Envelope(b.batch, sent_at=b.sentAt, context=ctx, write_key=b.writeKey, utf8=utf8, depth_limit=depth_limit)
        s = _decode_single(body)
        return Envelope([msgspec.Raw(body.strip())], single=True, path_type=path_type, write_key=s.writeKey, utf8=utf8,
                        depth_limit=depth_limit)
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
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None


# -- normalisation ------------------------------------------------------------------------
def normalize(env: Envelope, *, source: str, received_at_us: int, tokenizer: Tokenizer,
              future_tolerance_us: int = FUTURE_TOLERANCE_US) -> Normalized:
    """Canonical events and bad rows of ``env``'s messages, sent by ``source`` and received
    at ``received_at_us`` (µs since the epoch, UTC); event-time rules with
    ``future_tolerance_us`` (:func:`~headwater.ingest.canonical.event_time`). Never raises for
    bad messages: each becomes a bad row and an ``errors`` entry with its index in the request."""
    rows: list[tuple] = []  # one tuple per accepted message (EventColumns order), transposed once
    rows_at: list[int] = []  # message index of each row
    rejections: list[Rejection] = []

    single, path_type, batch_ctx, all_utf8, depth_limit = env.single, env.path_type, env.context, env.utf8, env.depth_limit
    tok = tokenizer.token  # the memoised function itself: no wrapper frame per call
    id_prefix = event_id_prefix(source)
    # Context → (surface, platform) memo: an SDK's batch often repeats the same context.
    ctx_memo: dict[bytes, tuple[str, str]] = {}

    def reject(i: int, code: str, reason: str, raw: msgspec.Raw, field: str = "", rule: str | None = None) -> None:
        # `{at}` in reason → the message's JSON path; built only here, off the hot path.
        at = env.path(i)
        reason = reason_text(reason.replace("{at}", at))
        payload = redact(bytes(raw), tokenizer, ID_FIELDS)
        rejections.append(Rejection(i, BadRow(code, reason, source, received_at_us, payload, PROTOCOL, at + field, rule)))

    for i, raw in enumerate(env.messages):
        try:
            if len(raw) > MAX_EVENT_BYTES:
                reject(i, SIZE_VIOLATION, f"Event of {len(raw)} bytes exceeds the limit of {MAX_EVENT_BYTES} bytes (32 KB) per event - at `{{at}}`", raw, rule="max_bytes")
                continue
            if depth_limit is not None and DEPTH_CUT in bytes(raw):
                reject(i, ENVELOPE_VIOLATION, depth_reason(depth_limit), raw, rule="max_depth")
                continue
            if not all_utf8 and not _is_utf8(bytes(raw)):
                reject(i, DECODE_FAILURE, "Invalid UTF-8 in JSON (JSON text must be UTF-8) - at `{at}`", raw, rule="utf8")
                continue
            try:
                m = _decode_message(raw)
            except msgspec.ValidationError as e:
                reason = _with_path(str(e), "{at}")
                if reason.endswith(".type`"):
                    reason += f" (type must be one of {_TYPES_TEXT})"
                reject(i, ENVELOPE_VIOLATION, reason, raw, _msgspec_path(str(e)), "type")
                continue
            except msgspec.DecodeError as e:  # cannot happen for a member of a decoded array
                reject(i, DECODE_FAILURE, f"{_malformed(e)} - at `{{at}}`", raw, rule="json")
                continue

            t = m.type
            if single:
                if t is None:
                    t = path_type
                elif t != path_type:
                    reject(i, ENVELOPE_VIOLATION, f"Field `type` is {t!r} but the endpoint is /v1/{path_type} - at `{{at}}.type`", raw, ".type", "endpoint")
                    continue
            elif t is None:
                reject(i, ENVELOPE_VIOLATION, f"Object missing required field `type` (one of {_TYPES_TEXT}) - at `{{at}}`", raw, ".type", "required")
                continue

            uid = m.userId
            if uid is not None and uid.__class__ is not str:
                uid = str(uid)
            aid = m.anonymousId
            if aid is not None and aid.__class__ is not str:
                aid = str(aid)
            if not uid and not aid:
                reject(i, ENVELOPE_VIOLATION, "Object missing required field `userId` or `anonymousId` (at least one must be a non-empty string) - at `{at}`", raw, ".userId", "required")
                continue

            # properties for track/page/screen, traits for identify/group; both must be objects.
            # bytes(): msgspec.Raw does not compare equal to bytes; b"" = absent or null.
            is_traits = t == "identify" or t == "group"
            body = bytes(m.traits if is_traits else m.properties)
            if body and body[0] != 0x7B:  # not "{"
                if body == b"null":
                    body = b""
                else:
                    what = "traits" if is_traits else "properties"
                    reject(i, ENVELOPE_VIOLATION, _not_object(body, what), raw, f".{what}", "object")
                    continue
            ctx = bytes(m.context)
            if ctx and ctx[0] != 0x7B:
                if ctx == b"null":
                    ctx = b""
                else:
                    reject(i, ENVELOPE_VIOLATION, _not_object(ctx, "context"), raw, ".context", "object")
                    continue

            name = None
            if t == "track":
                name = m.event
                if not name:
                    reject(i, ENVELOPE_VIOLATION, "Object missing required field `event` (track events need a non-empty event name) - at `{at}`", raw, ".event", "required")
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
                    reject(i, ENVELOPE_VIOLATION, "Object missing required field `previousId` (alias events need previousId and userId) - at `{at}`", raw, ".previousId", "required")
                    continue
                if not uid:
                    reject(i, ENVELOPE_VIOLATION, "Object missing required field `userId` (alias events need previousId and userId) - at `{at}`", raw, ".userId", "required")
                    continue
                prop = _encode({"previousId": tok(str(prev))})
            else:  # group
                gid = m.groupId
                if gid is None or gid == "":
                    reject(i, ENVELOPE_VIOLATION, "Object missing required field `groupId` (group events need a groupId) - at `{at}`", raw, ".groupId", "required")
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
                mid = derive_event_id(id_prefix, raw)
            elif mid.__class__ is not str:
                mid = str(mid)

            rows.append((
                mid, t, name, tok(aid) if aid else None, tok(uid) if uid else None,
                m.timestamp, m.originalTimestamp, m.sentAt, sp[0], sp[1], prop, ctx or b"{}",
            ))
            rows_at.append(i)
        except Exception as e:  # a bug this message exposed: reject it, keep its neighbours
            reject(i, DECODE_FAILURE, contained(i, e, PROTOCOL), raw, rule="internal")

    built = build_events(EventColumns.from_rows(rows), source=source, received_at_us=received_at_us, sent_at=env.sent_at,
                         future_tolerance_us=future_tolerance_us)
    if built.violations:  # event time out of range: a bad row naming the field
        reject_time_violations(built.violations, _TIME_PATHS, rows_at, env.messages, reject)
        rejections.sort(key=lambda r: r.index)
    return Normalized(built.events, rejections)


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


def _msgspec_path(msg: str) -> str:
    """The path below ``$`` that a msgspec error message names (``"- at `$.event`"`` → ``".event"``)."""
    start = msg.find("`$")
    return msg[start + 2 : msg.index("`", start + 2)] if start >= 0 else ""


def _with_path(msg: str, at: str) -> str:
    """Rebase msgspec's ``$``-rooted path onto ``at`` (e.g. ``$.batch[3]``)."""
    if "`$" in msg:
        return msg if at == "$" else msg.replace("`$", f"`{at}", 1)
    return f"{msg} - at `{at}`"


def wire(path_type: str | None = None) -> Wire:
    """The Segment format as the collector speaks it on ``/v1/batch`` (``path_type`` None) or
    ``/v1/<path_type>``."""
    return Wire(
        PROTOCOL,
        parse=lambda body, _query, _content_type, limits: parse_request(body, path_type, limits),
        normalize=normalize,
        write_key_of=lambda body, _query: write_key_of(body),
        id_fields=ID_FIELDS,
        key_help="HTTP Basic auth with the write key as username, or `writeKey` in the body",
        key_field="Field `writeKey`",
        basic_auth=True,
    )
