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
-- From the identify events of silver.events (deduplicated; person_id resolved there), so
-- the result depends only on the events: re-running any day creates no extra version, and a
-- late identify lands in the right place of the history instead of being appended after it.
-- Updated, not rebuilt (a Python model runs this SQL: headwater.models.dag._dim_user): with
-- $merge, the identifies of silver.events days [$start, $end], which all come after every
-- identify the stored table was built from (the model checks), continue each person's
-- history from its current version: the state before them is that version's traits (the
-- last non-null value of each trait so far), and version numbers go on from it. Without
-- $merge, the identifies of those days alone ($start, $end spanning all of silver).
-- traits: JSON object of the tracked traits in effect, keys sorted, values as strings.
WITH identifies AS (
    SELECT source, event_id, event_ts, user_id, properties, person_id
    FROM silver.events
    WHERE ds BETWEEN $start AND $end
      AND event_type = 'identify'
      AND user_id IS NOT NULL
),
prior AS (
    SELECT * FROM silver.dim_user WHERE $merge
),
current_version AS (
    SELECT person_id, version, traits FROM prior WHERE is_current
),
trait_values AS (
    SELECT
        k.person_id,
        k.source,
        k.event_id,
        t.trait,
        coalesce(
            last_value(json_extract_string(k.properties, '$."' || t.trait || '"') IGNORE NULLS) OVER (
                PARTITION BY k.person_id, t.trait
                ORDER BY k.event_ts, k.event_id, k.source
                ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
            ),
            json_extract_string(c.traits, '$."' || t.trait || '"')
        ) AS value
    FROM identifies AS k
    CROSS JOIN {{tracked_traits}} AS t
    LEFT JOIN current_version AS c ON c.person_id = k.person_id
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
    FROM identifies AS k
    LEFT JOIN trait_values AS v ON v.person_id = k.person_id AND v.source = k.source AND v.event_id = k.event_id
    GROUP BY k.person_id, k.event_ts, k.source, k.event_id, k.user_id
),
changes AS (
    SELECT
        s.*,
        coalesce(lag(s.traits) OVER (PARTITION BY s.person_id ORDER BY s.event_ts, s.event_id, s.source), c.traits) AS previous
    FROM states AS s
    LEFT JOIN current_version AS c ON c.person_id = s.person_id
),
versions AS (
    SELECT person_id, event_ts, source, event_id, user_id, traits
    FROM changes
    WHERE previous IS NULL OR previous <> traits
),
added AS (
    SELECT
        v.person_id,
        coalesce(c.version, 0) + row_number() OVER w AS version,
        v.event_ts AS valid_from,
        lead(v.event_ts) OVER w AS valid_to,
        lead(v.event_ts) OVER w IS NULL AS is_current,
        v.user_id,
        v.traits
    FROM versions AS v
    LEFT JOIN current_version AS c ON c.person_id = v.person_id
    WINDOW w AS (PARTITION BY v.person_id ORDER BY v.event_ts, v.event_id, v.source)
),
superseded AS (
    SELECT person_id, min(valid_from) AS at FROM added GROUP BY person_id
)
SELECT
    p.person_id,
    p.version,
    p.valid_from,
    CASE WHEN p.is_current AND n.at IS NOT NULL THEN n.at ELSE p.valid_to END AS valid_to,
    p.is_current AND n.at IS NULL AS is_current,
    p.user_id,
    p.traits
FROM prior AS p
LEFT JOIN superseded AS n ON n.person_id = p.person_id
UNION ALL
SELECT person_id, version, valid_from, valid_to, is_current, user_id, traits
FROM added
