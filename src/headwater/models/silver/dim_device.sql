-- silver.dim_device
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- The device dimension: one row per anonymous_id. The grain is the device, not the person:
-- anonymous_id is what the SDKs keep per install / browser storage (Segment's anonymousId,
-- PostHog's $device_id), so it is the one key whose device, OS and app describe one
-- physical client; a person has several devices, and a shared device several persons.
-- person_id: the person of the device's latest event (silver.events, identity-resolved).
-- Events without an anonymous_id (server-side calls) describe no device: left out.
--
-- Attributes from the event context (Segment's context.device.type / .model, context.os.name
-- / .version, context.app.version), else PostHog's properties ($device_type, $device_model,
-- $os_name or $os, $os_version, $app_version). Each is the latest non-null value sent by the
-- device (event time, then event_id, then source).
--
-- SCD type 1: a device's attributes are overwritten with their latest values, no history
-- kept. The history is already on the facts: every event keeps the context it was sent with (silver.events.context), so "conversions by the app version
-- they happened on" reads the event, not this table; what a dimension adds is the device's
-- current state ("which OS version are our devices on now"), and an SCD2 version per app or
-- OS upgrade would grow with every release for no question the facts cannot answer. (Traits
-- are different: they come only with identify calls, not on each event, so silver.dim_user
-- keeps their history as SCD2.)
-- Updated, not rebuilt (a Python model runs this SQL: headwater.models.dag._dim_device): with
-- $merge, the stored table is merged with the devices of silver.events days [$start, $end],
-- which all come after every event it holds (the model checks), so a device seen again takes
-- the newer values, keeps its first_seen_at and an attribute the new days did not send;
-- without $merge, the devices of those days alone ($start, $end spanning all of silver).
-- Cost: one grouping by device (arg_max over the order key, not a sort of every event per
-- device for six window functions), and each JSON document parsed once for all its paths.
WITH device_events AS (
    SELECT
        anonymous_id,
        person_id,
        platform,
        event_ts,
        {'ts': event_ts, 'id': event_id, 'source': source} AS k,  -- the order (unique: one row per (source, event_id))
        json_extract_string(context, ['$.device.type', '$.device.model', '$.os.name', '$.os.version', '$.app.version']) AS c,
        json_extract_string(properties, ['$."$device_type"', '$."$device_model"', '$."$os_name"', '$."$os"', '$."$os_version"', '$."$app_version"']) AS p
    FROM silver.events
    WHERE ds BETWEEN $start AND $end
      AND anonymous_id IS NOT NULL
      AND person_id IS NOT NULL
),
attributes AS (
    SELECT anonymous_id, person_id, platform, event_ts, k,
           coalesce(c[1], p[1]) AS device_type,
           coalesce(c[2], p[2]) AS device_model,
           coalesce(c[3], p[3], p[4]) AS os_name,
           coalesce(c[4], p[5]) AS os_version,
           coalesce(c[5], p[6]) AS app_version
    FROM device_events
),
news AS (
    SELECT
        anonymous_id,
        arg_max(person_id, k) AS person_id,
        arg_max(platform, k) AS platform,
        arg_max(device_type, k) FILTER (WHERE device_type IS NOT NULL) AS device_type,
        arg_max(device_model, k) FILTER (WHERE device_model IS NOT NULL) AS device_model,
        arg_max(os_name, k) FILTER (WHERE os_name IS NOT NULL) AS os_name,
        arg_max(os_version, k) FILTER (WHERE os_version IS NOT NULL) AS os_version,
        arg_max(app_version, k) FILTER (WHERE app_version IS NOT NULL) AS app_version,
        min(event_ts) AS first_seen_at,
        max(event_ts) AS last_seen_at
    FROM attributes
    GROUP BY anonymous_id
),
prior AS (
    SELECT * FROM silver.dim_device WHERE $merge
)
SELECT
    coalesce(n.anonymous_id, p.anonymous_id) AS anonymous_id,
    coalesce(n.person_id, p.person_id) AS person_id,
    coalesce(n.platform, p.platform) AS platform,
    coalesce(n.device_type, p.device_type) AS device_type,
    coalesce(n.device_model, p.device_model) AS device_model,
    coalesce(n.os_name, p.os_name) AS os_name,
    coalesce(n.os_version, p.os_version) AS os_version,
    coalesce(n.app_version, p.app_version) AS app_version,
    coalesce(p.first_seen_at, n.first_seen_at) AS first_seen_at,
    coalesce(n.last_seen_at, p.last_seen_at) AS last_seen_at
FROM news AS n
FULL OUTER JOIN prior AS p ON p.anonymous_id = n.anonymous_id
