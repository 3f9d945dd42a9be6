"""Orchestration of the batch layer with Dagster: daily-partitioned assets derived from the
batch DAG (:func:`headwater.models.dag.dag`: silver, gold, typed tables, CDC dimensions),
invariant checks, a daily schedule, a late-data sensor, backfills, and the instance (SQLite
under ``<HEADWATER_HOME>/dagster``).

``headwater.orchestrate.location`` is the code location; one code server serves it to
``dagster-webserver`` and to Dagster's daemon, which runs in the code server's process
(:mod:`headwater.orchestrate.server`).
"""
