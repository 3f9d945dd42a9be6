"""What every HTTP wire format of the collector shares: request limits, the request-level
error, and :class:`Wire`, the description of one format the collector speaks.

Limits are Segment's (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):
32 KB per message and 500 KB per batch request (after decompression); PostHog's capture
is held to the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from headwater.errors import InvalidInputError
from headwater.ingest.badrows import MAX_BAD_PAYLOAD_CHARS, redact
from headwater.ingest.canonical import Normalized
from headwater.ingest.tokens import Tokenizer

MAX_EVENT_BYTES = 32 * 1024  # Segment: "32KB per call" / per message inside a batch
MAX_REQUEST_BYTES = 500 * 1024  # Segment: "500KB per batch request" (after decompression)


class WireError(InvalidInputError):
    """A request that cannot be read at all (every event of it is rejected).

    ``code`` is the bad-row error type (``decode_failure`` for malformed JSON / gzip,
    ``envelope_violation`` for a body of the wrong shape, ``size_violation``), ``status``
    the HTTP status to answer (400, 413 or 415), ``message`` names the field and the rule."""

    def __init__(self, code: str, message: str, status: int = 400):
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

    ``parse(body, query, content_type)`` → an :class:`Envelope` (raises :class:`WireError`);
    ``normalize(envelope, *, source, received_at_us, tokenizer)`` → :class:`Normalized`;
    ``write_key_of(body, query)`` → the write key of an otherwise unusable body, never raises;
    ``id_fields`` / ``drop_fields``: payload keys tokenised / removed in bad rows;
    ``key_help``: where a client puts its write key (for the 401 message);
    ``key_field``: the field named when a body's key is unknown; ``basic_auth``: whether
    the ``Authorization`` header carries the key; ``response``: extra fields of every
    success / rejection response (what the format's SDKs expect)."""

    protocol: str
    parse: Callable[[bytes, Mapping[str, str], str], Envelope]
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
