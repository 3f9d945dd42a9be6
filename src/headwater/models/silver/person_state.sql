-- silver.person_state
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Cumulative state (Model.cumulative): partition ds holds one row for every person (person_id
-- of silver.events, identity-resolved) with an event on or before ds:
--   first_ds, last_ds  the first and the last day with an event, up to ds;
--   cohort_ds          the retention cohort: the first day with a start event (null until one);
--   day_bits           bit n: a return event on cohort_ds + n (n = 0..30);
--   week_bits          bit k: a return event in the k-th ISO week (Monday to Sunday) after
--                      the cohort day's week (k = 0..12);
--   month_bits         bit m: a return event in the m-th calendar month after the cohort
--                      day's month (m = 0..12).
-- Start and return events are the rendered table retention_events (NULL = any event: the
-- shipped definition; the query API renders other events for an ad-hoc retention). These are
-- the retention cohorts' members and what each did in every period gold.retention reports, so
-- it reads one partition.
--
-- Computed from the latest partition before $start (a person's cohort never moves once set:
-- later days come after it; bits are only ever added) and silver.events for ds in
-- [$start, $end]: a daily run reads one day of events and yesterday's state. The state holds
-- every person ever seen (that is what tells a new person from a returning one), so its
-- size follows the persons, not the days.
-- Reads silver.events for ds in [$start, $end] and its own latest partition before $start
-- ($prior, found in the Delta log: models.dag.parameters).
WITH days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
prior AS (
    SELECT *
    FROM silver.person_state
    WHERE ds = CAST($prior AS DATE)
),
activity AS (
    SELECT
        e.person_id,
        e.ds,
        max(CASE WHEN d.start_event IS NULL OR e.event_name = d.start_event THEN 1 ELSE 0 END) AS is_start,
        max(CASE WHEN d.return_event IS NULL OR e.event_name = d.return_event THEN 1 ELSE 0 END) AS is_return
    FROM silver.events AS e
    CROSS JOIN {{retention_events}} AS d
    WHERE e.ds BETWEEN $start AND $end
      AND e.person_id IS NOT NULL
    GROUP BY e.person_id, e.ds
),
persons AS (
    -- everyone known by $end, with the cohort: the prior state's, else the first start day in range
    SELECT
        coalesce(p.person_id, a.person_id) AS person_id,
        p.first_ds,
        p.last_ds,
        coalesce(p.cohort_ds, a.cohort_ds) AS cohort_ds,
        coalesce(p.day_bits, 0) AS day_bits,
        coalesce(p.week_bits, 0) AS week_bits,
        coalesce(p.month_bits, 0) AS month_bits
    FROM prior AS p
    FULL OUTER JOIN (
        SELECT person_id, min(CASE WHEN is_start = 1 THEN ds END) AS cohort_ds FROM activity GROUP BY person_id
    ) AS a ON a.person_id = p.person_id
),
periods AS (
    -- each person x day of the range: that day's activity and the period it falls in
    SELECT
        d.ds,
        p.person_id,
        p.first_ds,
        p.last_ds,
        p.cohort_ds,
        p.day_bits,
        p.week_bits,
        p.month_bits,
        a.ds AS active_ds,
        CASE WHEN a.is_return = 1 THEN date_diff('day', p.cohort_ds, d.ds) END AS day_n,
        CASE WHEN a.is_return = 1 THEN CAST(date_diff('day', CAST(date_trunc('week', p.cohort_ds) AS DATE),
                                                      CAST(date_trunc('week', d.ds) AS DATE)) / 7 AS INTEGER) END AS week_n,
        CASE WHEN a.is_return = 1 THEN (year(d.ds) - year(p.cohort_ds)) * 12 + month(d.ds) - month(p.cohort_ds) END AS month_n
    FROM days AS d
    CROSS JOIN persons AS p
    LEFT JOIN activity AS a ON a.person_id = p.person_id AND a.ds = d.ds
),
added AS (
    SELECT
        *,
        CASE WHEN day_n BETWEEN 0 AND 30 THEN CAST(1 AS BIGINT) << day_n ELSE 0 END AS day_bit,
        CASE WHEN week_n BETWEEN 0 AND 12 THEN CAST(1 AS BIGINT) << week_n ELSE 0 END AS week_bit,
        CASE WHEN month_n BETWEEN 0 AND 12 THEN CAST(1 AS BIGINT) << month_n ELSE 0 END AS month_bit
    FROM periods
),
rolled AS (
    -- as of each day: the prior state plus the range's days up to it
    SELECT
        person_id,
        coalesce(first_ds, min(active_ds) OVER w) AS first_ds,
        coalesce(max(active_ds) OVER w, last_ds) AS last_ds,
        CASE WHEN cohort_ds <= ds THEN cohort_ds END AS cohort_ds,
        day_bits | bit_or(day_bit) OVER w AS day_bits,
        week_bits | bit_or(week_bit) OVER w AS week_bits,
        month_bits | bit_or(month_bit) OVER w AS month_bits,
        ds
    FROM added
    WINDOW w AS (PARTITION BY person_id ORDER BY ds ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT person_id, first_ds, last_ds, cohort_ds, day_bits, week_bits, month_bits, ds
FROM rolled
WHERE first_ds IS NOT NULL
