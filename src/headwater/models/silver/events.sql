-- silver.events
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- bronze.events holds every accepted event once per *delivery*: client retries and SDK
-- re-sends carry the same event_id, and the stream only removes them within its TTL. Here
-- duplicates are removed exactly, over the whole of bronze. An event's identity is
-- (source, event_id): event_id is the client's messageId / uuid, unique only within what one
-- source sends, so the same id from two sources is two events. An event's copies can sit in
-- different ds partitions (a re-send's clock-skew correction can move event_ts across
-- midnight). The winner is the copy received first (earliest received_at, processing time
-- at the collector); ties are broken on every remaining column so the choice is
-- deterministic. Since received_at only grows, a later delivery never displaces a winner.
--
-- Conformed: platform is never null ('unknown' when the source sent none), so every gold
-- breakdown by platform has a value. person_id (identity resolution, silver.identity_map,
-- see headwater/models/identity.py): the person of user_id when the event has one, else
-- the person of anonymous_id; an id absent from the map is its own person. user_id wins
-- over anonymous_id, so a refused merge never moves an identified user's events. The map
-- is global over history: anonymous events before a login get the person's id whenever
-- their day is (re)built after the link (retroactive stitching).
--
-- Parameters: $start, $end (DATE, inclusive). Only winners whose ds is in [$start, $end] are
-- returned; the (source, event_id) keys seen in that range bound the work (a semi-join), so
-- a one-day rebuild does not rank the whole table. The columns are the canonical event's plus
-- person_id. Cost: a re-send is rare (well under 1 % of deliveries), so only the keys delivered
-- more than once are ranked; every other row passes through a hash anti-join instead of a
-- sort of the full-width rows (the sort was most of the model's time at 10M events a day).
WITH candidates AS (
    SELECT *
    FROM bronze.events
    SEMI JOIN (
        SELECT source, event_id FROM bronze.events WHERE ds BETWEEN $start AND $end
    ) AS in_range USING (source, event_id)
),
resent AS (
    SELECT source, event_id FROM candidates GROUP BY source, event_id HAVING count(*) > 1
),
ranked AS (
    SELECT
        *,
        row_number() OVER (
            PARTITION BY source, event_id
            ORDER BY
                received_at ASC,
                event_ts ASC,
                event_type ASC,
                event_name ASC NULLS FIRST,
                anonymous_id ASC NULLS FIRST,
                user_id ASC NULLS FIRST,
                surface ASC NULLS FIRST,
                platform ASC NULLS FIRST,
                properties ASC NULLS FIRST,
                context ASC NULLS FIRST,
                schema_version ASC NULLS FIRST
        ) AS delivery_rank
    FROM candidates
    SEMI JOIN resent USING (source, event_id)
),
winners AS (
    SELECT
        event_id, event_type, event_name, anonymous_id, user_id, event_ts, received_at,
        source, surface, platform, properties, context, schema_version, ds
    FROM candidates
    ANTI JOIN resent USING (source, event_id)
    UNION ALL
    SELECT
        event_id, event_type, event_name, anonymous_id, user_id, event_ts, received_at,
        source, surface, platform, properties, context, schema_version, ds
    FROM ranked
    WHERE delivery_rank = 1
)
SELECT
    r.event_id,
    r.event_type,
    r.event_name,
    r.anonymous_id,
    r.user_id,
    r.event_ts,
    r.received_at,
    r.source,
    r.surface,
    coalesce(r.platform, 'unknown') AS platform,
    r.properties,
    r.context,
    r.schema_version,
    CASE WHEN r.user_id IS NOT NULL THEN coalesce(mu.person_id, r.user_id)
         ELSE coalesce(ma.person_id, r.anonymous_id) END AS person_id,
    r.ds
FROM winners AS r
LEFT JOIN silver.identity_map AS mu ON mu.id = r.user_id
LEFT JOIN silver.identity_map AS ma ON ma.id = r.anonymous_id
WHERE r.ds BETWEEN $start AND $end
