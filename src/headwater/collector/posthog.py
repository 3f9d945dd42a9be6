"""PostHog capture API wire format → canonical events (``EVENT_SCHEMA``) + bad rows.

A wire adapter over the ingest core (:mod:`headwater.ingest`), pure functions, no I/O,
like :mod:`.segment`.

Protocol — PostHog's capture endpoints ``/batch/``, ``/e/``, ``/capture/``, ``/i/v0/e/``,
``/track/``, ``/engage/``, as its SDKs send them and as PostHog's own capture service reads
them (github.com/PostHog/posthog, ``rust/capture``: ``extract_payload_bytes``,
``RawRequest::from_bytes``, ``RawEvent::extract_token`` / ``extract_distinct_id``):

- body: JSON, or a form (``application/x-www-form-urlencoded``) whose ``data`` field holds
  the JSON (posthog-js ``/e/``), either possibly base64-encoded and/or gzip-compressed.
  Gzip is detected by its magic bytes (``?compression=gzip-js`` is only a hint, often wrong,
  as PostHog notes); ``Content-Encoding: gzip`` is undone by the HTTP layer first;
  ``compression=lz64`` (legacy posthog-js) is refused (``decode_failure``).
- JSON: an array of events (posthog-js), ``{"batch": [...], "api_key"|"token",
  "sent_at"?, "historical_migration"?}`` (server SDKs), or a single event object.
- write key (PostHog's project token): ``api_key`` / ``token`` of a batch, else each event's
  ``token`` / ``$token`` / ``api_key`` / ``properties.token`` (must agree), else the query
  string's ``token`` / ``api_key``. It is removed from the stored properties.
- ``sent_at``: the batch's ``sent_at`` (ISO 8601, else 400 naming it), else the query's
  ``_`` (ms since the epoch: 1–15 ASCII digits up to year 9999, else 400 naming it; used
  only if after 2020, as PostHog does). ``ver`` and ``ip`` are not read.

Mapping of an event to a row:

- ``event_id``: ``uuid``; derived like Segment's (:func:`headwater.ingest.canonical.derive_event_id`) when absent.
- ``distinct_id`` (else ``$distinct_id``, else ``properties.distinct_id``; numbers and
  containers stringified, cut to 200 characters — PostHog's rules) is the event's id.
  ``anonymous_id`` is the device id (``properties.$device_id``, web and mobile SDKs);
  ``user_id`` is ``distinct_id`` unless it equals the device id (an anonymous visitor, whose
  posthog-js distinct id *is* the device id). Both are HMAC tokens.
- ``$identify`` → ``identify``: ``user_id`` = distinct_id, ``anonymous_id`` =
  ``properties.$anon_distinct_id`` (else the device id) — the same anonymous→user link a
  Segment identify carries. ``$set`` / ``$set_once`` events → ``identify`` of distinct_id.
- ``$create_alias`` → ``alias``: ``previousId`` = distinct_id, ``user_id`` =
  ``properties.alias`` (Segment's alias: the old id is linked to the new one).
- ``$pageview`` → ``page`` named ``$pathname`` (else ``$current_url``); ``$screen`` →
  ``screen`` named ``$screen_name``; ``$groupidentify`` with ``$group_key`` → ``group``
  (``properties.groupId`` = the key); any other event → ``track`` named ``event``.
- ``properties``: as sent, plus top-level ``$set`` / ``$set_once`` merged into
  ``properties.$set`` / ``$set_once`` (as PostHog's ingestion does), minus the write key;
  identity properties (``distinct_id``, ``$anon_distinct_id``, ``$device_id``, ``$user_id``,
  ``alias``) tokenised. ``context``: ``{"library": {"name": $lib, "version": $lib_version}}``.
  The client IP of the HTTP request is not stored.
- ``event_ts``: ``timestamp`` corrected for clock skew with ``sent_at`` exactly as for Segment
  (``t + (received_at − sent_at)``; uncorrected without ``sent_at`` or with
  ``properties.$ignore_sent_at``); ``received_at − offset`` (ms) for posthog-js events that
  carry ``offset`` instead of ``timestamp``; else ``received_at``.
- ``surface``: ``web`` for ``$lib`` web / posthog-js, else as for Segment library names
  (``posthog-ios`` → mobile, ``posthog-python`` → server); ``platform``: lowercase
  ``$device_type``, else ``$os``, else the surface.

Envelope rules (→ bad row ``envelope_violation``): an event is a JSON object with a
non-empty ``event`` and a ``distinct_id``; ``$create_alias`` needs ``properties.alias``;
``properties`` / ``$set`` / ``$set_once`` are objects; ``timestamp`` is RFC 3339; ``offset``
an integer; the event time lies in years 1970..9999 (rule ``event_time_range``, so a huge
``offset`` is a bad row; one more than 23 h ahead is replaced by the receive time and flagged:
:mod:`headwater.ingest.canonical`). Limits as for Segment: 32 KB per event, 500 KB per request (decompressed),
``collector.max_depth`` nesting levels per event, ``collector.max_events_per_request`` events.
Bad-row payloads have the identity fields tokenised (:data:`ID_FIELDS`, at any depth) and
the write key removed.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import urllib.parse
import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

import msgspec

from headwater.collector.wire import (
    DEPTH_CUT,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    Limits,
    Wire,
    WireError,
    contained,
    cut_deep,
    depth_reason,
    reason_text,
    reject_time_violations,
)
from headwater.events import DECODE_FAILURE, ENVELOPE_VIOLATION, SIZE_VIOLATION
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

PROTOCOL = "posthog"
# Capture paths (each also served without the trailing slash).
PATHS = ("/batch/", "/e/", "/capture/", "/i/v0/e/", "/track/", "/engage/")

_GZIP_MAGIC = b"\x1f\x8b\x08"
_MAX_DISTINCT_ID_CHARS = 200  # PostHog's extract_distinct_id
_ID_PROPERTIES = ("distinct_id", "$distinct_id", "$anon_distinct_id", "$device_id", "$user_id", "alias")
_TOKEN_PROPERTIES = ("token", "$token", "api_key")
# Bad-row payloads: identity fields tokenised at any depth (in the PII policy's key form:
# `$device_id` matches `device_id`), the write key dropped.
ID_FIELDS = ("distinct_id", "anon_distinct_id", "device_id", "user_id", "alias")
DROP_FIELDS = _TOKEN_PROPERTIES
_WEB_LIBS = {"web", "posthog-js", "posthog-js-lite"}
_MIN_SENT_AT = dt.datetime(2021, 1, 1, tzinfo=dt.timezone.utc)
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z in ms since the epoch
# Where each event-time input lives (TimeViolation.field → path below the event, or absolute).
_TIME_PATHS = {"timestamp": ".timestamp", "offset": ".offset", "sent_at": "$.sent_at", "request_sent_at": "$.sent_at"}


class _Event(msgspec.Struct, gc=False):
    event: str | None = None
    distinct_id: Any = None
    alt_distinct_id: Any = msgspec.field(default=None, name="$distinct_id")
    uuid: str | None = None
    properties: dict[str, Any] | None = None
    timestamp: datetime | None = None
    offset: int | None = None
    token: str | None = None
    alt_token: str | None = msgspec.field(default=None, name="$token")
    api_key: str | None = None
    set: dict[str, Any] | None = msgspec.field(default=None, name="$set")
    set_once: dict[str, Any] | None = msgspec.field(default=None, name="$set_once")

    def write_key(self) -> str | None:
        key = self.token or self.alt_token or self.api_key
        if key is None and self.properties:
            key = self.properties.get("token")
        return key if isinstance(key, str) and key else None


class _Object(msgspec.Struct, gc=False):
    batch: list[msgspec.Raw] | None = None
    api_key: str | None = None
    token: str | None = None
    sent_at: str | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_object = msgspec.json.Decoder(_Object).decode
_decode_array = msgspec.json.Decoder(list[msgspec.Raw]).decode
_encode = msgspec.json.Encoder().encode
_encode_sorted = msgspec.json.Encoder(order="sorted").encode


@dataclass(frozen=True)
class Request:
    """A decoded capture request: each event's raw JSON and its decoded form (or the
    ``msgspec.ValidationError`` it raised), the write key, the request's ``sent_at``, and
    ``at``: the JSON path prefix of the events (``$`` one event, ``$[i]`` array,
    ``$.batch[i]`` batch); ``depth_limit``: the nesting limit when some event was nested
    deeper (its values past the limit replaced by :data:`~.wire.DEPTH_CUT`), else None."""

    raws: list[msgspec.Raw]
    events: list[_Event | msgspec.ValidationError]
    write_key: str | None
    sent_at: datetime | None
    at: str
    depth_limit: int | None = None

    @property
    def single(self) -> bool:
        return self.at == "$"

    @property
    def messages(self) -> list[msgspec.Raw]:
        return self.raws

    def path(self, i: int) -> str:
        """JSON path of event ``i`` in the payload."""
        return self.at.format(i=i)


# -- request decoding -------------------------------------------------------------------
def payload_bytes(body: bytes, content_type: str = "", query: Mapping[str, str] | None = None) -> bytes:
    """The JSON payload of a capture request body (HTTP ``Content-Encoding`` already undone).

    Raises :class:`~.wire.WireError`: ``decode_failure`` for bad base64 / gzip / form /
    lz64, ``size_violation`` (413) when the payload inflates past 500 KB."""
    query = query or {}
    if (query.get("compression") or "").lower() == "lz64":
        raise WireError(DECODE_FAILURE, "Unsupported compression `lz64` (query `compression`): send gzip-js, gzip or none")
    data = body
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded" or data.startswith(b"data="):
        # latin-1 both ways: every byte (raw or %-escaped) maps to one character and back.
        form = urllib.parse.parse_qs(data.decode("latin-1"), keep_blank_values=True, encoding="latin-1")
        if "data" not in form:
            raise WireError(DECODE_FAILURE, "Form body without a `data` field (posthog-js sends `data=<base64 JSON>`)")
        if (form.get("compression", [""])[0]).lower() == "lz64":
            raise WireError(DECODE_FAILURE, "Unsupported compression `lz64` (form field `compression`): send gzip-js, gzip or none")
        # Form decoding turned base64's "+" into spaces (PostHog restores them the same way).
        data = form["data"][0].replace(" ", "+").encode("latin-1")
    stripped = data.lstrip()
    if stripped[:1] not in (b"{", b"[", b'"') and not data.startswith(_GZIP_MAGIC):
        try:
            data = base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise WireError(DECODE_FAILURE, "Body is neither JSON, gzip nor base64 (PostHog capture: `[event, ...]`, `{\"batch\": [...]}` or one event)") from None
    if data.startswith(_GZIP_MAGIC):
        data = _gunzip(data)
    return data


def _gunzip(data: bytes) -> bytes:
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, MAX_REQUEST_BYTES + 1)
    except zlib.error as e:
        raise WireError(DECODE_FAILURE, f"Invalid gzip payload: {e} (compression gzip-js)") from None
    if len(out) > MAX_REQUEST_BYTES:
        raise WireError(SIZE_VIOLATION, f"Decompressed payload exceeds {MAX_REQUEST_BYTES} bytes ({MAX_REQUEST_BYTES // 1024} KB limit per request)", 413)
    if not d.eof:
        raise WireError(DECODE_FAILURE, "Invalid gzip payload: stream is truncated (compression gzip-js)")
    return out


def parse_request(payload: bytes, query: Mapping[str, str] | None = None, limits: Limits = Limits()) -> Request:
    """Decode a capture payload (:func:`payload_bytes`) into a :class:`Request`.

    Raises :class:`~.wire.WireError`: ``decode_failure`` for malformed JSON or invalid
    UTF-8, ``envelope_violation`` for a body of the wrong shape (not an array or object,
    ``batch`` not an array, events with different write keys, ``sent_at`` not ISO 8601, a
    query ``_`` that is not milliseconds since the epoch), 413 ``size_violation`` for more
    than ``limits.max_events`` events."""
    query = query or {}
    first = payload.lstrip()[:1]
    # Events sit at level 1 of an array, level 2 of {"batch": [...]}, level 0 of one event
    # (cut again at its own level once the object is known not to be a batch).
    original, payload = payload, cut_deep(payload, limits.max_depth + (1 if first == b"[" else 2))
    try:
        if first == b"[":
            raws, at, key, sent = _decode_array(payload), "$[{i}]", None, None
        elif first == b"{":
            obj = _decode_object(payload)
            if obj.batch is None:
                payload = cut_deep(original, limits.max_depth)
                raws, at, key, sent = [msgspec.Raw(payload.strip())], "$", None, None
            else:
                raws, at, key, sent = obj.batch, "$.batch[{i}]", obj.api_key or obj.token, obj.sent_at
        else:
            raise WireError(ENVELOPE_VIOLATION, "Expected a JSON array of events, a `{\"batch\": [...]}` object or one event object - at `$`")
    except msgspec.ValidationError as e:
        raise WireError(ENVELOPE_VIOLATION, str(e)) from None
    except msgspec.DecodeError as e:
        raise WireError(DECODE_FAILURE, f"Malformed JSON: {str(e).removeprefix('JSON is malformed: ')}") from None
    except UnicodeDecodeError as e:
        raise WireError(DECODE_FAILURE, f"Invalid UTF-8 in JSON: {e.reason} (JSON text must be UTF-8)") from None
    limits.check_count(len(raws))

    events: list = []
    for raw in raws:
        try:
            events.append(_decode_event(raw))
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            events.append(msgspec.ValidationError(str(e)))
        except UnicodeDecodeError as e:
            events.append(msgspec.ValidationError(f"Invalid UTF-8 in JSON: {e.reason}"))
    if key is None:
        keys = {k for e in events if isinstance(e, _Event) and (k := e.write_key())}
        if len(keys) > 1:
            raise WireError(ENVELOPE_VIOLATION, f"Events of one request carry {len(keys)} different tokens (`token` / `api_key`): send one project per request")
        key = keys.pop() if keys else None
    key = key or query.get("token") or query.get("api_key") or None
    depth_limit = limits.max_depth if DEPTH_CUT in payload else None
    return Request(raws, events, key, _sent_at(sent, query), at, depth_limit)


def _sent_at(value: str | None, query: Mapping[str, str]) -> datetime | None:
    """The request's ``sent_at``, else the query's ``_`` (ms since the epoch; a value
    before 2021 is seconds from an old SDK, PostHog ignores it). Raises :class:`WireError`
    (``envelope_violation``) naming the field when either cannot be read."""
    if value:
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise WireError(ENVELOPE_VIOLATION, "Field `sent_at` is not an ISO 8601 date-time - at `$.sent_at`") from None
        return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    ms = query.get("_")
    if not ms:
        return None
    # isdigit() alone admits "²" and other non-ASCII digits; the length check keeps int() off huge strings.
    if not (ms.isascii() and ms.isdigit() and len(ms) <= 15 and int(ms) <= _MAX_MS):
        raise WireError(ENVELOPE_VIOLATION, f"Query parameter `_` must be milliseconds since the epoch: ASCII digits, "
                                            f"at most {_MAX_MS} (year 9999) - at `?_`")
    t = dt.datetime.fromtimestamp(int(ms) / 1000, dt.timezone.utc)
    return t if t >= _MIN_SENT_AT else None


def write_key_of(payload: bytes) -> str | None:
    """The batch token of a payload, or None (never raises): the auth fallback for
    request-level bad rows."""
    try:
        obj = _decode_object(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    return obj.api_key or obj.token


# -- normalisation ------------------------------------------------------------------------
def normalize(req: Request, *, source: str, received_at_us: int, tokenizer: Tokenizer,
              future_tolerance_us: int = FUTURE_TOLERANCE_US) -> Normalized:
    """Canonical events and bad rows of ``req``'s events (see the module doc; event-time rules
    with ``future_tolerance_us``: :func:`~headwater.ingest.canonical.event_time`); never raises
    for a bad event: each becomes a bad row and an ``errors`` entry."""
    tok = tokenizer.token
    id_prefix = event_id_prefix(source)
    rows: list[tuple] = []  # one tuple per accepted event (EventColumns order), transposed once
    rows_at: list[int] = []  # event index of each row
    rejections: list[Rejection] = []

    def reject(i: int, code: str, reason: str, raw: msgspec.Raw, field: str = "", rule: str | None = None) -> None:
        at = req.path(i)
        reason = reason_text(reason.replace("{at}", at))
        payload = redact(bytes(raw), tokenizer, ID_FIELDS, drop=DROP_FIELDS)
        rejections.append(Rejection(i, BadRow(code, reason, source, received_at_us, payload, PROTOCOL, at + field, rule)))

    for i, (raw, ev) in enumerate(zip(req.raws, req.events)):
        try:
            if len(raw) > MAX_EVENT_BYTES:
                reject(i, SIZE_VIOLATION, f"Event of {len(raw)} bytes exceeds the limit of {MAX_EVENT_BYTES} bytes (32 KB) per event - at `{{at}}`", raw, rule="max_bytes")
                continue
            if req.depth_limit is not None and DEPTH_CUT in bytes(raw):
                reject(i, ENVELOPE_VIOLATION, depth_reason(req.depth_limit), raw, rule="max_depth")
                continue
            if isinstance(ev, msgspec.ValidationError):
                text = str(ev)
                reject(i, ENVELOPE_VIOLATION, text.replace("`$", "`{at}", 1) if "`$" in text else f"{text} - at `{{at}}`", raw, rule="type")
                continue
            if not ev.event:
                reject(i, ENVELOPE_VIOLATION, "Object missing required field `event` (a non-empty event name) - at `{at}`", raw, ".event", "required")
                continue
            props = dict(ev.properties) if ev.properties else {}
            distinct = _distinct_id(ev, props)
            if distinct is None:
                reject(i, ENVELOPE_VIOLATION, "Object missing required field `distinct_id` (top level, `$distinct_id` or `properties.distinct_id`) - at `{at}`", raw, ".distinct_id", "required")
                continue
            for k in _TOKEN_PROPERTIES:
                props.pop(k, None)
            for key, extra in (("$set", ev.set), ("$set_once", ev.set_once)):
                if extra:
                    props[key] = {**props[key], **extra} if isinstance(props.get(key), dict) else extra

            name = ev.event
            device = props.get("$device_id")
            device = str(device) if device not in (None, "") and not isinstance(device, (dict, list)) else None
            ename = None
            if name == "$identify":
                kind, user = "identify", distinct
                anon = props.get("$anon_distinct_id") or device
                anon = str(anon) if anon is not None else None
            elif name == "$create_alias":
                alias = props.get("alias")
                if alias in (None, "") or isinstance(alias, (dict, list)):
                    reject(i, ENVELOPE_VIOLATION, "Object missing required field `properties.alias` ($create_alias links distinct_id to alias) - at `{at}`", raw, ".properties.alias", "required")
                    continue
                kind, user, anon = "alias", str(alias), None
                props["previousId"] = distinct
            elif name in ("$set", "$set_once"):
                kind, user, anon = "identify", distinct, device
            else:
                kind, user, anon = "track", distinct, device
                if name == "$pageview":
                    kind, ename = "page", props.get("$pathname") or props.get("$current_url")
                elif name == "$screen":
                    kind, ename = "screen", props.get("$screen_name")
                elif name == "$groupidentify" and props.get("$group_key") not in (None, ""):
                    kind = "group"
                    props["groupId"] = str(props["$group_key"])
                else:
                    ename = name
                ename = ename if isinstance(ename, str) else None
            if anon == user:  # one id: an anonymous visitor (distinct_id is its device id), or nothing to link
                if kind == "identify" or kind == "alias":
                    anon = None
                else:
                    user = None
            for k in (*_ID_PROPERTIES, "previousId"):
                v = props.get(k)
                if v not in (None, "") and not isinstance(v, (dict, list, bool)):
                    props[k] = tok(v if isinstance(v, str) else str(v))

            # Without a timestamp, `offset` (ms before receipt) gives the event time, uncorrected
            # (build_events computes it in Arrow: any integer, however large, is a range violation).
            ts, sent = ev.timestamp, req.sent_at
            if props.get("$ignore_sent_at") is True:
                sent = None
            lib = props.get("$lib") if isinstance(props.get("$lib"), str) else None
            surface = "web" if lib in _WEB_LIBS else surface_of(lib)
            platform = next((v.lower() for v in (props.get("$device_type"), props.get("$os")) if isinstance(v, str) and v), surface)
            ctx = _encode({"library": {"name": lib, "version": props.get("$lib_version")}}) if lib else b"{}"
            eid = ev.uuid or derive_event_id(id_prefix, raw)
            rows.append((
                eid, kind, ename, tok(anon) if anon else None, tok(user) if user else None,
                ts, None, sent, surface, platform, _encode(props), ctx, ev.offset if ts is None else None,
            ))
            rows_at.append(i)
        except Exception as e:  # a bug this event exposed: reject it, keep its neighbours
            reject(i, DECODE_FAILURE, contained(i, e, PROTOCOL), raw, rule="internal")

    built = build_events(EventColumns.from_rows(rows), source=source, received_at_us=received_at_us, future_tolerance_us=future_tolerance_us)
    if built.violations:  # event time out of range: a bad row naming the field
        reject_time_violations(built.violations, _TIME_PATHS, rows_at, req.raws, reject)
        rejections.sort(key=lambda r: r.index)
    return Normalized(built.events, rejections)


def _distinct_id(ev: _Event, props: dict) -> str | None:
    for v in (ev.distinct_id, ev.alt_distinct_id, props.get("distinct_id")):
        if v is None:
            continue
        s = v if isinstance(v, str) else (_encode_sorted(v).decode() if isinstance(v, (dict, list)) else str(v))
        s = s.replace("\0", "\ufffd")[:_MAX_DISTINCT_ID_CHARS]
        return s or None
    return None


def _write_key_of(body: bytes, query: Mapping[str, str]) -> str | None:
    return write_key_of(body) or query.get("token") or query.get("api_key")


#: PostHog capture as the collector speaks it on :data:`PATHS`.
WIRE = Wire(
    PROTOCOL,
    parse=lambda body, query, content_type, limits: parse_request(payload_bytes(body, content_type, query), query, limits),
    normalize=normalize,
    write_key_of=_write_key_of,
    id_fields=ID_FIELDS,
    drop_fields=DROP_FIELDS,
    key_help="`api_key` / `token` in the body, in each event, or in the query string",
    key_field="Field `api_key` / `token`",
    response={"status": 1},  # what PostHog's capture answers
)
