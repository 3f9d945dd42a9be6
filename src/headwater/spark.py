"""The Spark session of the scale-out engine paths (Structured Streaming and Spark SQL).

pyspark is the optional extra ``headwater[spark]``. This machine reaches no Maven repository,
so nothing here needs a JAR: the log is read through a Python data source, and Delta tables
are written by the executors with pyarrow and committed by the driver with delta-rs
(:mod:`headwater.spark_delta`); on a production cluster the same code runs unchanged.

The master is the setting ``spark.master``: ``local[N]`` (threads of this process) or a
cluster (``spark://host:port`` of a standalone cluster, YARN, Kubernetes). The executors run
Python with the same interpreter path as the driver (``PYSPARK_PYTHON``) and must be able to
import headwater — on one machine, this virtual environment.

An ``s3://`` lake (setting ``lake.root``): the executors write through pyarrow and the driver
commits with delta-rs, neither of which needs Hadoop; but the Spark SQL models read their
inputs' files through Hadoop's S3A connector (``s3a://`` URIs), configured here from the same
``lake.s3_*`` settings (:func:`s3a_conf`). The connector's jar (``hadoop-aws`` matching the
Spark build's Hadoop) must be deployed with Spark: docs/object-storage.md.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from headwater.settings import Settings

# Hadoop S3A (hadoop-aws) properties, https://hadoop.apache.org/docs/stable/hadoop-aws/tools/hadoop-aws/index.html
S3A = "spark.hadoop.fs.s3a."
S3_SCHEMES = ("s3://", "s3a://")  # as headwater.lake.objectstore, which this layer may not import


def s3a_conf(settings: Settings) -> dict[str, str]:
    """Spark configuration for Hadoop's S3A connector reaching an ``s3://`` lake root, from
    the ``lake.s3_*`` settings (the ones delta-rs and pyarrow use, :mod:`headwater.lake.objectstore`);
    ``{}`` for any other root.

    ``fs.s3a.impl`` always; with an endpoint (``lake.s3_endpoint`` or ``AWS_ENDPOINT_URL[_S3]``:
    an S3-compatible store) ``fs.s3a.endpoint``, ``fs.s3a.path.style.access=true`` (MinIO,
    Ceph and moto serve buckets as paths) and ``fs.s3a.connection.ssl.enabled`` true unless the
    endpoint is ``http://``; ``fs.s3a.endpoint.region`` with ``lake.s3_region``; with both
    keys set, ``fs.s3a.access.key`` / ``fs.s3a.secret.key`` and the provider reading them
    (``SimpleAWSCredentialsProvider``), else S3A's default chain (variables, profile, instance
    role). The values may hold secrets: Spark redacts ``*.access.key`` / ``*.secret.key`` in
    its UI and logs (``spark.redaction.regex``); never log this dict."""
    if not settings.lake_root.startswith(S3_SCHEMES):
        return {}
    lake = settings.lake
    conf = {S3A + "impl": "org.apache.hadoop.fs.s3a.S3AFileSystem"}
    endpoint = settings.lake_s3_endpoint
    if endpoint:
        conf[S3A + "endpoint"] = endpoint
        conf[S3A + "path.style.access"] = "true"
        conf[S3A + "connection.ssl.enabled"] = "false" if endpoint.startswith("http://") else "true"
    if lake.s3_region:
        conf[S3A + "endpoint.region"] = lake.s3_region
    if lake.s3_access_key_id is not None and lake.s3_secret_access_key is not None:
        conf[S3A + "aws.credentials.provider"] = "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
        conf[S3A + "access.key"] = lake.s3_access_key_id.get_secret_value()
        conf[S3A + "secret.key"] = lake.s3_secret_access_key.get_secret_value()
    return conf


class _PandasOnlyWithSpark(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that makes ``pandas`` unimportable (:func:`defer_pandas`)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if fullname.partition(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {fullname!r}: headwater loads pandas only with a Spark "
                                      "session (headwater.spark.defer_pandas)", name=fullname)
        return None


def defer_pandas() -> None:
    """Keep pandas out of this process until it starts a Spark session (:func:`session`).

    Why: pyarrow imports pandas, when it is installed, on its first conversion of any value
    (``pa.array([1])``; pyarrow's ``pandas-shim.pxi``), and pandas is installed wherever Spark
    is (``headwater[spark]``, the dev group). Measured here (load 0.7): 1.2-1.7 s of a
    collector's 2.8-3.5 s start and 44 MB of its 176 MB resident; alike in every stream and
    CLI process, none of which uses pandas. Only pyspark needs it (``DataFrame.mapInArrow`` goes
    through ``pandas_udf``), and :func:`session` lets it in again. pyarrow, DuckDB, polars and
    delta-rs run without it. No effect once pandas is imported. Call it at a program's entry
    (the ``headwater`` command), not in a library: the host process's imports are its own."""
    if "pandas" not in sys.modules and not any(isinstance(f, _PandasOnlyWithSpark) for f in sys.meta_path):
        sys.meta_path.insert(0, _PandasOnlyWithSpark())


def _allow_pandas() -> None:
    """Undo :func:`defer_pandas` (pyarrow finds pandas again on its first call that needs it)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _PandasOnlyWithSpark)]


def session(app_name: str = "headwater", cores: int = 2, shuffle_partitions: int = 2, master: str | None = None,
            settings: Settings | None = None):
    """Return the process's ``SparkSession`` (UI off, UTC session time zone).

    ``master``: a Spark master URL; default the setting ``spark.master`` of ``settings``, else
    ``local[cores]``. On a cluster ``cores`` is ignored (the cluster's executors decide).
    ``settings``: also configure S3A for an ``s3://`` lake (:func:`s3a_conf`). If a session is
    already active it is returned (Spark allows one per process). Raises ``ImportError`` with
    the install hint when pyspark is not installed."""
    _allow_pandas()
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError("the Spark engine needs pyspark: pip install 'headwater[spark]'") from e
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    master = master or (settings.spark.master if settings is not None else f"local[{cores}]")
    return (
        SparkSession.builder.master(master)
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
        .config(map=s3a_conf(settings) if settings is not None else {})
        .getOrCreate()
    )
