-- silver.exposures
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- The experiment exposures, one definition for the models that read them (silver.conversions,
-- silver.dim_experiment): track events of silver.events named the experiment's exposure_event
-- (models config [[experiments]]; default "Experiment Viewed", Segment's A/B testing spec) with
-- properties.experiment_id a configured experiment and properties.variation_id one of its
-- configured variants; exposures to anything else are left out, as are events without a
-- person. person_id is silver.events' (identity-resolved). ds = the event's UTC day.
-- Reads silver.events for ds in [$start, $end].
WITH experiments AS (
    SELECT * FROM {{experiments}} AS x
),
variants AS (
    SELECT * FROM {{experiment_variants}} AS v
)
SELECT
    v.experiment_id,
    v.variant,
    e.person_id,
    e.source,
    e.event_id,
    e.event_ts,
    e.ds
FROM silver.events AS e
JOIN experiments AS x
  ON e.event_name = x.exposure_event
 AND json_extract_string(e.properties, '$.experiment_id') = x.experiment_id
JOIN variants AS v
  ON v.experiment_id = x.experiment_id
 AND v.variant = json_extract_string(e.properties, '$.variation_id')
WHERE e.ds BETWEEN $start AND $end
  AND e.event_name IN {{exposure_event_names}}  -- a constant the scan applies before the joins
  AND e.event_type = 'track'
  AND e.person_id IS NOT NULL
