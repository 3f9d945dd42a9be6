-- silver.dim_user
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- A slowly changing dimension of type 2 (Kimball) over the traits sent with identify events,
-- rebuilt whole on every run.
--
-- The state of a person after an identify is, for every tracked trait (models config
-- dim_user.tracked_traits), the last non-null value sent up to then (Segment semantics:
-- identify sends only the traits it sets; a null or missing trait changes nothing).
-- A new version opens at an identify whose state differs from the previous state in a
-- tracked trait; identifies that change nothing (or only untracked traits) open none.
-- valid_from = event time of the opening identify; valid_to = valid_from of the next
-- version (half-open [valid_from, valid_to)), null for the current one; is_current marks
-- exactly one row per person_id. The key is person_id (silver.identity_map), so the traits
-- of every user id of one person (an alias chain) form one history.
--
-- Rebuilt from all identify events of bronze.events (deduplicated on (source, event_id) like
-- silver.events: earliest received_at wins), not merged incrementally: the result depends
-- only on the events, so re-running any day creates no extra version, and a late identify
-- lands in the right place of the history instead of being appended after it.
-- traits: JSON object of the tracked traits in effect, keys sorted, values as strings.
-- Parameters: none (the range is not used).
WITH identifies AS (
    SELECT source, event_id, event_ts, user_id, properties
    FROM bronze.events
    WHERE event_type = 'identify' AND user_id IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY source, event_id ORDER BY received_at, event_ts, properties) = 1
),
keyed AS (
    SELECT i.source, i.event_id, i.event_ts, i.user_id, i.properties, coalesce(m.person_id, i.user_id) AS person_id
    FROM identifies AS i
    LEFT JOIN silver.identity_map AS m ON m.id = i.user_id
),
trait_values AS (
    SELECT
        k.person_id,
        k.source,
        k.event_id,
        t.trait,
        last_value(json_extract_string(k.properties, '$."' || t.trait || '"') IGNORE NULLS) OVER (
            PARTITION BY k.person_id, t.trait
            ORDER BY k.event_ts, k.event_id, k.source
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        ) AS value
    FROM keyed AS k
    CROSS JOIN {{tracked_traits}} AS t
),
states AS (
    SELECT
        k.person_id,
        k.event_ts,
        k.source,
        k.event_id,
        k.user_id,
        '{' || coalesce(string_agg(
            '"' || v.trait || '":' || CASE WHEN v.value IS NULL THEN 'null' ELSE
                '"' || replace(replace(replace(replace(v.value, '\', '\\'), '"', '\"'), chr(10), '\n'), chr(13), '\r') || '"' END,
            ',' ORDER BY v.trait), '') || '}' AS traits
    FROM keyed AS k
    LEFT JOIN trait_values AS v ON v.person_id = k.person_id AND v.source = k.source AND v.event_id = k.event_id
    GROUP BY k.person_id, k.event_ts, k.source, k.event_id, k.user_id
),
changes AS (
    SELECT *, lag(traits) OVER (PARTITION BY person_id ORDER BY event_ts, event_id, source) AS previous
    FROM states
),
versions AS (
    SELECT person_id, event_ts, source, event_id, user_id, traits
    FROM changes
    WHERE previous IS NULL OR previous <> traits
)
SELECT
    person_id,
    row_number() OVER w AS version,
    event_ts AS valid_from,
    lead(event_ts) OVER w AS valid_to,
    lead(event_ts) OVER w IS NULL AS is_current,
    user_id,
    traits
FROM versions
WINDOW w AS (PARTITION BY person_id ORDER BY event_ts, event_id, source)
