-- silver.exposure_state
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Cumulative state (Model.cumulative): partition ds holds one row for every configured
-- experiment, variant and person exposed to it on or before ds (silver.exposures: configured
-- experiments and variants only): the first exposure's event time (first_exposed_at) and the
-- latest exposure, by event time then event_id (last_exposed_at, last_event_id). These are
-- "the exposures so far" that silver.conversions (the variant of a person's latest exposure
-- before the conversion's day) and silver.dim_experiment (persons exposed, first / last
-- exposure per variant) read, so neither reads every exposure of history.
--
-- Computed from the latest partition before $start ($prior, found in the Delta log:
-- models.dag.parameters) and the days [$start, $end] of silver.exposures: an exposure on a
-- later day comes after every one already in the state (ds is the day of event_ts), so the
-- first exposure, once set, stays, and the latest is the latest day's. A daily run reads one
-- day of exposures and yesterday's state; the state grows with the persons exposed, not with
-- the days. Variants no longer configured leave the state.
-- Reads silver.exposures for ds in [$start, $end] and its own partition $prior.
WITH variants AS (
    SELECT * FROM {{experiment_variants}} AS v
),
days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
prior AS (
    SELECT s.experiment_id, s.variant, s.person_id, s.first_exposed_at, s.last_exposed_at, s.last_event_id
    FROM silver.exposure_state AS s
    JOIN variants AS v ON v.experiment_id = s.experiment_id AND v.variant = s.variant
    WHERE s.ds = CAST($prior AS DATE)
),
daily AS (
    -- per member and day of the range: the first exposure's time and the latest exposure
    SELECT experiment_id, variant, person_id, ds, first_at, event_ts AS last_at, event_id AS last_event_id
    FROM (
        SELECT
            experiment_id, variant, person_id, ds, event_ts, event_id,
            min(event_ts) OVER (PARTITION BY experiment_id, variant, person_id, ds) AS first_at,
            row_number() OVER (PARTITION BY experiment_id, variant, person_id, ds ORDER BY event_ts DESC, event_id DESC) AS n
        FROM silver.exposures
        WHERE ds BETWEEN $start AND $end
    ) AS x
    WHERE n = 1
),
members AS (
    SELECT experiment_id, variant, person_id FROM prior
    UNION
    SELECT experiment_id, variant, person_id FROM daily
),
rolled AS (
    -- as of each day: the prior state, then the range's days up to it (later days are later)
    SELECT
        m.experiment_id,
        m.variant,
        m.person_id,
        d.ds,
        p.first_exposed_at AS prior_first,
        p.last_exposed_at AS prior_last,
        p.last_event_id AS prior_last_event_id,
        min(x.first_at) OVER w AS range_first,
        max(x.ds) OVER w AS last_ds
    FROM days AS d
    CROSS JOIN members AS m
    LEFT JOIN prior AS p ON p.experiment_id = m.experiment_id AND p.variant = m.variant AND p.person_id = m.person_id
    LEFT JOIN daily AS x
      ON x.experiment_id = m.experiment_id AND x.variant = m.variant AND x.person_id = m.person_id AND x.ds = d.ds
    WINDOW w AS (PARTITION BY m.experiment_id, m.variant, m.person_id ORDER BY d.ds ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT
    r.experiment_id,
    r.variant,
    r.person_id,
    coalesce(r.prior_first, r.range_first) AS first_exposed_at,
    CASE WHEN r.last_ds IS NULL THEN r.prior_last ELSE l.last_at END AS last_exposed_at,
    CASE WHEN r.last_ds IS NULL THEN r.prior_last_event_id ELSE l.last_event_id END AS last_event_id,
    r.ds
FROM rolled AS r
LEFT JOIN daily AS l
  ON l.experiment_id = r.experiment_id AND l.variant = r.variant AND l.person_id = r.person_id AND l.ds = r.last_ds
WHERE coalesce(r.prior_first, r.range_first) IS NOT NULL
