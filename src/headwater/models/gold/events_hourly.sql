-- gold.events_hourly
-- Grain: one row per (UTC hour of event time, event_type, event_name, platform) with events,
-- partitioned by ds (the hour's day). Only hours with events have rows.
--
-- events = rows of silver.events (deduplicated events); persons = distinct person_id in the
-- hour (not additive across hours: sum events, not persons).
-- Reads silver.events for ds in [$start, $end] only.
-- Columns: headwater.lake.schemas.EVENTS_HOURLY_SCHEMA.
SELECT
    date_trunc('hour', event_ts) AS hour,
    event_type,
    event_name,
    platform,
    count(*) AS events,
    count(DISTINCT person_id) AS persons,
    ds
FROM silver.events
WHERE ds BETWEEN $start AND $end
GROUP BY date_trunc('hour', event_ts), event_type, event_name, platform, ds
