-- gold.conversions
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- The conversions fact: one row per conversion event, ds = its UTC day. Every column but
-- session_id is silver.conversions' (see there: which events, person_id, exact revenue, the
-- experiment variants at that moment).
--
-- session_id: the gold.sessions session holding the event (same person, session_start <=
-- event_ts <= session_end): the sessions model's own definition, read, not re-derived. A
-- conversion's session started on ds or the day before, so gold.sessions is read for ds in
-- [$start - 1, $end]; null only for a session started earlier still (over a day of activity
-- without a 30-minute gap, which gold.sessions cuts too). The sessions of one person do not
-- overlap; the ranking only guards a session cut there from matching twice.
-- Reads silver.conversions and gold.sessions for ds in [$start - 1, $end] (lookback_days = 1).
WITH conversions AS (
    SELECT *
    FROM silver.conversions
    WHERE ds BETWEEN $start AND $end
),
sessioned AS (
    SELECT
        c.source,
        c.event_id,
        s.session_id,
        row_number() OVER (PARTITION BY c.source, c.event_id ORDER BY s.session_start DESC) AS n
    FROM conversions AS c
    JOIN gold.sessions AS s
      ON s.person_id = c.person_id
     AND c.event_ts BETWEEN s.session_start AND s.session_end
    WHERE s.ds BETWEEN CAST($start AS DATE) - 1 AND $end
)
SELECT
    c.event_id,
    c.source,
    c.event_name,
    c.event_ts,
    c.person_id,
    s.session_id,
    c.platform,
    c.revenue,
    c.experiment_variants,
    c.ds
FROM conversions AS c
LEFT JOIN sessioned AS s ON s.source = c.source AND s.event_id = c.event_id AND s.n = 1
