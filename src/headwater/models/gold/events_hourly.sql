-- gold.events_hourly
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Hours are UTC hours of event time, ds is the hour's day. Only hours with events have rows.
--
-- events = rows of silver.events (deduplicated events); persons = distinct person_id in the
-- hour (not additive across hours: sum events, not persons).
-- Reads silver.events for ds in [$start, $end] only.
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
