"""``headwater.spark.session``: the Spark configuration derived from the settings — the master
of ``spark.master`` and, for an ``s3://`` lake, Hadoop S3A's properties from ``lake.s3_*``.

The hadoop-aws jar is not on this machine, so no S3A read runs here: the builder's options
are captured instead of starting a session. And the import policy that goes with Spark:
the `headwater` program keeps pandas out until a Spark session starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pyspark.sql import SparkSession

from headwater import spark
from headwater.settings import load

S3A = "spark.hadoop.fs.s3a."


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)


def built(monkeypatch, settings) -> dict[str, str]:
    """The options :func:`headwater.spark.session` gives the builder (no JVM starts)."""
    monkeypatch.setattr(SparkSession.Builder, "getOrCreate", lambda builder: dict(builder._options))
    return spark.session(settings=settings)


def test_an_s3_lake_on_a_compatible_store_configures_s3a(tmp_path, monkeypatch):
    settings = load(home=tmp_path, **{
        "lake.root": "s3://lake/prefix", "lake.s3_endpoint": "http://127.0.0.1:9000", "lake.s3_region": "eu-west-1",
        "lake.s3_access_key_id": "AKIDEXAMPLE", "lake.s3_secret_access_key": "s3cr3t-value", "spark.master": "spark://10.0.0.5:7077",
    })
    options = built(monkeypatch, settings)
    assert options["spark.master"] == "spark://10.0.0.5:7077"
    assert {k: v for k, v in options.items() if k.startswith(S3A)} == {
        S3A + "impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
        S3A + "endpoint": "http://127.0.0.1:9000",
        S3A + "path.style.access": "true",
        S3A + "connection.ssl.enabled": "false",
        S3A + "endpoint.region": "eu-west-1",
        S3A + "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        S3A + "access.key": "AKIDEXAMPLE",
        S3A + "secret.key": "s3cr3t-value",
    }
    # Spark redacts these keys in its UI and event logs (default spark.redaction.regex).
    assert all(k.endswith(("access.key", "secret.key")) for k, v in options.items() if v in ("AKIDEXAMPLE", "s3cr3t-value"))


def test_aws_s3_with_the_credential_chain_sets_only_what_is_given(tmp_path, monkeypatch):
    """No endpoint: AWS S3 itself (virtual-host style, TLS); no keys: S3A's default chain."""
    options = built(monkeypatch, load(home=tmp_path, **{"lake.root": "s3://lake"}))
    assert {k: v for k, v in options.items() if k.startswith(S3A)} == {S3A + "impl": "org.apache.hadoop.fs.s3a.S3AFileSystem"}


def test_an_https_endpoint_from_the_aws_variable_keeps_tls(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.internal:9000")
    s3a = spark.s3a_conf(load(home=tmp_path, **{"lake.root": "s3a://lake", "lake.s3_access_key_id": "AKIDEXAMPLE"}))
    assert s3a[S3A + "endpoint"] == "https://minio.internal:9000"
    assert s3a[S3A + "connection.ssl.enabled"] == "true"
    assert S3A + "access.key" not in s3a  # a key id without its secret: the chain decides


def test_a_local_lake_has_no_s3a_settings_and_the_default_master(tmp_path, monkeypatch):
    settings = load(home=tmp_path)
    assert spark.s3a_conf(settings) == {}
    options = built(monkeypatch, settings)
    assert options["spark.master"] == "local[2]"
    assert not any(k.startswith(S3A) for k in options)
    assert built(monkeypatch, None)["spark.master"] == "local[2]"  # no settings: local[cores]


def test_the_spark_extra_brings_pandas_which_map_in_arrow_requires():
    """The Spark engines write Delta through ``DataFrame.mapInArrow``, which pyspark builds on
    ``pandas_udf``: without pandas it raises before any row moves. ``headwater[spark]`` must
    therefore install pyspark's ``sql`` extra (pandas, pyarrow), not bare pyspark."""
    from importlib.metadata import requires

    spark_extra = [r for r in requires("headwater") or [] if r.replace('"', "'").endswith("extra == 'spark'")]
    assert [r for r in spark_extra if r.startswith("pyspark[sql]")], spark_extra


# Runs the ``headwater`` program's entry (headwater.cli.main.main) with argv, then reports
# whether pandas was loaded and what importing it now gives.
AFTER_THE_COMMAND = """
import atexit, sys

def report():
    loaded = "pandas" in sys.modules
    try:
        import pandas  # noqa: F401
        now = "imported"
    except ModuleNotFoundError as e:
        now = str(e)
    print(f"loaded={loaded} now={now}", file=sys.stderr)

atexit.register(report)
if sys.argv[1] == "--spark-session":  # what headwater.spark.session does first, without a JVM
    from headwater import spark
    spark.defer_pandas()
    spark._allow_pandas()
else:
    from headwater.cli.main import main
    main()
"""


def test_the_headwater_program_keeps_pandas_out_and_a_spark_session_lets_it_in(tmp_path):
    """pandas is installed here (the dev group), and pyarrow would import it on its first
    conversion of a value; a real command (a query converting rows to Arrow and JSON) runs
    without it, and an import of it names the rule. Before a Spark session it is importable
    again (the Spark CLI tests run the whole path: tests/cli/test_stream_spark.py)."""
    env = {**os.environ, "HEADWATER_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", AFTER_THE_COMMAND, "query", "SELECT [1, 2] AS a, now() AS t", "--format", "json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert '"a": [1, 2]' in run.stdout
    assert "loaded=False now=No module named 'pandas': headwater loads pandas only with a Spark session" in run.stderr
    lifted = subprocess.run([sys.executable, "-c", AFTER_THE_COMMAND, "--spark-session"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert "loaded=False now=imported" in lifted.stderr, lifted.stderr
