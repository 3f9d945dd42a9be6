"""Bad rows: listing ``bronze.bad_rows`` and replaying them after a fix.

The taxonomy (``headwater.events``: ``size_violation``, ``decode_failure``,
``envelope_violation``, ``schema_violation``, ``auth_failure``) follows Snowplow's failed
events: each row keeps the failure type, the source, the reason naming field and rule, the
time, and the payload (identifiers and PII tokenised, write keys removed).

Identity of a bad row: ``bad_row_id = md5(received_at µs | source | error_type | reason |
payload)`` (DuckDB ``md5``), stable across reads: the table is append-only and carries no id.

Replay (``headwater badrows replay``), for rows matching the filters and not replayed yet:

1. the payload is decoded by the normaliser of its ``protocol`` (Segment message or body,
   PostHog event or payload), with the row's ``source`` and original ``received_at``;
   identifiers already tokenised in the payload are kept, not tokenised twice
   (``Tokenizer(keep_tokens=True)``; PII scrubbing is idempotent the same way);
2. it goes through the same contract validation and PII policy as HTTP ingestion
   (:meth:`headwater.collector.collector.Collector.accept`) and is appended to the event log, where the
   stream deduplicates on ``event_id`` as for any client retry;
3. the row is marked in ``bronze.bad_rows_replayed`` (``bad_row_id``, ``replayed_at``,
   ``events``), so it is never replayed twice. A row that fails again is not marked (and no
   new bad row is written): it can be replayed after the next fix.

A crash between 2 and 3 replays the row again next time: its events carry the same ids
(the payload's, or derived from its bytes) and are removed by dedup. Rows without a source
(``auth_failure``) or a protocol cannot be replayed; truncated payloads (``size_violation``,
malformed JSON) fail again with their decode error.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field

import pyarrow as pa

from headwater.collector import posthog, segment
from headwater.collector.wire import Limits, WireError
from headwater.config import Home
from headwater.events import TS
from headwater.ingest.tokens import Tokenizer
from headwater.lake import sql
from headwater.lake.schemas import REPLAYED_SCHEMA
from headwater.lake.store import Lake

REPLAYED = "bronze.bad_rows_replayed"
_ID_SQL = "md5(concat_ws('|', epoch_us(b.received_at), coalesce(b.source, ''), b.error_type, b.reason, coalesce(b.payload, '')))"


def list_bad_rows(home: Home, *, error_type: str | None = None, source: str | None = None,
                  since: dt.datetime | None = None, include_replayed: bool = False, limit: int | None = None) -> pa.Table:
    """Bad rows, newest first: ``bad_row_id, received_at, source, error_type, reason,
    protocol, payload, replayed_at`` (``replayed_at`` null unless replayed).

    Filters: ``error_type``; ``source`` (``"unknown"`` matches rows without one, i.e.
    auth failures); ``since`` (``received_at >= since``, a tz-aware datetime); replayed rows
    only with ``include_replayed``. An empty table when there are no bad rows yet."""
    lake = Lake.of(home)
    if not lake.exists("bronze.bad_rows"):
        return pa.table({n: pa.array([], t) for n, t in _LIST_COLUMNS})
    replayed = lake.exists(REPLAYED)
    where, params = [], {}
    if error_type:
        where.append("b.error_type = $error_type")
        params["error_type"] = error_type
    if source == "unknown":
        where.append("b.source IS NULL")
    elif source:
        where.append("b.source = $source")
        params["source"] = source
    if since is not None:
        where.append("b.received_at >= $since")
        params["since"] = since
    if replayed and not include_replayed:
        where.append("r.bad_row_id IS NULL")
    join = "LEFT JOIN (SELECT bad_row_id, max(replayed_at) AS replayed_at FROM bronze.bad_rows_replayed GROUP BY 1) r ON r.bad_row_id = b.id" if replayed else ""
    text = f"""
        SELECT b.id AS bad_row_id, b.received_at, b.source, b.error_type, b.reason, b.protocol, b.payload,
               {"r.replayed_at" if replayed else "CAST(NULL AS TIMESTAMPTZ) AS replayed_at"}
        FROM (SELECT *, {_ID_SQL} AS id FROM bronze.bad_rows b) b {join}
        {"WHERE " + " AND ".join(where) if where else ""}
        ORDER BY b.received_at DESC, b.id {f"LIMIT {int(limit)}" if limit else ""}"""
    return sql.query(lake, text, params)


_LIST_COLUMNS = [("bad_row_id", pa.string()), ("received_at", TS), ("source", pa.string()), ("error_type", pa.string()),
                 ("reason", pa.string()), ("protocol", pa.string()), ("payload", pa.string()), ("replayed_at", TS)]


@dataclass
class ReplayResult:
    """Outcome of :func:`replay`: rows replayed (``replayed``, with the ``events`` they put in
    the log), and ``failed``: ``{"bad_row_id", "error_type", "reason"}`` per row that still
    fails (left unmarked)."""

    replayed: int = 0
    events: int = 0
    failed: list[dict] = field(default_factory=list)


def replay(home: Home, *, error_type: str | None = None, source: str | None = None,
           since: dt.datetime | None = None, log=None) -> ReplayResult:
    """Replay the not-yet-replayed bad rows matching the filters (see the module doc).
    ``log`` defaults to the home's event log."""
    from headwater.collector.collector import Collector
    from headwater.log import open_log

    rows = list_bad_rows(home, error_type=error_type, source=source, since=since).to_pylist()
    result = ReplayResult()
    if not rows:
        return result
    own_log = log is None
    log = log or open_log(home.settings.log_url)
    try:
        # Payload identifiers already are tokens: keep them (the PII policy is idempotent too).
        collector = Collector.from_home(home, log, Tokenizer(home.hmac_key(), keep_tokens=True))
        collector.open_topics()
        wires = {"segment": segment.wire(None), "posthog": posthog.WIRE}
        marks = []
        for row in reversed(rows):  # oldest first
            def fail(reason: str, code: str | None = None) -> None:
                result.failed.append({"bad_row_id": row["bad_row_id"], "error_type": code or row["error_type"], "reason": reason})

            wire = wires.get(row["protocol"] or "")
            if row["source"] is None or wire is None or row["payload"] is None:
                fail("not replayable: the row has no source, protocol or payload")
                continue
            received_us = int(row["received_at"].timestamp() * 1_000_000)
            payload = row["payload"].encode()
            if wire.protocol == "segment" and not payload.lstrip().startswith(b'{"batch"'):
                # A Segment bad row holds one message (per-event failures) or a whole body (request-level).
                payload = b'{"batch":[' + payload + b"]}"
            try:
                env = wire.read(payload, {}, "", Limits.of(home.settings.collector))
            except WireError as e:
                fail(e.message, e.code)
                continue
            events, norm = collector.accept(env, wire, source=row["source"], received_at_us=received_us)
            if norm.rejected:
                first = norm.bad_rows[0]
                fail(first.reason, first.error_type)
                continue
            if events.num_rows:
                log.append(collector.appends(events, [], row["source"]))
            marks.append((row["bad_row_id"], events.num_rows))
            result.replayed += 1
            result.events += events.num_rows
        if marks:
            now = dt.datetime.fromtimestamp(time.time(), dt.timezone.utc)
            table = pa.table({
                "bad_row_id": [m[0] for m in marks], "replayed_at": [now] * len(marks),
                "events": [m[1] for m in marks], "ds": [now.date()] * len(marks),
            }, schema=REPLAYED_SCHEMA)
            Lake.of(home).append(REPLAYED, table)
    finally:
        if own_log:
            log.close()
    return result
