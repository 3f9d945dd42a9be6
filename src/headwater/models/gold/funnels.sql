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
-- Without range joins (a range join per step costs a heavy person's entries times their
-- events). Greedy matching makes step k of an entry, once step k-1 is matched at t, the
-- earliest step-k event strictly after t, kept if by the entry's deadline: next_k(t), which
-- depends on t alone. next_steps sorts each (funnel, person)'s step events once, by time then
-- step descending, and gives every row next_k = the least step-k time among the rows after
-- it (the first one in that order: a first_value ignoring nulls, cheaper than a min over the
-- frame). For a row of step k-1 those are the later instants and, at its own instant, only
-- rows of steps k-1 and below, so next_k is strictly later (an event in two steps of a funnel is
-- two rows and never matches both). Step k is then an equi-join of step k-1's time with the
-- first row of step k-1 at that instant (first_at_instant: duplicate events do not multiply
-- the entries; a duplicated entry event repeats its entry, which the per-person aggregates
-- below ignore). The repeat blocks are rendered for k = 2 .. the longest funnel.
-- Reads silver.events for ds in [$start, $end + L], L = the longest configured window in days,
-- rounded up (funnel_lookahead_days: the model's lookahead_days, at most 7), only the funnels' event names: a literal IN list, which the scan
-- applies before the join that tags the steps (clustered row groups of other names are skipped).
WITH steps AS (
    SELECT * FROM {{funnel_steps}} AS s
),
step_events AS (
    SELECT e.person_id, e.event_ts, e.platform, e.ds, s.funnel, s.step, s.conversion_window
    FROM silver.events AS e
    JOIN steps AS s ON s.event_name = e.event_name
    WHERE e.ds BETWEEN $start AND CAST($end AS DATE) + {{funnel_lookahead_days}}
      AND e.event_name IN {{funnel_event_names}}
      AND e.person_id IS NOT NULL
      AND e.event_type = 'track'
),
next_steps AS (
    SELECT funnel, person_id, step, event_ts AS t,
           lag(event_ts) OVER (PARTITION BY funnel, person_id ORDER BY event_ts, step DESC) IS DISTINCT FROM event_ts
           OR lag(step) OVER (PARTITION BY funnel, person_id ORDER BY event_ts, step DESC) <> step AS first_at_instant
        -- repeat for k in 2..max_funnel_steps
        , first_value(CASE WHEN step = {k} THEN event_ts END IGNORE NULLS) OVER (
              PARTITION BY funnel, person_id ORDER BY event_ts, step DESC ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_{k}
        -- end repeat
    FROM step_events
),
step_1 AS (
    SELECT funnel, person_id, platform, ds, event_ts AS entry_ts, event_ts + conversion_window AS deadline, event_ts AS t
    FROM step_events
    WHERE step = 1 AND ds BETWEEN $start AND $end
),
-- repeat for k in 2..max_funnel_steps
step_{k} AS (
    SELECT c.funnel, c.person_id, c.platform, c.ds, c.entry_ts, c.deadline, n.next_{k} AS t
    FROM step_{k-1} AS c
    JOIN next_steps AS n ON n.funnel = c.funnel AND n.person_id = c.person_id AND n.t = c.t AND n.step = {k-1}
    WHERE n.first_at_instant AND n.next_{k} <= c.deadline
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
