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
WITH ev AS (
    SELECT
        person_id,
        event_id,
        coalesce(event_name, event_type) AS name,
        platform,
        event_ts,
        CASE WHEN lag(event_ts) OVER w IS NULL
               OR lag(event_ts) OVER w + INTERVAL 30 MINUTE < event_ts THEN 1 ELSE 0 END AS is_start,
        CASE WHEN lead(event_ts) OVER w IS NULL
               OR event_ts + INTERVAL 30 MINUTE < lead(event_ts) OVER w THEN 1 ELSE 0 END AS is_exit
    FROM silver.events
    WHERE ds BETWEEN CAST($start AS DATE) - 1 AND CAST($end AS DATE) + 1
      AND person_id IS NOT NULL
    WINDOW w AS (PARTITION BY person_id ORDER BY event_ts, event_id)
),
numbered AS (
    SELECT
        *,
        sum(is_start) OVER (PARTITION BY person_id ORDER BY event_ts, event_id ROWS UNBOUNDED PRECEDING) AS session_no
    FROM ev
),
sessions AS (
    SELECT
        person_id,
        min(event_ts) AS session_start,
        max(event_ts) AS session_end,
        count(*) AS events,
        max(CASE WHEN is_start = 1 THEN name END) AS entry_event,
        max(CASE WHEN is_exit = 1 THEN name END) AS exit_event,
        max(CASE WHEN is_start = 1 THEN platform END) AS platform
    FROM numbered
    GROUP BY person_id, session_no
)
SELECT
    person_id || ':' || CAST(date_diff('microsecond', TIMESTAMPTZ '1970-01-01 00:00:00+00', session_start) AS VARCHAR) AS session_id,
    person_id,
    session_start,
    session_end,
    date_diff('microsecond', session_start, session_end) / 1000000.0 AS duration_seconds,
    events,
    entry_event,
    exit_event,
    platform,
    CAST(session_start AS DATE) AS ds
FROM sessions
WHERE CAST(session_start AS DATE) BETWEEN $start AND $end
