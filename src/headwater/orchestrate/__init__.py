"""Orchestration of the batch layer with Dagster: daily-partitioned assets derived from the
batch DAG (:func:`headwater.models.dag.dag`: silver, gold, typed tables, CDC dimensions),
invariant checks, a daily schedule, a late-data sensor, backfills, and the instance (SQLite
under ``<HEADWATER_HOME>/dagster``).

``headwater.orchestrate.location`` is the code location; one code server serves it to
``dagster-webserver`` and ``dagster-daemon`` (:mod:`headwater.orchestrate.server`).
"""
