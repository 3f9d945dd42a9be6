"""The Spark session of the scale-out engine paths (Structured Streaming and Spark SQL).

pyspark is the optional extra ``headwater[spark]``. This machine reaches no Maven repository,
so nothing here needs a JAR: the log is read through a Python data source, and Delta tables
are written by the executors with pyarrow and committed by the driver with delta-rs
(:mod:`headwater.spark_delta`); on a production cluster the same code runs unchanged.

The master is the setting ``spark.master``: ``local[N]`` (threads of this process) or a
cluster (``spark://host:port`` of a standalone cluster, YARN, Kubernetes). The executors run
Python with the same interpreter path as the driver (``PYSPARK_PYTHON``) and must be able to
import headwater — on one machine, this virtual environment.
"""

from __future__ import annotations

import os
import sys


def session(app_name: str = "headwater", cores: int = 2, shuffle_partitions: int = 2, master: str | None = None):
    """Return the process's ``SparkSession`` (UI off, UTC session time zone).

    ``master``: a Spark master URL; default ``local[cores]``. On a cluster ``cores`` is
    ignored (the cluster's executors decide). If a session is already active it is returned
    as it is (Spark allows one per process). Raises ``ImportError`` with the install hint
    when pyspark is not installed."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the Spark engine needs pyspark: pip install 'headwater[spark]'") from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return (
        SparkSession.builder.master(master or f"local[{cores}]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.driver.memory", "2g")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.log.level", "ERROR")
        # Python workers (UDFs, Python data sources) must connect back within this; the 15 s
        # default is exceeded on a loaded 2-core machine while a worker imports pyarrow.
        .config("spark.python.authenticate.socketTimeout", "120s")
        .getOrCreate()
    )
