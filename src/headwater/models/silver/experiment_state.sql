-- silver.experiment_state
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Cumulative state (Model.cumulative): partition ds holds one row for every configured
-- experiment and person exposed to it on or before ds: the variant and event time of the
-- person's first exposure (silver.exposures: configured experiments and variants only; first
-- by event time, then event_id) and converted_at, the event time of their first
-- conversion_event (a track event of silver.events, the experiment's configured one) at or
-- after that exposure, by the end of ds (null: none yet). gold.experiments counts these.
--
-- Computed from the latest partition before $start and the days [$start, $end] of
-- silver.exposures and silver.events: an exposure or conversion on a later day never comes
-- before one already in the state (ds is the day of event_ts), so the first exposure, once
-- set, stays, and so does the first conversion. A daily run reads one day of events and
-- yesterday's state; the state grows with the persons exposed, not with the days.
-- Reads silver.events and silver.exposures for ds in [$start, $end] and its own latest
-- partition before $start.
WITH experiments AS (
    SELECT * FROM {{experiments}} AS x
),
days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
prior AS (
    -- experiments no longer configured leave the state
    SELECT s.*
    FROM silver.experiment_state AS s
    JOIN experiments AS x ON x.experiment_id = s.experiment_id
    WHERE s.ds = CAST($prior AS DATE)
),
first_exposures AS (
    SELECT experiment_id, person_id, variant, event_ts AS exposed_at
    FROM (
        SELECT *, row_number() OVER (PARTITION BY experiment_id, person_id ORDER BY event_ts, event_id) AS n
        FROM silver.exposures
        WHERE ds BETWEEN $start AND $end
    ) AS f
    WHERE n = 1
),
members AS (
    SELECT
        coalesce(p.experiment_id, f.experiment_id) AS experiment_id,
        coalesce(p.person_id, f.person_id) AS person_id,
        coalesce(p.variant, f.variant) AS variant,
        coalesce(p.exposed_at, f.exposed_at) AS exposed_at,
        p.converted_at
    FROM prior AS p
    FULL OUTER JOIN first_exposures AS f ON f.experiment_id = p.experiment_id AND f.person_id = p.person_id
),
conversions AS (
    -- per member and day of the range: the first conversion event at or after the exposure
    SELECT m.experiment_id, m.person_id, e.ds, min(e.event_ts) AS converted_at
    FROM members AS m
    JOIN experiments AS x ON x.experiment_id = m.experiment_id
    JOIN silver.events AS e
      ON e.person_id = m.person_id
     AND e.event_name = x.conversion_event
     AND e.event_ts >= m.exposed_at
    WHERE e.ds BETWEEN $start AND $end
      AND e.event_name IN {{experiment_conversion_event_names}}  -- a constant the scan applies before the joins
      AND e.event_type = 'track'
      AND m.converted_at IS NULL
    GROUP BY m.experiment_id, m.person_id, e.ds
),
rolled AS (
    SELECT
        m.experiment_id,
        m.person_id,
        m.variant,
        m.exposed_at,
        coalesce(m.converted_at, min(c.converted_at) OVER w) AS converted_at,
        d.ds
    FROM days AS d
    JOIN members AS m ON CAST(m.exposed_at AS DATE) <= d.ds
    LEFT JOIN conversions AS c ON c.experiment_id = m.experiment_id AND c.person_id = m.person_id AND c.ds = d.ds
    WINDOW w AS (PARTITION BY m.experiment_id, m.person_id ORDER BY d.ds ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT experiment_id, person_id, variant, exposed_at, converted_at, ds
FROM rolled
