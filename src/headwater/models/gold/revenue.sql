-- gold.revenue
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Per ds and platform: revenue = the exact DECIMAL(38, 9) sum of gold.conversions' revenue
-- (the configured property; conversions without one add nothing), conversions = conversion
-- events (with or without revenue), paying_persons = distinct persons with a conversion of
-- positive revenue, active_users = the day's DAU of gold.active_users_by_platform, and
-- revenue_per_active_user = revenue / active_users (ARPU), null when active_users = 0.
--
-- A row for every ds x platform with an active person or a conversion (a conversion's person
-- is active on its day and platform, so the first implies the second; the full join keeps
-- both either way): revenue 0, not null, on a day without conversions.
-- The sum is exact (DECIMAL on both engines; DECIMAL(38, 9) holds sums up to 10^29). ARPU is a
-- DOUBLE, like the other ratios: DuckDB divides decimals in binary floating point, Spark in
-- decimal, so the exact sum is cast to DOUBLE first and both divide the same two numbers.
-- Reads gold.conversions and gold.active_users_by_platform for ds in [$start, $end].
WITH paid AS (
    SELECT
        ds,
        platform,
        sum(revenue) AS revenue,
        count(*) AS conversions,
        count(DISTINCT person_id) FILTER (WHERE revenue > 0) AS paying_persons
    FROM gold.conversions
    WHERE ds BETWEEN $start AND $end
    GROUP BY ds, platform
),
active AS (
    SELECT ds, platform, dau
    FROM gold.active_users_by_platform
    WHERE ds BETWEEN $start AND $end
      AND dau > 0
),
joined AS (
    SELECT
        coalesce(a.ds, p.ds) AS ds,
        coalesce(a.platform, p.platform) AS platform,
        coalesce(p.revenue, CAST(0 AS DECIMAL(38, 9))) AS revenue,
        coalesce(p.conversions, 0) AS conversions,
        coalesce(p.paying_persons, 0) AS paying_persons,
        coalesce(a.dau, 0) AS active_users
    FROM active AS a
    FULL OUTER JOIN paid AS p ON p.ds = a.ds AND p.platform = a.platform
)
SELECT
    ds,
    platform,
    revenue,
    conversions,
    paying_persons,
    active_users,
    CASE WHEN active_users > 0 THEN CAST(revenue AS DOUBLE) / active_users END AS revenue_per_active_user
FROM joined
ORDER BY ds, platform
