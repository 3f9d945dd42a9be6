-- silver.events
-- Grain: one row per event_id (exact deduplication of bronze.events).
--
-- bronze.events holds every accepted event once per *delivery*: client retries and SDK
-- re-sends carry the same event_id, and the stream only removes them within its TTL. Here
-- duplicates are removed exactly, over the whole of bronze: an event_id's copies can sit in
-- different ds partitions (a re-send's clock-skew correction can move event_ts across
-- midnight). The winner is the copy received first (earliest received_at, processing time
-- at the collector); ties are broken on every remaining column so the choice is
-- deterministic. Since received_at only grows, a later delivery never displaces a winner.
--
-- Parameters: $start, $end (DATE, inclusive). Only winners whose ds is in [$start, $end] are
-- returned; the event_ids seen in that range bound the work (a semi-join), so a one-day
-- rebuild does not rank the whole table. Columns: exactly EVENT_SCHEMA (headwater.events).
WITH ranked AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY event_id
            ORDER BY
                received_at ASC,
                event_ts ASC,
                event_type ASC,
                event_name ASC NULLS FIRST,
                anonymous_id ASC NULLS FIRST,
                user_id ASC NULLS FIRST,
                source ASC,
                surface ASC NULLS FIRST,
                platform ASC NULLS FIRST,
                properties ASC NULLS FIRST,
                context ASC NULLS FIRST,
                schema_version ASC NULLS FIRST
        ) AS delivery_rank
    FROM bronze.events
    WHERE event_id IN (
        SELECT event_id FROM bronze.events WHERE ds BETWEEN $start AND $end
    )
)
SELECT
    event_id,
    event_type,
    event_name,
    anonymous_id,
    user_id,
    event_ts,
    received_at,
    source,
    surface,
    platform,
    properties,
    context,
    schema_version,
    ds
FROM ranked
WHERE delivery_rank = 1
  AND ds BETWEEN $start AND $end
