-- silver.events
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- bronze.events holds every accepted event once per *delivery* beyond the stream's dedup TTL:
-- client retries and SDK re-sends carry the same event_id, and the stream only removes
-- them within its TTL (24 h of processing time). Here the remaining ones are removed. An
-- event's identity is (source, event_id): event_id is the client's messageId / uuid, unique
-- only within what one source sends, so the same id from two sources is two events. The
-- winner is the copy received first (earliest received_at, processing time at the
-- collector); ties are broken on every remaining column so the choice is deterministic.
-- Since received_at only grows, a later delivery never displaces a winner.
--
-- Copies are compared within {{dedup_days}} days of event time (ds): a copy is dropped when a
-- better one lies on its own day or up to {{dedup_days}} days before or after it. A re-send
-- keeps its event_ts up to the collector's clock-skew correction (seconds), so its copies
-- share a day or sit on neighbouring ones; copies further apart are kept as distinct events.
-- The window is what keeps a day's cost flat in history: day N reads bronze N - {{dedup_days}}
-- .. N + {{dedup_days}}, never all of it; and since the rule is per row and bounded, building
-- day by day and a full rebuild keep the same rows (a day whose neighbour received a copy of
-- one of its events is restated with it: headwater.models.run.build).
--
-- Parameters: $start, $end (DATE, inclusive). The columns are the canonical event's plus
-- person_id. Cost: a re-send is rare (well under 1 % of deliveries), so only the keys delivered
-- more than once are ranked, from the key columns of the window; every other row passes
-- through a hash anti-join instead of a sort of the full-width rows (the sort was most of the
-- model's time at 10M events a day), and full rows of the neighbouring days are read only for
-- keys found on several days.
WITH keys AS (
    SELECT source, event_id, ds
    FROM bronze.events
    WHERE ds BETWEEN CAST($start AS DATE) - {{dedup_days}} AND CAST($end AS DATE) + {{dedup_days}}
),
resent AS (
    -- keys of the range delivered more than once in the window; across_days: on several days
    SELECT source, event_id, count(DISTINCT ds) > 1 AS across_days
    FROM keys
    GROUP BY source, event_id
    HAVING count(*) > 1 AND count(*) FILTER (WHERE ds BETWEEN $start AND $end) > 0
),
in_range AS (
    SELECT * FROM bronze.events WHERE ds BETWEEN $start AND $end
),
copies AS (
    SELECT * FROM in_range SEMI JOIN resent USING (source, event_id)
    UNION ALL
    SELECT *
    FROM bronze.events
    SEMI JOIN (SELECT source, event_id FROM resent WHERE across_days) AS a USING (source, event_id)
    WHERE ds BETWEEN CAST($start AS DATE) - {{dedup_days}} AND CAST($end AS DATE) + {{dedup_days}}
      AND NOT (ds BETWEEN $start AND $end)
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
        ) AS copy_rank
    FROM copies
),
beaten AS (
    -- copies with a better one (only identical rows tie: either is the same row) in their window
    SELECT DISTINCT r.source, r.event_id, r.copy_rank
    FROM ranked AS r
    JOIN ranked AS o
      ON o.source = r.source AND o.event_id = r.event_id AND o.copy_rank < r.copy_rank
    WHERE o.ds BETWEEN r.ds - {{dedup_days}} AND r.ds + {{dedup_days}}
),
winners AS (
    SELECT
        event_id, event_type, event_name, anonymous_id, user_id, event_ts, received_at,
        source, surface, platform, properties, context, schema_version, ds
    FROM in_range
    ANTI JOIN resent USING (source, event_id)
    UNION ALL
    SELECT
        event_id, event_type, event_name, anonymous_id, user_id, event_ts, received_at,
        source, surface, platform, properties, context, schema_version, ds
    FROM ranked
    ANTI JOIN beaten USING (source, event_id, copy_rank)
    WHERE ds BETWEEN $start AND $end
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
