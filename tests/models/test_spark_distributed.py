"""The batch models on a Spark standalone cluster (master + 2 workers, separate processes:
the ``spark_cluster`` fixture) equal DuckDB's tables for the same input.

The executors write every SQL model's files into its table; the driver — a process of its
own, pointed at the cluster by the setting ``spark.master`` (``HEADWATER_SPARK_MASTER``) —
only commits their add actions. Input, comparison and tolerances are the parity test's
(:mod:`tests.models.test_spark_parity`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from headwater.config import Home
from headwater.models.dag import MODELS
from headwater.models.run import build
from tests.models.test_spark_parity import END, START, assert_same, bronze, copy, sorted_table  # noqa: F401 - bronze: fixture


def drive_build(spark, home: str) -> dict:
    """Driver (run by ``SparkCluster.drive``): ``build(engine="spark")`` as ``headwater batch``
    runs it; the session comes from the setting ``spark.master`` (the cluster)."""
    h = Home(Path(home))
    assert h.settings.spark.master == spark.sparkContext.master
    t0 = time.perf_counter()
    written = build(h, START, END, engine="spark")
    return {"seconds": time.perf_counter() - t0, "written": written,
            "executors": spark.sparkContext._jsc.sc().getExecutorIds().size()}


@pytest.mark.slow
def test_models_on_the_cluster_equal_duckdb(bronze, spark_cluster, tmp_path):  # noqa: F811 - the fixture
    duck = copy(bronze, tmp_path / "duckdb")
    t0 = time.perf_counter()
    build(duck, START, END, engine="duckdb")
    duck_s = time.perf_counter() - t0
    sparked = copy(bronze, tmp_path / "spark")
    run = spark_cluster.drive("tests.models.test_spark_distributed:drive_build", home=str(sparked.root))
    assert run.returncode == 0, run.output[-4000:]
    assert run.result["executors"] == 2
    print(f"\nbuild {START}..{END}: DuckDB {duck_s:.1f} s; Spark cluster {run.result['seconds']:.1f} s "
          f"(driver process {run.seconds:.1f} s), {sum(run.result['written'].values())} rows")
    for model in MODELS:
        d = sorted_table(duck, model.table, model.schema)
        s = sorted_table(sparked, model.table, model.schema)
        if model.sql_file is not None:
            assert d.num_rows > 0, f"{model.table}: empty, the comparison would prove nothing"
        assert_same(model.table, d, s)
