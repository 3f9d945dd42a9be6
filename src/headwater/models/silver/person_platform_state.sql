-- silver.person_platform_state
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Cumulative state (Model.cumulative): partition ds holds, for every person and platform
-- with an event in the 32 days to ds, active_days, a bitmap whose bit i is set when the
-- person had an event on that platform on ds - i (i = 0..31; person_id of silver.events,
-- identity-resolved; events without one are not counted). 32 days cover the trailing 28-day
-- MAU window and any calendar month to date, so gold.active_users* read one partition per day.
--
-- Computed from the latest partition before $start (the state as of that day, rolled
-- forward: each day later shifts the bitmap one bit left, bits past 31 fall off, so a
-- gap without events is rolled over in one step) and silver.events for ds in
-- [$start, $end]: a daily run reads one day of events and yesterday's state, whatever the
-- history. A person and platform whose bitmap is 0 (silent for 32 days) leaves the state.
-- Reads silver.events for ds in [$start, $end] and its own latest partition before $start
-- ($prior, found in the Delta log: models.dag.parameters).
WITH days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
prior AS (
    SELECT person_id, platform, active_days, ds
    FROM silver.person_platform_state
    WHERE ds = CAST($prior AS DATE)
),
user_days AS (
    SELECT DISTINCT person_id, platform, ds
    FROM silver.events
    WHERE ds BETWEEN $start AND $end
      AND person_id IS NOT NULL
),
bits AS (
    SELECT d.ds, p.person_id, p.platform, p.active_days << date_diff('day', p.ds, d.ds) AS active_days
    FROM prior AS p
    JOIN days AS d ON date_diff('day', p.ds, d.ds) <= 31
    UNION ALL
    SELECT d.ds, u.person_id, u.platform, CAST(1 AS BIGINT) << date_diff('day', u.ds, d.ds) AS active_days
    FROM user_days AS u
    JOIN days AS d ON d.ds BETWEEN u.ds AND u.ds + 31
),
state AS (
    SELECT person_id, platform, bit_or(active_days) & 4294967295 AS active_days, ds
    FROM bits
    GROUP BY ds, person_id, platform
)
SELECT person_id, platform, active_days, ds
FROM state
WHERE active_days <> 0
