"""The batch layer: models from bronze to silver and gold, by atomic partition overwrite.

* :mod:`.dag` — the one DAG: :class:`~.dag.Model`, :data:`~.dag.MODELS` (the fixed models),
  :func:`~.dag.dag` (those, the typed ``silver.evt_*`` and the CDC ``silver.dim_*`` models),
  :func:`~.dag.plan`;
* :mod:`.run` — the runner: :func:`~.run.run_model`, :func:`~.run.build` (``headwater batch``);
* ``silver/*.sql``, ``gold/*.sql`` — one SQL model per file (its table's grain, schema and
  partitioning are declared in :mod:`headwater.lake.catalog`);
* :mod:`.identity` — identity resolution (``silver.identity_map``, ``silver.identity_refused``);
* :mod:`.config` — funnels, experiments, tracked traits (``config.toml``, overridden by
  ``$HEADWATER_HOME/models.toml``);
* :mod:`.spark`, :mod:`.transpile` — the same SQL on Spark SQL.
"""
