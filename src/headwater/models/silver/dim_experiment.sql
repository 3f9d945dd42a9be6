-- silver.dim_experiment
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- The experiment dimension: one row per configured experiment and variant (models config
-- [[experiments]], rendered in as experiments and experiment_variants): the variant's
-- configured weight (normalised to sum to 1), the control, the conversion and exposure
-- events, and what was seen of it in silver.exposures: distinct persons exposed to the
-- variant and the first / last exposure (event time), per variant and per experiment (any
-- variant; null while nothing was seen). An experiment removed from the config leaves the
-- table.
-- Rebuilt whole on every run (SCD type 1: the config's current state; the days results were
-- computed with are in gold.experiments).
-- Reads one partition of silver.exposure_state, its latest ($horizon, found in the Delta log:
-- models.dag.parameters): every person's first and latest exposure per variant so far.
WITH experiments AS (
    SELECT * FROM {{experiments}} AS x
),
variants AS (
    SELECT * FROM {{experiment_variants}} AS v
),
seen AS (
    SELECT
        experiment_id,
        variant,
        count(*) AS exposed,
        min(first_exposed_at) AS first_exposure_at,
        max(last_exposed_at) AS last_exposure_at
    FROM silver.exposure_state
    WHERE ds = CAST($horizon AS DATE)
    GROUP BY experiment_id, variant
)
SELECT
    v.experiment_id,
    v.variant,
    v.variant = x.control AS is_control,
    v.weight,
    x.control,
    x.conversion_event,
    x.exposure_event,
    coalesce(s.exposed, 0) AS exposed,
    s.first_exposure_at,
    s.last_exposure_at,
    min(s.first_exposure_at) OVER (PARTITION BY v.experiment_id) AS experiment_first_exposure_at,
    max(s.last_exposure_at) OVER (PARTITION BY v.experiment_id) AS experiment_last_exposure_at
FROM variants AS v
JOIN experiments AS x ON x.experiment_id = v.experiment_id
LEFT JOIN seen AS s ON s.experiment_id = v.experiment_id AND s.variant = v.variant
