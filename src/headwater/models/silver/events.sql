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
-- keys also found outside the range (their person_id is left null: they are only compared, never kept).
-- The keys delivered more than once are found by grouping one 64-bit hash of (source, event_id),
-- not the two strings (half the model's time at 10M events): a hash shared by two keys only
-- sends both to the exact ranking below (by source, event_id), where each is its own winner, so
-- the rows kept are the same (Spark's 32-bit hash sends a few more there).
-- person_id is headwater.models.config's rule ({{person_id}}: the mapped person, unless the event
-- lies more than identity.stitch_lookback_days before its id was stitched to it), joined to
-- the day's rows before the dedup, one lookup on the id the rule reads (user_id, else anonymous_id): DuckDB sees no row counts on the lake's Arrow scans, and a join
-- to the result of the anti-joins below built its hash table on the 10M full-width rows, not on
-- the identity map. Whether a key has copies outside the range comes from the counts of the one
-- grouping of the keys (a count(DISTINCT ds) grouped every key a second time and joined back).
WITH keys AS (
    SELECT hash(source, event_id) AS h, ds
    FROM bronze.events
    WHERE ds BETWEEN CAST($start AS DATE) - {{dedup_days}} AND CAST($end AS DATE) + {{dedup_days}}
),
resent AS (
    -- key hashes of the range delivered more than once in the window; outside: also outside the range
    SELECT h, count(*) FILTER (WHERE ds BETWEEN $start AND $end) < count(*) AS outside
    FROM keys
    GROUP BY h
    HAVING count(*) > 1 AND count(*) FILTER (WHERE ds BETWEEN $start AND $end) > 0
),
in_range AS (
    SELECT e.*, {{person_id}} AS person_id
    FROM bronze.events AS e
    LEFT JOIN silver.identity_map AS m ON m.id = coalesce(e.user_id, e.anonymous_id)
    WHERE e.ds BETWEEN $start AND $end
),
copies AS (
    SELECT e.* FROM in_range AS e SEMI JOIN resent AS r ON r.h = hash(e.source, e.event_id)
    UNION ALL
    SELECT e.*, CAST(NULL AS VARCHAR) AS person_id
    FROM bronze.events AS e
    SEMI JOIN (SELECT h FROM resent WHERE outside) AS a ON a.h = hash(e.source, e.event_id)
    WHERE e.ds BETWEEN CAST($start AS DATE) - {{dedup_days}} AND CAST($end AS DATE) + {{dedup_days}}
      AND NOT (e.ds BETWEEN $start AND $end)
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
        source, surface, platform, properties, context, schema_version, person_id, ds
    FROM in_range AS e
    ANTI JOIN resent AS r ON r.h = hash(e.source, e.event_id)
    UNION ALL
    SELECT
        event_id, event_type, event_name, anonymous_id, user_id, event_ts, received_at,
        source, surface, platform, properties, context, schema_version, person_id, ds
    FROM ranked
    ANTI JOIN beaten USING (source, event_id, copy_rank)
    WHERE ds BETWEEN $start AND $end
)
SELECT
    event_id, event_type, event_name, anonymous_id, user_id, event_ts, received_at, source, surface,
    coalesce(platform, 'unknown') AS platform,
    properties, context, schema_version, person_id, ds
FROM winners
