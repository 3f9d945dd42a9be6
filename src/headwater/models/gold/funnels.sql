-- gold.funnels
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- ds is the UTC day of the entry.
--
-- Funnels come from the models config ([[funnels]]: ordered steps = event names, a
-- conversion window), rendered in as the table funnel_steps. The query API renders this same
-- SQL with one ad-hoc funnel to compute it on read from silver.events (one definition). An entry is a step-1 event of a
-- person on ds; from it the person reaches step k if events of steps 2..k follow in strict
-- order — each strictly later in event time than the previous step's — all within the
-- window after the entry (other events in between are allowed: Amplitude's "this order",
-- Mixpanel's funnels). Steps are matched greedily, each to the earliest qualifying event,
-- which reaches the furthest step possible. entered = distinct persons with an entry on
-- (ds, platform of the entry event); users = distinct persons with an entry there that
-- reached the step; conversion = users / entered. Later steps may happen on any platform.
-- median_seconds_to_convert: the median over those users of the seconds from the entry to
-- the step's event, each user's from their earliest entry there that reached the step (the
-- user's first conversion); null for step 1 and for a step nobody reached. The median is taken over whole microseconds, so the halfway value of
-- an even count is exact on every engine, then divided into seconds.
--
-- One CTE per step (the repeat block is rendered for k = 2 .. the longest funnel): an
-- equi-join on (funnel, person_id, step) with a range condition, then min() per entry.
-- Reads silver.events for ds in [$start, $end + 7] (lookahead_days = 7, the longest window
-- the config allows).
WITH steps AS (
    SELECT * FROM {{funnel_steps}} AS s
),
step_events AS (
    SELECT e.person_id, e.event_ts, e.platform, e.ds, s.funnel, s.step, s.conversion_window
    FROM silver.events AS e
    JOIN steps AS s ON s.event_name = e.event_name
    WHERE e.ds BETWEEN $start AND CAST($end AS DATE) + 7
      AND e.person_id IS NOT NULL
      AND e.event_type = 'track'
),
step_1 AS (
    SELECT DISTINCT funnel, person_id, platform, ds, event_ts AS entry_ts,
           event_ts + conversion_window AS deadline, event_ts AS t
    FROM step_events
    WHERE step = 1 AND ds BETWEEN $start AND $end
),
-- repeat for k in 2..max_funnel_steps
step_{k} AS (
    SELECT c.funnel, c.person_id, c.platform, c.ds, c.entry_ts, c.deadline, min(e.event_ts) AS t
    FROM step_{k-1} AS c
    JOIN step_events AS e
      ON e.funnel = c.funnel AND e.person_id = c.person_id AND e.step = {k}
     AND e.event_ts > c.t AND e.event_ts <= c.deadline
    GROUP BY c.funnel, c.person_id, c.platform, c.ds, c.entry_ts, c.deadline
),
-- end repeat
reached AS (
    SELECT funnel, person_id, platform, ds, 1 AS step, entry_ts, CAST(NULL AS BIGINT) AS micros FROM step_1
    -- repeat for k in 2..max_funnel_steps
    UNION ALL SELECT funnel, person_id, platform, ds, {k} AS step, entry_ts, date_diff('microsecond', entry_ts, t) FROM step_{k}
    -- end repeat
),
converted AS (
    -- one row per user and step: the time to convert from their earliest entry reaching it
    SELECT ds, funnel, platform, step, person_id, arg_min(micros, entry_ts) AS micros
    FROM reached
    GROUP BY ds, funnel, platform, step, person_id
),
counts AS (
    SELECT ds, funnel, platform, step, count(*) AS users, median(micros) AS median_micros
    FROM converted
    GROUP BY ds, funnel, platform, step
),
entries AS (
    SELECT ds, funnel, platform, users AS entered FROM counts WHERE step = 1
)
SELECT
    n.ds,
    n.funnel,
    n.platform,
    s.step,
    s.event_name AS step_name,
    n.entered,
    coalesce(c.users, 0) AS users,
    coalesce(c.users, 0) / CAST(n.entered AS DOUBLE) AS conversion,
    c.median_micros / 1000000.0 AS median_seconds_to_convert
FROM entries AS n
JOIN steps AS s ON s.funnel = n.funnel
LEFT JOIN counts AS c ON c.ds = n.ds AND c.funnel = n.funnel AND c.platform = n.platform AND c.step = s.step
ORDER BY n.ds, n.funnel, n.platform, s.step
