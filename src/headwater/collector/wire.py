"""What every HTTP wire format of the collector shares: request limits, the request-level
error, and :class:`Wire`, the description of one format the collector speaks.

Limits are Segment's (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):
32 KB per message and 500 KB per batch request (after decompression); PostHog's capture
is held to the same. On top (:class:`Limits`, from the ``collector`` settings): at most
``max_events_per_request`` messages per request (more → 413 ``size_violation``, one bad
row: a 500 KB body of bare numbers would otherwise fan out into 250,000 bad rows), and
at most ``max_depth`` levels of JSON nesting per message (:func:`cut_deep`: a deeper
message is a bad row with rule ``max_depth``, its neighbours are kept; unbounded nesting
would exhaust the decoder's and the PII scrubber's recursion).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from headwater.errors import InvalidInputError
from headwater.events import DECODE_FAILURE, ENVELOPE_VIOLATION, SIZE_VIOLATION
from headwater.ingest.badrows import MAX_BAD_PAYLOAD_CHARS, redact
from headwater.ingest.canonical import EVENT_TIME_RANGE, Normalized, TimeViolation, time_violation_reason
from headwater.ingest.tokens import Tokenizer
from headwater.settings import CollectorSettings

logger = logging.getLogger(__name__)

MAX_EVENT_BYTES = 32 * 1024  # Segment: "32KB per call" / per message inside a batch
MAX_REQUEST_BYTES = 500 * 1024  # Segment: "500KB per batch request" (after decompression)
MAX_RESPONSE_ERRORS = 100  # a response lists at most this many per-event errors (+ `errors_truncated`)
# A reason may quote what was sent (msgspec: "Invalid enum value '<value>'"); it is cut to this.
MAX_REASON_CHARS = 500
# What a value nested too deep is replaced with before decoding (a JSON string: the body
# stays valid JSON). A message holding it is rejected (rule `max_depth`), so a replayed bad
# row that holds it is rejected again rather than accepted truncated.
DEPTH_CUT = b'"\\u0000nested deeper than collector.max_depth"'


@dataclass(frozen=True)
class Limits:
    """Per-request bounds (``collector`` settings): ``max_events`` messages per request,
    ``max_depth`` levels of JSON nesting per message (the message object itself is level 1)."""

    max_events: int = CollectorSettings.model_fields["max_events_per_request"].default
    max_depth: int = CollectorSettings.model_fields["max_depth"].default

    @classmethod
    def of(cls, settings: CollectorSettings) -> "Limits":
        return cls(settings.max_events_per_request, settings.max_depth)

    def check_count(self, n: int) -> None:
        """Raises 413 :class:`WireError` when ``n`` messages exceed ``max_events``."""
        if n > self.max_events:
            raise WireError(SIZE_VIOLATION, f"Request holds {n} messages, more than the limit of {self.max_events} per request "
                                            "(collector.max_events_per_request): split it into smaller batches", 413)


class WireError(InvalidInputError):
    """A request that cannot be read at all (every event of it is rejected).

    ``code`` is the bad-row error type (``decode_failure`` for malformed JSON / gzip,
    ``envelope_violation`` for a body of the wrong shape, ``size_violation``), ``status``
    the HTTP status to answer (400, 413 or 415), ``message`` names the field and the rule
    (cut to :data:`MAX_REASON_CHARS`)."""

    def __init__(self, code: str, message: str, status: int = 400):
        message = reason_text(message)
        super().__init__(message)
        self.code, self.status = code, status


class Envelope(Protocol):
    """A decoded request: its messages' raw JSON bytes (``messages``), the write key found
    in it (``write_key``, or None), whether it is a single-message body (``single``), and
    ``path(i)``: the JSON path of message ``i`` (``$.batch[3]``)."""

    messages: Sequence[Any]
    write_key: str | None

    @property
    def single(self) -> bool: ...

    def path(self, i: int) -> str: ...


@dataclass(frozen=True)
class Wire:
    """A wire format the collector speaks.

    ``parse(body, query, content_type, limits)`` → an :class:`Envelope` (raises
    :class:`WireError`; call it through :meth:`read`);
    ``normalize(envelope, *, source, received_at_us, tokenizer, future_tolerance_us)`` → :class:`Normalized`;
    ``write_key_of(body, query)`` → the write key of an otherwise unusable body, never raises;
    ``id_fields`` / ``drop_fields``: payload keys tokenised / removed in bad rows;
    ``key_help``: where a client puts its write key (for the 401 message);
    ``key_field``: the field named when a body's key is unknown; ``basic_auth``: whether
    the ``Authorization`` header carries the key; ``response``: extra fields of every
    success / rejection response (what the format's SDKs expect)."""

    protocol: str
    parse: Callable[[bytes, Mapping[str, str], str, Limits], Envelope]
    normalize: Callable[..., Normalized]
    write_key_of: Callable[[bytes, Mapping[str, str]], str | None]
    id_fields: tuple[str, ...]
    key_help: str
    key_field: str
    drop_fields: tuple[str, ...] = ()
    basic_auth: bool = False
    response: Mapping[str, Any] = field(default_factory=dict)

    def redact(self, raw: bytes, tokenizer: Tokenizer, limit: int = MAX_BAD_PAYLOAD_CHARS) -> str:
        """``raw`` as bad-row text: identifiers tokenised, at most ``limit`` characters."""
        return redact(raw, tokenizer, self.id_fields, drop=self.drop_fields, limit=limit)

    def read(self, body: bytes, query: Mapping[str, str], content_type: str, limits: Limits) -> Envelope:
        """``parse`` with a last line of defence: an unexpected exception while reading a
        body is a bug the client's bytes exposed, so it is logged and answered 400
        ``decode_failure`` naming the exception, never a 500. Raises :class:`WireError`."""
        try:
            return self.parse(body, query, content_type, limits)
        except WireError:
            raise
        except Exception as e:
            logger.exception("%s: unexpected error reading a request body of %d bytes", self.protocol, len(body))
            raise WireError(DECODE_FAILURE, f"Request body could not be read as a {self.protocol} request "
                                            f"({type(e).__name__}: {str(e)[:200]})") from e


def reason_text(reason: str) -> str:
    """``reason`` cut to :data:`MAX_REASON_CHARS` (it may quote a value of any length)."""
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def depth_reason(limit: int, at: str = "{at}") -> str:
    """The reason of a value at JSON path ``at`` nested deeper than ``limit`` levels."""
    return f"Nesting deeper than {limit} levels (collector.max_depth) - at `{at}`"


def contained(i: int, e: Exception, protocol: str) -> str:
    """The bad-row reason of message ``i`` whose normalisation raised ``e`` unexpectedly
    (logged: a bug the message exposed; the message is rejected, its neighbours kept)."""
    logger.exception("%s: unexpected error normalising message %d", protocol, i, exc_info=e)
    return f"Event could not be read ({type(e).__name__}: {str(e)[:200]}) - at `{{at}}`"


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def cut_deep(body: bytes, limit: int) -> bytes:
    """``body`` with every JSON value that opens nesting level ``limit + 1`` replaced by
    :data:`DEPTH_CUT` (``body`` itself when nothing is that deep). Never raises; malformed
    JSON stays malformed.

    Vectorised (numpy), since it runs before any decoder: brackets inside strings do not
    count, so strings are found first — a ``"`` opens or closes one unless an odd run of
    backslashes precedes it. Cheap paths first (about 25 µs for a 100-event batch): few
    brackets, or a depth bound that counts the brackets inside strings too."""
    brackets = body.translate(None, _NOT_BRACKETS)  # ~10 µs for a 25 KB batch
    if len(brackets) <= limit or _max_depth(np.frombuffer(brackets, np.uint8)) <= limit:
        return body
    a = np.frombuffer(body, np.uint8)
    idx = np.arange(len(a))
    last_other = np.maximum.accumulate(np.where(a == 0x5C, -1, idx))  # last non-backslash at or before i
    quotes = np.flatnonzero(a == 0x22)
    before = quotes - 1
    run = before - np.where(before >= 0, last_other[np.maximum(before, 0)], -1)  # backslashes right before
    real = quotes[run % 2 == 0]
    br = np.flatnonzero((a == 0x5B) | (a == 0x7B) | (a == 0x5D) | (a == 0x7D))
    br = br[np.searchsorted(real, br) % 2 == 0]  # outside strings: an even number of real quotes before
    step = np.where((a[br] == 0x5B) | (a[br] == 0x7B), 1, -1)
    depth = np.cumsum(step)
    # Entering level limit+1 and coming back to level limit alternate: a cut spans each pair.
    starts = br[(step == 1) & (depth == limit + 1)]
    ends = br[(step == -1) & (depth == limit)]
    if not len(starts):
        return body
    out, pos = [], 0
    for k, s in enumerate(starts.tolist()):
        out += (body[pos:s], DEPTH_CUT)
        pos = int(ends[k]) + 1 if k < len(ends) else len(body)
    out.append(body[pos:])
    return b"".join(out)


def _max_depth(brackets: np.ndarray) -> int:
    """Deepest nesting of a sequence of bracket bytes (0 when empty)."""
    if not len(brackets):
        return 0
    return int(np.cumsum(np.where((brackets == 0x5B) | (brackets == 0x7B), 1, -1)).max())


def reject_time_violations(violations: Sequence[TimeViolation], paths: Mapping[str, str], rows_at: Sequence[int],
                           raws: Sequence[Any], reject: Callable[..., None]) -> None:
    """One ``envelope_violation`` bad row per out-of-range event time (the ``violations`` of
    :func:`~headwater.ingest.canonical.build_events`), naming its field: ``paths`` maps a
    violation's field to its JSON path, relative to the message (``.timestamp``) or absolute
    for a request-level field (``$.sentAt``); ``rows_at[row]`` is the message index of an
    event row, ``raws[i]`` its raw message; ``reject(i, code, reason, raw, field, rule)``
    records the rejection (the wire adapter's own)."""
    for v in violations:
        path = paths[v.field]
        rel = path[0] != "$"
        i = rows_at[v.row]
        reject(i, ENVELOPE_VIOLATION, time_violation_reason("{at}" + path if rel else path), raws[i], path if rel else "", EVENT_TIME_RANGE)
