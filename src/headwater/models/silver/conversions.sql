-- silver.conversions
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- The conversion events: one row per conversion event of silver.events (deduplicated, so one
-- per (source, event_id)), ds = the event's UTC day. gold.conversions, the fact, adds each
-- one's session; this table holds what needs the whole history (the exposures), so that the
-- fact reads the sessions of two days only.
-- Conversion events are track events whose name is in the models config's
-- conversions.events, else every experiment's conversion_event and every funnel's last step
-- (rendered in as conversion_events). Events without a person (no user or anonymous id) are
-- not conversions of anyone: left out.
--
-- person_id: the identity-resolved person of silver.events (an anonymous exposure before a
-- login and the purchase after it are one person's).
-- revenue: the configured property (conversions.revenue_property, Segment's `revenue` by
-- default) as DECIMAL(38, 9), never through a binary float of ours: a JSON string is parsed
-- digit for digit at any length; a JSON number is read by DuckDB's JSON parser as a double
-- and printed back in its shortest round-trip form, so it is exact up to 15 significant
-- digits (any real amount of money). Null when absent or not a number.
-- experiment_variants: JSON object {experiment_id: variant}, keys sorted, of every configured
-- experiment the person was exposed to at or before the conversion (event time): the variant
-- of their *latest* such exposure (ties: the larger event_id). An experiment without an
-- exposure by then is absent (its key reads as null); '{}' when none. Exposures are
-- silver.exposures' (configured experiments and variants only). Note gold.experiments
-- assigns a person the variant of their *first* exposure (intention to treat); here it is
-- where the person was at that moment.
--
-- Reads silver.events and silver.exposures for ds in [$start, $end], and silver.exposure_state
-- (every person's latest exposure per variant) from its latest partition before $start
-- ($prior, found in the Delta log: models.dag.parameters; else $start) to $end - 1: a conversion on day d
-- weighs d's exposures before it and the state as of the latest day before d, never every
-- exposure of history.
WITH conversion_events AS (
    SELECT * FROM {{conversion_events}} AS c
),
revenue AS (
    SELECT * FROM {{revenue_property}} AS r
),
conversions AS (
    SELECT
        e.event_id,
        e.source,
        e.event_name,
        e.event_ts,
        e.person_id,
        e.platform,
        TRY_CAST(json_extract_string(e.properties, '$."' || r.property || '"') AS DECIMAL(38, 9)) AS revenue,
        e.ds
    FROM silver.events AS e
    JOIN conversion_events AS c ON c.event_name = e.event_name
    CROSS JOIN revenue AS r
    WHERE e.ds BETWEEN $start AND $end
      AND e.event_name IN {{conversion_event_names}}  -- a constant the scan applies before the join
      AND e.event_type = 'track'
      AND e.person_id IS NOT NULL
),
states AS (
    SELECT experiment_id, variant, person_id, last_exposed_at, last_event_id, ds
    FROM silver.exposure_state
    WHERE ds BETWEEN coalesce(CAST($prior AS DATE), CAST($start AS DATE)) AND CAST($end AS DATE) - 1
),
state_days AS (
    -- each conversion day's state: the latest partition before it
    SELECT d.ds, max(s.ds) AS state_ds
    FROM (SELECT DISTINCT ds FROM conversions) AS d
    JOIN (SELECT DISTINCT ds FROM states) AS s ON s.ds < d.ds
    GROUP BY d.ds
),
exposures AS (
    -- the candidates for the conversions of day ds: that day's exposures and, per variant,
    -- the person's latest exposure before it (every exposure of an earlier day comes before
    -- every event of ds)
    SELECT person_id, event_id, event_ts, experiment_id, variant, ds
    FROM silver.exposures
    WHERE ds BETWEEN $start AND $end
    UNION ALL
    SELECT s.person_id, s.last_event_id, s.last_exposed_at, s.experiment_id, s.variant, sd.ds
    FROM states AS s
    JOIN state_days AS sd ON sd.state_ds = s.ds
),
latest AS (
    SELECT
        c.source,
        c.event_id,
        x.experiment_id,
        x.variant,
        row_number() OVER (
            PARTITION BY c.source, c.event_id, x.experiment_id ORDER BY x.event_ts DESC, x.event_id DESC
        ) AS n
    FROM conversions AS c
    JOIN exposures AS x ON x.person_id = c.person_id AND x.ds = c.ds AND x.event_ts <= c.event_ts
),
assigned AS (
    SELECT
        source,
        event_id,
        '{' || string_agg(
            '"' || replace(replace(experiment_id, '\', '\\'), '"', '\"') || '":"'
                || replace(replace(variant, '\', '\\'), '"', '\"') || '"',
            ',' ORDER BY experiment_id) || '}' AS experiment_variants
    FROM latest
    WHERE n = 1
    GROUP BY source, event_id
)
SELECT
    c.event_id,
    c.source,
    c.event_name,
    c.event_ts,
    c.person_id,
    c.platform,
    c.revenue,
    coalesce(a.experiment_variants, '{}') AS experiment_variants,
    c.ds
FROM conversions AS c
LEFT JOIN assigned AS a ON a.source = c.source AND a.event_id = c.event_id
