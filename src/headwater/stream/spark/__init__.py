"""The scale-out stream engine: a headwater :class:`~headwater.stream.pipeline.Pipeline` on
Spark Structured Streaming (pyspark, the optional extra ``headwater[spark]``).

- :mod:`.source` — the event log as a Python streaming data source (offsets = log offsets);
- :mod:`.sink` — ``foreachBatch`` sinks: executors write the Delta files, the driver commits one txn per epoch;
- :mod:`.runner` — the pipeline translated to Spark operators (:class:`SparkPipeline`).

Submodules import pyspark; importing this package does not.
"""
