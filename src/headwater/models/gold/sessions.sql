-- gold.sessions
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- ds is the UTC day of the session's start.
--
-- A session is a person's run of events (silver.events, event time) with no gap longer than
-- 30 minutes between consecutive events: an event more than 30 minutes after the person's
-- previous event starts a new session (the inactivity-gap session window of Spark / Flink;
-- 30 minutes is Google Analytics' and Amplitude's default timeout). Sessions are per
-- person_id across platforms; platform = the entry event's. Events with the same event_ts
-- are ordered by event_id. entry_event / exit_event: event_name of the first / last event
-- (event_type for events without a name, e.g. identify). duration_seconds = end - start
-- (0 for a one-event session). session_id = person_id ':' microseconds of start since epoch.
--
-- Reads silver.events for ds in [$start - 1, $end + 1] (lookback_days = lookahead_days = 1):
-- the day before tells whether the first events of $start continue an earlier session, the
-- day after lets a session started on $end run past midnight. A session running over more
-- than a whole day of continuous activity is cut at the end of $end + 1.
-- Cost: one sort of the events (lag, lead and the row number share it), the day before
-- reduced to each person's last event (ds is the UTC day of event_ts: it precedes every
-- event of $start); a session is then read off its first and last events (its size from
-- their row numbers), not numbered by a running sum over every event and grouped (a second
-- sort of every event).
WITH day_before AS (
    -- of the day before $start, each person's last event only: all that tells whether the
    -- first events of $start continue a session (a session started that day is not output)
    SELECT person_id, max(event_ts) AS event_ts
    FROM silver.events
    WHERE ds = CAST($start AS DATE) - 1
      AND person_id IS NOT NULL
    GROUP BY person_id
),
events AS (
    SELECT person_id, event_id, coalesce(event_name, event_type) AS name, platform, event_ts
    FROM silver.events
    WHERE ds BETWEEN $start AND CAST($end AS DATE) + 1
      AND person_id IS NOT NULL
    UNION ALL
    SELECT person_id, CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), event_ts
    FROM day_before
),
ev AS (
    SELECT
        person_id,
        name,
        platform,
        event_ts,
        row_number() OVER w AS n,
        CASE WHEN lag(event_ts) OVER w IS NULL
               OR lag(event_ts) OVER w + INTERVAL 30 MINUTE < event_ts THEN 1 ELSE 0 END AS is_start,
        CASE WHEN lead(event_ts) OVER w IS NULL
               OR event_ts + INTERVAL 30 MINUTE < lead(event_ts) OVER w THEN 1 ELSE 0 END AS is_exit
    FROM events
    WINDOW w AS (PARTITION BY person_id ORDER BY event_ts, event_id)
),
bounds AS (
    -- a session's first and last event (one row for a one-event session); the exit of a start
    -- that is not one itself is the next of these rows
    SELECT
        *,
        lead(event_ts) OVER b AS next_ts,
        lead(name) OVER b AS next_name,
        lead(n) OVER b AS next_n
    FROM ev
    WHERE is_start = 1 OR is_exit = 1
    WINDOW b AS (PARTITION BY person_id ORDER BY n)
),
sessions AS (
    SELECT
        person_id,
        event_ts AS session_start,
        CASE WHEN is_exit = 1 THEN event_ts ELSE next_ts END AS session_end,
        CASE WHEN is_exit = 1 THEN 1 ELSE next_n - n + 1 END AS events,
        name AS entry_event,
        CASE WHEN is_exit = 1 THEN name ELSE next_name END AS exit_event,
        platform
    FROM bounds
    WHERE is_start = 1
)
SELECT
    person_id || ':' || CAST(epoch_us(session_start) AS VARCHAR) AS session_id,
    person_id,
    session_start,
    session_end,
    (epoch_us(session_end) - epoch_us(session_start)) / 1000000.0 AS duration_seconds,
    events,
    entry_event,
    exit_event,
    platform,
    CAST(session_start AS DATE) AS ds
FROM sessions
WHERE CAST(session_start AS DATE) BETWEEN $start AND $end
