-- gold.active_users_by_platform
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- A row for every ds in [$start, $end] and every platform with an active person in the 28
-- days to ds (a platform silent for 28 days has no row).
--
-- The same trailing windows as gold.active_users (see there: DAU [ds], WAU [ds-6, ds], MAU
-- [ds-27, ds], exact distinct person_id; stickiness = dau / mau), counted per platform of
-- silver.events: a person active on two platforms counts once on each, so the platforms'
-- counts add up to more than the total.
-- Reads silver.events for ds in [$start - 27, $end]: lookback_days = 27.
WITH days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
user_days AS (
    SELECT DISTINCT ds, platform, person_id
    FROM silver.events
    WHERE ds BETWEEN CAST($start AS DATE) - 27 AND CAST($end AS DATE)
      AND person_id IS NOT NULL
),
counts AS (
    SELECT
        d.ds,
        u.platform,
        count(DISTINCT u.person_id) FILTER (WHERE u.ds = d.ds) AS dau,
        count(DISTINCT u.person_id) FILTER (WHERE u.ds >= d.ds - 6) AS wau,
        count(DISTINCT u.person_id) AS mau
    FROM days AS d
    JOIN user_days AS u
        ON u.ds BETWEEN d.ds - 27 AND d.ds
    GROUP BY d.ds, u.platform
)
SELECT ds, platform, dau, wau, mau, CASE WHEN mau > 0 THEN CAST(dau AS DOUBLE) / mau END AS stickiness
FROM counts
ORDER BY ds, platform
