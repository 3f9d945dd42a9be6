"""The batch layer: SQL models from bronze to silver and gold, by atomic partition overwrite.

* :mod:`.run` — :class:`~.run.Model`, :data:`~.run.MODELS` (dependency order),
  :func:`~.run.run_model`, :func:`~.run.build`, :func:`~.run.plan`;
* ``silver/*.sql``, ``gold/*.sql`` — one model per file, its grain stated at the top;
* :mod:`.identity` — identity resolution (``silver.identity_map``, ``silver.identity_refused``);
* :mod:`.config` — funnels, experiments, tracked traits (``config.toml``, overridden by
  ``$HEADWATER_HOME/models.toml``); :mod:`.schemas` — the tables' Arrow schemas;
* :mod:`.spark`, :mod:`.transpile` — the same SQL on Spark SQL.
"""
