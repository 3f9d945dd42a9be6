"""A local Spark session for the scale-out engine paths (Structured Streaming and Spark SQL).

pyspark is the optional extra ``headwater[spark]``. This machine reaches no Maven repository,
so nothing here needs a JAR: the log is read through a Python data source and Delta tables are
written with delta-rs (``foreachBatch`` / ``toArrow``), as on a cluster they would be configured
connectors.
"""

from __future__ import annotations

import os
import sys


def session(app_name: str = "headwater", cores: int = 2, shuffle_partitions: int = 2):
    """Return the process's ``SparkSession`` (``local[cores]``, UI off, UTC session time zone).

    Raises ``ImportError`` with the install hint when pyspark is not installed."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the Spark engine needs pyspark: pip install 'headwater[spark]'") from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return (
        SparkSession.builder.master(f"local[{cores}]")
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
