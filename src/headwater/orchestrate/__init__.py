"""Orchestration of the batch layer with Dagster: daily-partitioned assets derived from the
batch DAG (:func:`headwater.models.dag.dag`: silver, gold, typed tables, CDC dimensions),
invariant checks, a daily schedule, a late-data sensor, backfills, and the instance (SQLite
under ``<HEADWATER_HOME>/dagster``).

``headwater.orchestrate.location`` is the code location ``dagster-webserver`` and
``dagster-daemon`` load (``-m headwater.orchestrate.location``).
"""
