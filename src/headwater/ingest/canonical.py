"""Canonical event building, shared by every wire format: typed columns in, an
``EVENT_SCHEMA`` table out, plus the result shape of a normalised request.

A wire adapter (Segment, PostHog, …) decodes its messages into one tuple per accepted
event, in :class:`EventColumns` field order, and rejected ones into :class:`Rejection`;
:func:`build_events` then computes event time on whole Arrow columns and assembles the
table. Event ids of messages sent without one are derived from their bytes
(:func:`derive_event_id`), so a client retry gets the same id.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from headwater.events import EVENT_SCHEMA, TS
from headwater.ingest.badrows import BadRow

# Namespace of derived event ids (uuid5 over source + raw message bytes).
EVENT_ID_NAMESPACE = uuid.UUID("5f6d8a3e-2c1b-5d4e-9a7f-0b1c2d3e4f50")


Column = Sequence | pa.Array | pa.ChunkedArray


class EventColumns(NamedTuple):
    """Equal-length columns of one request's (or batch's) accepted events: Python sequences
    (a wire adapter's decoded messages) or Arrow arrays (a columnar source).

    ``anonymous_ids`` / ``user_ids``: HMAC tokens or None; ``timestamps`` /
    ``original_timestamps`` / ``sent_ats``: the event's own ``timestamp`` /
    ``originalTimestamp`` / ``sentAt`` as ``datetime`` (tz-aware, or naive read as UTC) or
    None; ``surfaces``: ``web`` / ``mobile`` / ``server``; ``properties`` / ``contexts``:
    JSON object text (``bytes`` or ``str``, validated as UTF-8 by Arrow)."""

    event_ids: Column  # str
    event_types: Column  # str
    event_names: Column  # str | None
    anonymous_ids: Column  # str | None
    user_ids: Column  # str | None
    timestamps: Column  # datetime | None
    original_timestamps: Column  # datetime | None
    sent_ats: Column  # datetime | None
    surfaces: Column  # str
    platforms: Column  # str
    properties: Column  # bytes | str
    contexts: Column  # bytes | str

    @classmethod
    def from_rows(cls, rows: Sequence[tuple]) -> "EventColumns":
        """Columns of ``rows``: one plain tuple per event in field order (a hot loop appends
        tuples, transposed here once per request)."""
        return cls(*zip(*rows)) if rows else cls(*([()] * len(cls._fields)))


def build_events(columns: EventColumns, *, source: str, received_at_us: int, sent_at: datetime | None = None) -> pa.Table:
    """The ``EVENT_SCHEMA`` table of one request's events, sent by ``source`` and received at
    ``received_at_us`` (µs since the epoch, UTC).

    ``sent_at``: the request's ``sentAt`` (fills missing ``sent_ats``). Event time is
    ``coalesce(ts + (received_at − sent), ts, received_at)`` with ``ts =
    coalesce(timestamps, original_timestamps)`` and ``sent = coalesce(sent_ats, sent_at)``;
    ``ds`` is its UTC date; ``schema_version`` is null (set by contract validation)."""
    c = columns
    n = len(c.event_ids)
    recv = pa.scalar(received_at_us, TS)
    ts = _arrow(c.timestamps, TS) if _present(c.timestamps) else pa.nulls(n, TS)
    if _present(c.original_timestamps):
        ts = pc.coalesce(ts, _arrow(c.original_timestamps, TS))
    if _present(c.sent_ats) or sent_at is not None:
        sent = _arrow(c.sent_ats, TS) if _present(c.sent_ats) else pa.nulls(n, TS)
        if sent_at is not None:
            sent = pc.coalesce(sent, pa.scalar(sent_at, TS))
        # Segment's skew correction: the client clock is off by (sentAt - received_at), the
        # same offset for every message of a request, so event time = t + (received_at - sentAt).
        # Null sentAt → null sum → uncorrected t; null t → received_at.
        event_ts = pc.coalesce(pc.add(ts, pc.subtract(recv, sent)), ts, recv)
    else:
        event_ts = pc.coalesce(ts, recv)
    string = pa.string()
    return pa.Table.from_arrays(
        [
            _arrow(c.event_ids, string),
            _arrow(c.event_types, string),
            _arrow(c.event_names, string),
            _arrow(c.anonymous_ids, string),
            _arrow(c.user_ids, string),
            event_ts,
            pa.repeat(recv, n),
            pa.repeat(pa.scalar(source, string), n),
            _arrow(c.surfaces, string),
            _arrow(c.platforms, string),
            _arrow(c.properties, string),  # bytes → utf8, validated by Arrow
            _arrow(c.contexts, string),
            pa.nulls(n, string),
            pc.cast(event_ts, pa.date32()),  # tz is UTC, so this is the UTC date
        ],
        schema=EVENT_SCHEMA,
    )


def _arrow(values: Column, type: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """``values`` as an Arrow column of ``type``. pa.array converts tz-aware datetimes to UTC
    and reads naive ones as UTC; a cast to ``timestamp[us, UTC]`` reads naive ones as UTC too."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == type else values.cast(type)
    return pa.array(values, type)


def _present(values: Column) -> bool:
    """Whether ``values`` holds any non-null value."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values.null_count < len(values)
    return any(values)  # values are datetimes (always truthy) or None


def event_id_prefix(source: str) -> bytes:
    """The bytes every derived event id of ``source`` hashes first (see :func:`derive_event_id`)."""
    return EVENT_ID_NAMESPACE.bytes + source.encode() + b"\n"


def derive_event_id(prefix: bytes, raw: bytes) -> str:
    """Event id of a message sent without one: ``uuid5(EVENT_ID_NAMESPACE, source + "\\n" +
    message bytes)``, computed on bytes; ``prefix`` is :func:`event_id_prefix` of the source.
    A retry resending the same bytes gets the same id."""
    return str(uuid.UUID(bytes=hashlib.sha1(prefix + bytes(raw)).digest()[:16], version=5))


# -- client library → surface -------------------------------------------------------------
_WEB_LIBRARIES = {"analytics.js", "analytics-next", "@segment/analytics-next", "analytics.js-next"}
_MOBILE_MARKERS = ("ios", "android", "react-native", "flutter", "swift", "kotlin", "xamarin", "unity")
_SURFACE_MEMO: dict[str | None, str] = {}


def surface_of(library_name: str | None) -> str:
    """``"web"`` / ``"mobile"`` / ``"server"`` for a client library name: analytics.js /
    analytics-next and other JavaScript libraries → web; iOS, Android, React Native, Flutter,
    Swift, Kotlin, Xamarin, Unity libraries → mobile; any other library, or none → server."""
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


# -- the result of normalising one request ------------------------------------------------
class Rejection(NamedTuple):
    """A rejected message: its ``index`` in the request and its bad row."""

    index: int
    bad_row: BadRow


@dataclass
class Normalized:
    """One request after its wire adapter (and contract validation): ``events``, the accepted
    messages as an ``EVENT_SCHEMA`` table in request order; ``rejections``, one per rejected
    message, sorted by index."""

    events: pa.Table
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def bad_rows(self) -> list[BadRow]:
        return [r.bad_row for r in self.rejections]

    @property
    def errors(self) -> list[dict]:
        """Per rejected message ``{"index", "code", "message"}``: the HTTP response's ``errors``."""
        return [{"index": r.index, "code": r.bad_row.error_type, "message": r.bad_row.reason} for r in self.rejections]

    @property
    def accepted(self) -> int:
        return self.events.num_rows

    @property
    def rejected(self) -> int:
        return len(self.rejections)
