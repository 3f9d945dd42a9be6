"""Bad rows: one typed :class:`BadRow` per rejected event (or rejected request), shared by
every source, and the redaction of the payload it keeps.

The taxonomy (``headwater.events``: ``size_violation``, ``decode_failure``,
``envelope_violation``, ``schema_violation``, ``auth_failure``) follows Snowplow's failed
events. A bad row names the rule that failed twice: structured (``field``: the JSON path or
input column at fault, ``rule``: the rule's short name, when the producer knows them) and as
the human ``reason`` text, which is what ``bronze.bad_rows`` stores (``BAD_ROW_SCHEMA``; the
reason always names field and rule).

Nothing raw is stored: :func:`redact` tokenises the identifier fields of a wire format (at
any depth of a JSON payload, and textually in text that is not JSON) before a bad row is
built, and :func:`bad_rows_append`, the one way a bad row reaches the log, scrubs every
``reason`` and ``payload`` with the source's PII policy (value detection always on: a bad row
is stricter than an event), without write-key fields, cut to :data:`MAX_REASON_CHARS` /
:data:`MAX_BAD_PAYLOAD_CHARS` and scrubbed again after the cut
(:meth:`~headwater.ingest.pii.PiiScrubber.scrub_prefix`: half a value at the cut is dropped).
An input that arrives already cut (the 1 KB prefix of an oversize body) is treated as cut by
:func:`redact` when it is at least as long as its limit. Producers should still name field,
rule and JSON type in reasons rather than quote values; the scrub is the safety net.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from headwater.config import PiiPolicy
from headwater.events import BAD_ROW_SCHEMA, BAD_ROWS_TOPIC, TS
from headwater.ingest.pii import scrubber
from headwater.ingest.tokens import Tokenizer
from headwater.log.base import Append

MAX_BAD_PAYLOAD_CHARS = 32 * 1024  # a bad row keeps at most this much of the payload
MAX_REASON_CHARS = 2048  # and this much of the reason
WRITE_KEY_FIELDS = ("writeKey", "api_key")  # credentials, dropped from every bad-row payload


@dataclass(frozen=True, slots=True)
class BadRow:
    """One rejected event or request.

    ``error_type``: one of ``headwater.events.BAD_ROW_TYPES``; ``reason``: text naming the
    field and the rule (stored); ``source``: the source name, None when the write key was
    not recognised; ``received_at_us``: µs since the epoch, UTC; ``payload``: the rejected
    input as text, already redacted (:func:`redact`), or None; ``protocol``: the wire format
    of ``payload`` (``segment``, ``posthog``, ``import``, ``serverlog``: what
    ``headwater badrows replay`` re-runs); ``field`` / ``rule``: the JSON path or column at
    fault and the rule's short name (``required``, ``max_bytes``, ``type``, …), when known."""

    error_type: str
    reason: str
    source: str | None
    received_at_us: int
    payload: str | None = None
    protocol: str | None = None
    field: str | None = None
    rule: str | None = None


def bad_rows_table(rows: Sequence[BadRow]) -> pa.Table:
    """The ``BAD_ROW_SCHEMA`` table of ``rows`` (``ds``: UTC date of ``received_at``)."""
    received = pa.array([r.received_at_us for r in rows], pa.int64()).cast(TS)
    return pa.Table.from_arrays(
        [
            received,
            pa.array([r.source for r in rows], pa.string()),
            pa.array([r.error_type for r in rows], pa.string()),
            pa.array([r.reason for r in rows], pa.string()),
            pa.array([r.payload for r in rows], pa.string()),
            pa.array([r.protocol for r in rows], pa.string()),
            received.cast(pa.date32()),  # tz is UTC, so this is the UTC date
        ],
        schema=BAD_ROW_SCHEMA,
    )


def bad_rows_append(rows: Sequence[BadRow], policy: PiiPolicy, tokenizer: Tokenizer) -> Append:
    """The ``bad_rows`` topic append of ``rows``: each ``reason`` and ``payload`` scrubbed with
    the source's PII ``policy`` plus value detection (idempotent: tokens stay as they are) and
    without write-key fields, so a bad row never stores a credential or a raw value; cut to
    :data:`MAX_REASON_CHARS` / :data:`MAX_BAD_PAYLOAD_CHARS`, scrubbed again after the cut."""
    scrub = scrubber(dataclasses.replace(policy, drop=policy.drop + WRITE_KEY_FIELDS, detect_values=True), tokenizer)
    scrubbed = [
        dataclasses.replace(
            r, reason=scrub.scrub_prefix(r.reason, MAX_REASON_CHARS),
            payload=scrub.scrub_prefix(r.payload, MAX_BAD_PAYLOAD_CHARS) if r.payload is not None else None)
        for r in rows
    ]
    return Append(BAD_ROWS_TOPIC, 0, bad_rows_table(scrubbed))


def redact(raw: bytes | str, tokenizer: Tokenizer, ids: tuple[str, ...], *, drop: tuple[str, ...] = (),
           limit: int = MAX_BAD_PAYLOAD_CHARS) -> str:
    """``raw`` as bad-row text: at most ``limit`` characters, the values of the identifier
    keys ``ids`` replaced by their tokens, the keys ``drop`` removed, and emails, phones and
    IP addresses anywhere tokenised (:mod:`headwater.ingest.pii` value detection).

    Keys match at any depth and in the PII policy's normal form (``user_id`` matches
    ``userId``). A JSON payload is decoded, redacted and re-encoded; anything else (truncated,
    malformed, invalid UTF-8, a ``key=value`` line) is decoded as UTF-8 (invalid bytes
    replaced) and redacted textually, an identifier cut off at the end dropped, so no raw id is
    stored either way. ``raw`` of ``limit`` or more bytes is taken for a cut-off prefix (an
    oversize body's first 1 KB): its last word is dropped (module doc). Never raises."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    # Values detected here as bad_rows_append will anyway: its re-scrub then changes nothing,
    # so the text stays within ``limit``.
    policy = PiiPolicy(tokenize=ids, drop=drop, keep=(), detect_values=True)
    return scrubber(policy, tokenizer).scrub_prefix(text, limit, cut=len(raw) >= limit)
