-- gold.events_hourly
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- Hours are UTC hours of event time, ds is the hour's day. Only hours with events have rows.
--
-- events = rows of silver.events (deduplicated events); persons = distinct person_id in the
-- hour (not additive across hours: sum events, not persons).
-- Reads silver.events for ds in [$start, $end] only. Persons are counted from one grouping by
-- person first (a count(DISTINCT person_id) beside count(*) made DuckDB group every row twice
-- and join the two).
WITH per_person AS (
    SELECT date_trunc('hour', event_ts) AS hour, event_type, event_name, platform, person_id, ds, count(*) AS events
    FROM silver.events
    WHERE ds BETWEEN $start AND $end
    GROUP BY date_trunc('hour', event_ts), event_type, event_name, platform, person_id, ds
)
SELECT
    hour,
    event_type,
    event_name,
    platform,
    CAST(sum(events) AS BIGINT) AS events,
    count(person_id) AS persons,
    ds
FROM per_person
GROUP BY hour, event_type, event_name, platform, ds
