-- gold.retention
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- ds is the cohort's last day: cohort_grain 'day' (period n = 0..30 days; ds = cohort_start),
-- 'week' (period k = 0..12 ISO weeks; cohort_start = the Monday, ds = the Sunday closing
-- that week) or 'month' (period m = 0..12 calendar months; cohort_start = the first of the
-- month, ds = its last day).
--
-- The definition is the rendered table retention_events (start_event, return_event; NULL = any event). The
-- shipped gold.retention uses any event for both; the query API renders this same SQL with
-- other events for an ad-hoc retention read from silver.events (one definition).
-- A person's cohort is their first start day (the first ds with a start event in
-- silver.events, over all history: silver.person_state's cohort_ds), that day's ISO week (Monday to Sunday) and its calendar
-- month. A cohort member is retained in period n (day grain) if active (a return event) on
-- ds + n; in period k (week grain) if active on any day of the k-th week after the cohort
-- week; in period m (month grain) if active on any day of the m-th calendar month after the
-- cohort month. retention = active_users / cohort_size ("N-day / N-week / N-month
-- retention", Amplitude's and Mixpanel's definition of retention in period N; with any
-- event, day 0 / week 0 / month 0 is 1 by construction). Only complete periods have a row:
-- the period's last day is at most the horizon (the last day with an event in the state
-- read), so a cell appears once its data can be final (a late day restates it, see Model.affected_days).
--
-- Horizons: a day cohort is followed for a month (30 days), a week cohort for a quarter (12
-- weeks), a month cohort for a year (12 months: yearly plans renew, seasons come back).
-- A week or month cohort is keyed by its last day so that its partition lies within the
-- days with data (a first week or month starting before the first day of data still has a
-- partition of its own), and it appears once its last day is built: its members are final.
-- Reads one partition of silver.person_state, the state as of the horizon ($horizon, found in
-- the Delta log: models.dag.parameters): the last day it holds up to $end + 366 (lookahead_days = 366: a month cohort's ds is its month's last day;
-- month 12 ends at most 366 days later, the last day of the same month a year on — a week
-- cohort needs 84 days, a day cohort 30). That state holds every person's cohort and the
-- periods they returned in (day_bits, week_bits, month_bits), so a run reads no events: a
-- daily build rewrites the cohorts of the year before from one day's state.
WITH state AS (
    SELECT *
    FROM silver.person_state
    WHERE ds = CAST($horizon AS DATE)
),
horizon AS (
    -- open_month: the month number (year * 12 + month) of the first month not yet complete
    SELECT max(last_ds) AS last_ds, year(max(last_ds) + 1) * 12 + month(max(last_ds) + 1) AS open_month FROM state
),
firsts AS (
    SELECT
        person_id,
        cohort_ds AS first_ds,
        CAST(date_trunc('week', cohort_ds) AS DATE) AS first_week,
        CAST(date_trunc('week', cohort_ds) AS DATE) + 6 AS first_week_end,
        CAST(date_trunc('month', cohort_ds) AS DATE) AS first_month,
        last_day(cohort_ds) AS first_month_end,
        day_bits,
        week_bits,
        month_bits
    FROM state
    WHERE cohort_ds IS NOT NULL
),
periods AS (
    SELECT CAST(n AS INTEGER) AS period FROM generate_series(0, 30) AS t (n)
),
day_cells AS (
    SELECT f.first_ds AS ds, p.period, count(*) AS active_users
    FROM firsts AS f
    JOIN periods AS p ON (f.day_bits >> p.period) & 1 = 1
    WHERE f.first_ds BETWEEN $start AND $end
    GROUP BY f.first_ds, p.period
),
week_cells AS (
    SELECT f.first_week AS ds, p.period, count(*) AS active_users
    FROM firsts AS f
    JOIN periods AS p ON (f.week_bits >> p.period) & 1 = 1
    WHERE f.first_week_end BETWEEN $start AND $end
    GROUP BY f.first_week, p.period
),
month_cells AS (
    SELECT f.first_month AS ds, p.period, count(*) AS active_users
    FROM firsts AS f
    JOIN periods AS p ON (f.month_bits >> p.period) & 1 = 1
    WHERE f.first_month_end BETWEEN $start AND $end
    GROUP BY f.first_month, p.period
),
cohorts AS (
    SELECT first_ds AS ds, first_ds AS cohort_start, 'day' AS cohort_grain, count(*) AS cohort_size
    FROM firsts WHERE first_ds BETWEEN $start AND $end GROUP BY first_ds
    UNION ALL
    SELECT first_week_end, first_week, 'week', count(*)
    FROM firsts WHERE first_week_end BETWEEN $start AND $end GROUP BY first_week_end, first_week
    UNION ALL
    SELECT first_month_end, first_month, 'month', count(*)
    FROM firsts WHERE first_month_end BETWEEN $start AND $end GROUP BY first_month_end, first_month
)
SELECT
    c.ds,
    c.cohort_start,
    c.cohort_grain,
    p.period,
    c.cohort_size,
    coalesce(coalesce(d.active_users, w.active_users, m.active_users), 0) AS active_users,
    coalesce(coalesce(d.active_users, w.active_users, m.active_users), 0) / CAST(c.cohort_size AS DOUBLE) AS retention
FROM cohorts AS c
CROSS JOIN periods AS p
CROSS JOIN horizon AS h
LEFT JOIN day_cells AS d ON c.cohort_grain = 'day' AND d.ds = c.ds AND d.period = p.period
LEFT JOIN week_cells AS w ON c.cohort_grain = 'week' AND w.ds = c.cohort_start AND w.period = p.period
LEFT JOIN month_cells AS m ON c.cohort_grain = 'month' AND m.ds = c.cohort_start AND m.period = p.period
WHERE (c.cohort_grain = 'day' AND c.ds + p.period <= h.last_ds)
   OR (c.cohort_grain = 'week' AND p.period <= 12 AND c.ds + 7 * p.period <= h.last_ds)
   OR (c.cohort_grain = 'month' AND p.period <= 12 AND year(c.cohort_start) * 12 + month(c.cohort_start) + p.period < h.open_month)
ORDER BY c.ds, c.cohort_grain, p.period
