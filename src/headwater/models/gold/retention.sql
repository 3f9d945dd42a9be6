-- gold.retention
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- ds is the cohort's last day: cohort_grain 'day' (period n = 0..30 days; ds = cohort_start)
-- or 'week' (period k = 0..12 ISO weeks; cohort_start = the Monday, ds = the Sunday closing
-- that week).
--
-- The definition is the rendered table retention_events (start_event, return_event; NULL = any event). The
-- shipped gold.retention uses any event for both; the query API renders this same SQL with
-- other events for an ad-hoc retention read from silver.events (one definition).
-- A person's cohort is their first start day (the first ds with a start event in
-- silver.events, over all history) and that day's ISO week (Monday to Sunday). A cohort
-- member is retained in period n (day grain) if active (a return event) on ds + n; in period
-- k (week grain) if active on any day of the k-th week after the cohort week. retention =
-- active_users / cohort_size ("N-day / N-week retention", Amplitude's and Mixpanel's
-- definition of retention on day N; with any event, day 0 / week 0 is 1 by construction for
-- day cohorts). Only complete periods have a row:
-- the period's last day is at most the last ds in silver.events, so a cell appears once its
-- data can be final (a late day restates it, see Model.affected_days).
--
-- A week cohort is keyed by its Sunday so that its partition lies within the days with data
-- (a first week starting before the first day of data still has a partition of its own).
-- Reads silver.events for every ds up to $end + 90 (history = true, lookahead_days = 90:
-- a week cohort's ds is its Sunday; week 12 ends 12 * 7 + 6 days after its Monday).
WITH person_events AS (
    SELECT DISTINCT
        e.person_id,
        e.ds,
        (d.start_event IS NULL OR e.event_name = d.start_event) AS is_start,
        (d.return_event IS NULL OR e.event_name = d.return_event) AS is_return
    FROM silver.events AS e
    CROSS JOIN {{retention_events}} AS d
    WHERE e.ds <= CAST($end AS DATE) + 90
      AND e.person_id IS NOT NULL
),
person_days AS (
    SELECT DISTINCT person_id, ds FROM person_events WHERE is_return
),
horizon AS (
    SELECT max(ds) AS last_ds FROM silver.events
),
firsts AS (
    SELECT
        person_id,
        min(ds) AS first_ds,
        CAST(date_trunc('week', min(ds)) AS DATE) AS first_week,
        CAST(date_trunc('week', min(ds)) AS DATE) + 6 AS first_week_end
    FROM person_events
    WHERE is_start
    GROUP BY person_id
),
day_cells AS (
    SELECT
        f.first_ds AS ds,
        date_diff('day', f.first_ds, p.ds) AS period,
        count(DISTINCT p.person_id) AS active_users
    FROM firsts AS f
    JOIN person_days AS p ON p.person_id = f.person_id
    WHERE f.first_ds BETWEEN $start AND $end
      AND p.ds <= f.first_ds + 30
    GROUP BY f.first_ds, date_diff('day', f.first_ds, p.ds)
),
week_cells AS (
    SELECT
        f.first_week AS ds,
        CAST(date_diff('day', f.first_week, CAST(date_trunc('week', p.ds) AS DATE)) / 7 AS INTEGER) AS period,
        count(DISTINCT p.person_id) AS active_users
    FROM firsts AS f
    JOIN person_days AS p ON p.person_id = f.person_id
    WHERE f.first_week_end BETWEEN $start AND $end
      AND p.ds <= f.first_week + 90
    GROUP BY 1, 2
),
cohorts AS (
    SELECT first_ds AS ds, first_ds AS cohort_start, 'day' AS cohort_grain, count(*) AS cohort_size
    FROM firsts WHERE first_ds BETWEEN $start AND $end GROUP BY first_ds
    UNION ALL
    SELECT first_week_end, first_week, 'week', count(*)
    FROM firsts WHERE first_week_end BETWEEN $start AND $end GROUP BY first_week_end, first_week
),
periods AS (
    SELECT CAST(n AS INTEGER) AS period FROM generate_series(0, 30) AS t (n)
)
SELECT
    c.ds,
    c.cohort_start,
    c.cohort_grain,
    p.period,
    c.cohort_size,
    coalesce(coalesce(d.active_users, w.active_users), 0) AS active_users,
    coalesce(coalesce(d.active_users, w.active_users), 0) / CAST(c.cohort_size AS DOUBLE) AS retention
FROM cohorts AS c
CROSS JOIN periods AS p
CROSS JOIN horizon AS h
LEFT JOIN day_cells AS d ON c.cohort_grain = 'day' AND d.ds = c.ds AND d.period = p.period
LEFT JOIN week_cells AS w ON c.cohort_grain = 'week' AND w.ds = c.cohort_start AND w.period = p.period
WHERE (c.cohort_grain = 'day' AND c.ds + p.period <= h.last_ds)
   OR (c.cohort_grain = 'week' AND p.period <= 12 AND c.ds + 7 * p.period <= h.last_ds)
ORDER BY c.ds, c.cohort_grain, p.period
