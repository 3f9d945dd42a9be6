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
-- Reads the state as of each ds, silver.person_platform_state (bit i of active_days: an event
-- on ds - i on that platform; 32 bits hold any month to date): active in [month, ds] = one
-- of the low day-of-month(ds) bits set.
SELECT
    CAST(date_trunc('month', ds) AS DATE) AS month,
    platform,
    count(*) AS active_users,
    ds
FROM silver.person_platform_state
WHERE ds BETWEEN $start AND $end
  AND active_days & ((CAST(1 AS BIGINT) << dayofmonth(ds)) - 1) <> 0
GROUP BY ds, platform
ORDER BY ds, platform
