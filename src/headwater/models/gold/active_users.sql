-- gold.active_users
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Every calendar day ds in [$start, $end] (inclusive) has a row, days without events included
-- (with zero counts).
--
-- Active users over trailing windows ending at ds, inclusive, as Mozilla's telemetry defines
-- them (docs.telemetry.mozilla.org/cookbooks/active_dau: MAU = distinct clients active on
-- any day of the last 28 days, WAU = last 7 days; also GA4's active7DayUsers /
-- active28DayUsers):
--   dau = distinct users with an event on ds                   (window [ds,      ds])
--   wau = distinct users with an event in the 7 days to ds     (window [ds - 6,  ds])
--   mau = distinct users with an event in the 28 days to ds    (window [ds - 27, ds])
-- 28 days (four whole weeks) rather than a calendar month, so every window holds the same
-- weekdays. Counts are exact count(DISTINCT), not sketches.
--
-- A user is a person: person_id of silver.events (identity-resolved; events without one are
-- not counted). stickiness = dau / mau (the share of the month's users active on the day;
-- Mixpanel / Amplitude "stickiness"), null when mau = 0.
-- Reads silver.events for ds in [$start - 27, $end]: lookback_days = 27 in models/dag.py.
WITH days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
user_days AS (
    SELECT DISTINCT
        ds,
        person_id
    FROM silver.events
    WHERE ds BETWEEN CAST($start AS DATE) - 27 AND CAST($end AS DATE)
      AND person_id IS NOT NULL
),
counts AS (
    SELECT
        d.ds,
        count(DISTINCT u.person_id) FILTER (WHERE u.ds = d.ds) AS dau,
        count(DISTINCT u.person_id) FILTER (WHERE u.ds >= d.ds - 6) AS wau,
        count(DISTINCT u.person_id) AS mau
    FROM days AS d
    LEFT JOIN user_days AS u
        ON u.ds BETWEEN d.ds - 27 AND d.ds
    GROUP BY d.ds
)
SELECT ds, dau, wau, mau, CASE WHEN mau > 0 THEN CAST(dau AS DOUBLE) / mau END AS stickiness
FROM counts
ORDER BY ds
