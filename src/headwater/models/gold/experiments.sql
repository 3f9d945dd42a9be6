-- gold.experiments
-- Grain, schema and partitioning: the table's entry in headwater.lake.catalog.
--
-- A row holds the experiment's results as of the end of ds (cumulative from its first
-- exposure).
--
-- Experiments come from the models config ([[experiments]]: variants with expected weights,
-- control, conversion_event, exposure_event), rendered in as the tables experiments and
-- experiment_variants. Exposures are track events named exposure_event (default
-- "Experiment Viewed", Segment's A/B testing spec) with properties.experiment_id and
-- properties.variation_id. A person's variant is the one of their first exposure (event
-- time, then event_id); exposures to variants not configured are ignored. A converter is an
-- exposed person with a conversion_event at or after their first exposure, by the end of ds.
-- Both are kept per person in silver.experiment_state (cumulative, as of each ds).
--
-- Statistics (treatment t against the control c; p = converters / exposed, n = exposed):
--   lift_abs = p_t - p_c, 95 % CI lift_abs +- 1.96 * sqrt(p_t(1-p_t)/n_t + p_c(1-p_c)/n_c)
--     (Wald interval of a difference of proportions, unpooled);
--   lift_rel = p_t / p_c - 1, 95 % CI lift_rel +- 1.96 * sqrt(var_t/p_c^2 + p_t^2 var_c/p_c^4)
--     with var = p(1-p)/n (delta method; Kohavi, Tang, Xu, "Trustworthy Online Controlled
--     Experiments", 2020, ch. 18, and Deng et al., "Applying the Delta Method in Metric
--     Analytics", KDD 2018);
--   z = (p_t - p_c) / sqrt(p(1-p)(1/n_t + 1/n_c)), p pooled = (x_t + x_c)/(n_t + n_c), and the
--     two-sided p-value 2(1 - Phi(|z|)) (two-proportion z-test, e.g. NIST/SEMATECH
--     e-Handbook 7.3.3), Phi from the erfc approximation of Abramowitz & Stegun 7.1.26
--     (|error| < 1.5e-7): erfc(x) ~ t(a1 + t(a2 + t(a3 + t(a4 + t a5)))) exp(-x^2), t = 1/(1+0.3275911x);
--   SRM (sample ratio mismatch; Fabijan et al., "Diagnosing Sample Ratio Mismatch in Online
--     Controlled Experiments", KDD 2019): Pearson chi-square of the exposed counts against
--     the configured weights, chi2 = sum (n_v - N w_v)^2 / (N w_v), k - 1 degrees of freedom;
--     p-value exact for 1 degree (2(1 - Phi(sqrt(chi2)))) and 2 (exp(-chi2/2)), Wilson-Hilferty
--     normal approximation above; srm = p < 0.001 (the book's threshold, ch. 21).
-- Null where undefined (the control's lifts, an empty variant, p_c = 0).
--
-- Reads silver.experiment_state for ds in [$start, $end]: one partition per day, whatever the history.
WITH experiments AS (
    SELECT * FROM {{experiments}} AS x
),
variants AS (
    SELECT * FROM {{experiment_variants}} AS v
),
days AS (
    SELECT CAST(day AS DATE) AS ds
    FROM generate_series(CAST($start AS DATE), CAST($end AS DATE), INTERVAL 1 DAY) AS t (day)
),
members AS (
    SELECT * FROM silver.experiment_state WHERE ds BETWEEN $start AND $end
),
counts AS (
    SELECT
        d.ds,
        v.experiment_id,
        v.variant,
        v.weight,
        count(m.person_id) AS exposed,
        count(m.converted_at) AS converters
    FROM days AS d
    CROSS JOIN variants AS v
    LEFT JOIN members AS m
      ON m.ds = d.ds AND m.experiment_id = v.experiment_id AND m.variant = v.variant
    GROUP BY d.ds, v.experiment_id, v.variant, v.weight
),
totals AS (
    SELECT ds, experiment_id, sum(exposed) AS total, count(*) - 1 AS dof
    FROM counts GROUP BY ds, experiment_id
),
srm AS (
    SELECT
        c.ds,
        c.experiment_id,
        t.dof,
        CASE WHEN t.total > 0 THEN sum(power(c.exposed - t.total * c.weight, 2) / nullif(t.total * c.weight, 0)) END AS chi2
    FROM counts AS c
    JOIN totals AS t ON t.ds = c.ds AND t.experiment_id = c.experiment_id
    GROUP BY c.ds, c.experiment_id, t.dof, t.total
),
srm_z AS (
    -- x = the normal deviate whose upper tail is the chi-square p-value (dof 1: sqrt(chi2);
    -- dof >= 3: Wilson-Hilferty); dof 2 has the exact exp(-chi2/2)
    SELECT
        *,
        CASE WHEN dof = 1 THEN sqrt(chi2)
             ELSE (power(chi2 / dof, 1.0 / 3) - (1 - 2.0 / (9 * dof))) / sqrt(2.0 / (9 * dof)) END AS zx
    FROM srm
),
srm_p AS (
    SELECT
        ds,
        experiment_id,
        chi2,
        CASE WHEN chi2 IS NULL THEN NULL
             WHEN dof = 2 THEN exp(-chi2 / 2)
             WHEN dof = 1 THEN tail2
             WHEN zx >= 0 THEN tail2 / 2
             ELSE 1 - tail2 / 2 END AS p_value
    FROM (
        -- tail2 = erfc(|zx| / sqrt 2) = 2 (1 - Phi(|zx|)), Abramowitz & Stegun 7.1.26
        SELECT *,
            tt * (0.254829592 + tt * (-0.284496736 + tt * (1.421413741 + tt * (-1.453152027 + tt * 1.061405429))))
                * exp(-(zx * zx) / 2) AS tail2
        FROM (SELECT *, 1 / (1 + 0.3275911 * abs(zx) / sqrt(2)) AS tt FROM srm_z) AS a
    ) AS b
),
rates AS (
    SELECT
        c.*,
        CASE WHEN c.exposed > 0 THEN CAST(c.converters AS DOUBLE) / c.exposed END AS rate,
        x.control
    FROM counts AS c
    JOIN experiments AS x ON x.experiment_id = c.experiment_id
),
versus AS (
    SELECT
        r.*,
        k.exposed AS n_c,
        k.converters AS x_c,
        k.rate AS p_c,
        r.rate - k.rate AS lift_abs,
        sqrt(r.rate * (1 - r.rate) / nullif(r.exposed, 0) + k.rate * (1 - k.rate) / nullif(k.exposed, 0)) AS se_abs,
        CASE WHEN k.rate > 0 THEN r.rate / k.rate - 1 END AS lift_rel,
        CASE WHEN k.rate > 0 THEN sqrt(
            (r.rate * (1 - r.rate) / nullif(r.exposed, 0)) / (k.rate * k.rate)
            + r.rate * r.rate * (k.rate * (1 - k.rate) / nullif(k.exposed, 0)) / power(k.rate, 4)
        ) END AS se_rel,
        (r.converters + k.converters) / CAST(nullif(r.exposed + k.exposed, 0) AS DOUBLE) AS pooled
    FROM rates AS r
    JOIN rates AS k ON k.ds = r.ds AND k.experiment_id = r.experiment_id AND k.variant = r.control
),
tests AS (
    SELECT
        *,
        CASE WHEN variant <> control AND pooled > 0 AND pooled < 1
             THEN lift_abs / sqrt(pooled * (1 - pooled) * (1.0 / exposed + 1.0 / n_c)) END AS z
    FROM versus
),
z_tail AS (
    SELECT *, 1 / (1 + 0.3275911 * abs(z) / sqrt(2)) AS tt FROM tests
)
SELECT
    t.ds,
    t.experiment_id,
    t.variant,
    t.variant = t.control AS is_control,
    t.exposed,
    t.converters,
    t.rate AS conversion_rate,
    CASE WHEN t.variant <> t.control THEN t.lift_abs END AS lift_abs,
    CASE WHEN t.variant <> t.control THEN t.lift_abs - 1.96 * t.se_abs END AS lift_abs_ci_low,
    CASE WHEN t.variant <> t.control THEN t.lift_abs + 1.96 * t.se_abs END AS lift_abs_ci_high,
    CASE WHEN t.variant <> t.control THEN t.lift_rel END AS lift_rel,
    CASE WHEN t.variant <> t.control THEN t.lift_rel - 1.96 * t.se_rel END AS lift_rel_ci_low,
    CASE WHEN t.variant <> t.control THEN t.lift_rel + 1.96 * t.se_rel END AS lift_rel_ci_high,
    t.z,
    -- two-sided p = erfc(|z| / sqrt 2), Abramowitz & Stegun 7.1.26 (as for the SRM above)
    t.tt * (0.254829592 + t.tt * (-0.284496736 + t.tt * (1.421413741 + t.tt * (-1.453152027 + t.tt * 1.061405429))))
        * exp(-(t.z * t.z) / 2) AS p_value,
    t.weight AS expected_share,
    s.chi2 AS srm_chi2,
    s.p_value AS srm_p_value,
    s.p_value < 0.001 AS srm
FROM z_tail AS t
JOIN srm_p AS s ON s.ds = t.ds AND s.experiment_id = t.experiment_id
ORDER BY t.ds, t.experiment_id, t.variant
