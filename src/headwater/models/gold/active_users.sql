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
-- weekdays. Counts are exact, not sketches.
--
-- A user is a person: person_id of silver.events (identity-resolved; events without one are
-- not counted). stickiness = dau / mau (the share of the month's users active on the day;
-- Mixpanel / Amplitude "stickiness"), null when mau = 0.
-- Reads the state as of each ds, silver.person_platform_state (per person and platform, the
-- days active among the 32 to ds: bit i = ds - i): a person's days are the union over their
-- platforms; active in the window [ds - n + 1, ds] = one of the low n bits set. One
-- partition per day, whatever the history.
WITH days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
persons AS (
    SELECT ds, person_id, bit_or(active_days) AS active_days
    FROM silver.person_platform_state
    WHERE ds BETWEEN $start AND $end
    GROUP BY ds, person_id
),
counts AS (
    SELECT
        ds,
        count(*) FILTER (WHERE active_days & 1 <> 0) AS dau,
        count(*) FILTER (WHERE active_days & 127 <> 0) AS wau,
        count(*) FILTER (WHERE active_days & 268435455 <> 0) AS mau
    FROM persons
    GROUP BY ds
)
SELECT
    d.ds,
    coalesce(c.dau, 0) AS dau,
    coalesce(c.wau, 0) AS wau,
    coalesce(c.mau, 0) AS mau,
    CASE WHEN c.mau > 0 THEN CAST(c.dau AS DOUBLE) / c.mau END AS stickiness
FROM days AS d
LEFT JOIN counts AS c ON c.ds = d.ds
ORDER BY d.ds
