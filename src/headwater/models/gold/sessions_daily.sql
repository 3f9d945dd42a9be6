-- gold.sessions_daily
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- gold.sessions per ds (the UTC day of the session's start) x platform (its entry event's),
-- pre-aggregated for /api/metrics/sessions: sessions; median_duration_s, the exact median of
-- the sessions' durations (over all the day's sessions of the platform, not a median of
-- medians), taken over whole microseconds so that the halfway value of an even count is exact
-- on every engine, then divided into seconds; bounce_rate, the share of one-event sessions;
-- persons, distinct person_id. A (ds, platform) without sessions has no row.
SELECT
    ds,
    platform,
    count(*) AS sessions,
    median(date_diff('microsecond', session_start, session_end)) / 1000000.0 AS median_duration_s,
    CAST(count(CASE WHEN events = 1 THEN 1 END) AS DOUBLE) / count(*) AS bounce_rate,
    count(DISTINCT person_id) AS persons
FROM gold.sessions
WHERE ds BETWEEN $start AND $end
GROUP BY ds, platform
