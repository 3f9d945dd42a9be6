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
-- Reads the state as of each ds, silver.person_platform_state (bit i of active_days: an event
-- on ds - i on that platform), for ds in [$start, $end].
WITH counts AS (
    SELECT
        ds,
        platform,
        count(*) FILTER (WHERE active_days & 1 <> 0) AS dau,
        count(*) FILTER (WHERE active_days & 127 <> 0) AS wau,
        count(*) FILTER (WHERE active_days & 268435455 <> 0) AS mau
    FROM silver.person_platform_state
    WHERE ds BETWEEN $start AND $end
    GROUP BY ds, platform
)
SELECT ds, platform, dau, wau, mau, CAST(dau AS DOUBLE) / mau AS stickiness
FROM counts
WHERE mau > 0
ORDER BY ds, platform
