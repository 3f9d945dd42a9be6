-- gold.active_users_monthly
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Calendar-month actives, month to date: for every ds in [$start, $end] and every platform
-- with an active person from the first of ds's month to ds, active_users = distinct persons
-- (person_id of silver.events, identity-resolved) with an event in [month, ds] on that
-- platform. The row of a month's last day is that calendar month's actives; the rows before
-- it are the month so far (a dashboard shows the running month too). Unlike gold.active_users'
-- MAU (a trailing 28 days), months differ in length and weekdays: compare them with care.
-- A person active on two platforms counts once on each.
-- Reads silver.events for ds in [$start - 30, $end]: lookback_days = 30 (the first of the
-- month is at most 30 days before ds).
WITH days AS (
    SELECT CAST(day AS DATE) AS ds, CAST(date_trunc('month', day) AS DATE) AS month
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
user_days AS (
    SELECT DISTINCT ds, platform, person_id
    FROM silver.events
    WHERE ds BETWEEN CAST($start AS DATE) - 30 AND CAST($end AS DATE)
      AND person_id IS NOT NULL
)
SELECT
    d.month,
    u.platform,
    count(DISTINCT u.person_id) AS active_users,
    d.ds
FROM days AS d
JOIN user_days AS u
    ON u.ds BETWEEN d.month AND d.ds
GROUP BY d.ds, d.month, u.platform
ORDER BY d.ds, u.platform
