"""The Spark SQL engine of the batch models: reading Delta snapshots, fix-ups run for real,
writes and their failure paths (real local Spark, real Delta tables, no mocks)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from click.testing import CliRunner
from deltalake import DeltaTable, write_deltalake

from headwater.cli.main import cli
from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.lake import catalog
from headwater.lake.catalog import TableSpec
from headwater.lake.store import Lake
from headwater.models import spark as engine
from headwater.models.dag import Model
from headwater.models.run import run_model
from headwater.models.transpile import to_spark
from tests.helpers import query
from tests.models.test_transpile import FIXUP_CASES

D = dt.date


class InlineModel(Model):
    """A model whose SQL is given inline (the real models read theirs from the package)."""

    def __init__(self, table: str, text: str, inputs: tuple[str, ...] = ("gold.src",)):
        super().__init__(table, inputs)
        object.__setattr__(self, "text", text)

    def sql(self, home: Home | None = None) -> str:
        return self.text


SRC_SCHEMA = pa.schema([pa.field("ds", pa.date32(), nullable=False), pa.field("n", pa.int64())])
OUT_SCHEMA = pa.schema([pa.field("ds", pa.date32(), nullable=False), pa.field("total", pa.int64(), nullable=False)])
SUM_SQL = "SELECT ds, sum(n) AS total FROM gold.src WHERE ds BETWEEN $start AND $end GROUP BY ds"


@pytest.fixture(autouse=True)
def declared(monkeypatch):
    """The test tables gold.src and gold.out (and gold.absent, never written), declared in
    the catalog for the test."""
    specs = tuple(TableSpec(name, schema, ("ds",), "one row per ds", "batch", "test table")
                  for name, schema in (("gold.src", SRC_SCHEMA), ("gold.out", OUT_SCHEMA), ("gold.absent", SRC_SCHEMA)))
    monkeypatch.setattr(catalog, "TABLES", catalog.TABLES + specs)


def src_rows(days: dict[dt.date, list[int]]) -> pa.Table:
    return pa.table(
        {"ds": [d for d, ns in days.items() for _ in ns], "n": [n for ns in days.values() for n in ns]},
        schema=SRC_SCHEMA,
    )


@pytest.fixture
def home(tmp_path) -> Home:
    """A home with gold.src: ds 2024-03-01 (n 1, 2), 2024-03-02 (n 10), and 2024-03-01
    overwritten once (so the log holds a removed file Spark must not read)."""
    h = Home(tmp_path)
    lake = Lake.of(h)
    lake.overwrite_partitions("gold.src", src_rows({D(2024, 3, 1): [5, 5, 5], D(2024, 3, 2): [10]}), D(2024, 3, 1), D(2024, 3, 2))
    lake.overwrite_partitions("gold.src", src_rows({D(2024, 3, 1): [1, 2]}), D(2024, 3, 1), D(2024, 3, 1))
    return h


def table_rows(home: Home, table: str) -> list[dict]:
    return query(home, f"SELECT * FROM {table} ORDER BY ALL").to_pylist()


def version(home: Home, table: str) -> int:
    return Lake.of(home).version(table)


# -- reading Delta snapshots ----------------------------------------------------------------
def test_register_reads_current_snapshot_with_partition_values(spark, home):
    view = engine.register(spark, Lake.of(home), "gold.src")
    assert view == "gold__src"
    rows = spark.sql(f"SELECT ds, n FROM {view} ORDER BY ds, n").collect()
    assert [(r.ds, r.n) for r in rows] == [(D(2024, 3, 1), 1), (D(2024, 3, 1), 2), (D(2024, 3, 2), 10)]
    assert dict(spark.table(view).dtypes) == {"ds": "date", "n": "bigint"}


def test_register_empty_table(spark, tmp_path):
    lake = Lake.of(Home(tmp_path))
    write_deltalake(lake.uri("gold.src"), src_rows({}), partition_by=["ds"])
    assert spark.sql(f"SELECT count(*) AS c FROM {engine.register(spark, lake, 'gold.src')}").first().c == 0


def test_register_missing_table_names_it(spark, tmp_path):
    with pytest.raises(NotFoundError, match="gold.absent: no Delta table"):
        engine.register(spark, Lake.of(Home(tmp_path)), "gold.absent")


def test_register_refuses_deletion_vectors(spark, tmp_path):
    lake = Lake.of(Home(tmp_path))
    write_deltalake(
        lake.uri("gold.src"), src_rows({D(2024, 3, 1): [1]}), partition_by=["ds"],
        configuration={"delta.enableDeletionVectors": "true"},
    )
    with pytest.raises(InvalidInputError, match="reader features .*deletionVectors.* cannot be read by the Spark engine"):
        engine.register(spark, lake, "gold.src")


def test_register_refuses_file_outside_its_partition_directory(spark, home):
    # A log whose partition value disagrees with the file's directory: Spark would take the
    # value from the path, so the engine refuses rather than return the wrong ds.
    log = sorted((Path(Lake.of(home).uri("gold.src")) / "_delta_log").glob("*.json"))[-1]
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for action in lines:
        if "add" in action:
            action["add"]["partitionValues"]["ds"] = "2024-03-09"
    log.write_text("\n".join(json.dumps(a) for a in lines) + "\n")
    with pytest.raises(InvalidInputError, match=r"file 'ds=2024-03-01/.*\.parquet' is not under ds=2024-03-09"):
        engine.register(spark, Lake.of(home), "gold.src")


# -- fix-ups, run on both engines -----------------------------------------------------------
@pytest.mark.parametrize("case", FIXUP_CASES, ids=lambda c: c.fixup.__name__)
def test_fixup_gives_duckdbs_rows_on_spark(spark, case):
    assert duckdb.sql(case.duckdb).fetchall() == case.rows
    assert [tuple(r) for r in spark.sql(to_spark(case.duckdb)).collect()] == case.rows


@pytest.mark.parametrize("case", FIXUP_CASES, ids=lambda c: c.fixup.__name__)
def test_without_fixup_spark_is_wrong(spark, case):
    from pyspark.errors import AnalysisException

    try:
        rows = [tuple(r) for r in spark.sql(case.unfixed).collect()]
    except AnalysisException:
        return  # fails outright
    assert rows != case.rows


# -- running models -------------------------------------------------------------------------
def run_spark(home: Home, model: Model, start: dt.date, end: dt.date) -> int:
    return run_model(home, model, start, end, engine="spark")


def test_run_spark_writes_partitions_like_duckdb(spark, home):
    model = InlineModel("gold.out", SUM_SQL)
    setting = "spark.sql.parquet.outputTimestampType"
    before = spark.conf.get(setting)
    assert run_spark(home, model, D(2024, 3, 1), D(2024, 3, 2)) == 2
    assert spark.conf.get(setting) == before  # the shared session's settings are restored
    assert table_rows(home, "gold.out") == [{"ds": D(2024, 3, 1), "total": 3}, {"ds": D(2024, 3, 2), "total": 10}]
    # input day 2 changes; re-running day 2 overwrites that partition only, in one commit
    Lake.of(home).overwrite_partitions("gold.src", src_rows({D(2024, 3, 2): [7]}), D(2024, 3, 2), D(2024, 3, 2))
    before_version = version(home, "gold.out")
    assert run_spark(home, model, D(2024, 3, 2), D(2024, 3, 2)) == 1
    out = DeltaTable(Lake.of(home).uri("gold.out"))
    assert out.version() == before_version + 1 and out.history(1)[0]["operation"] == "WRITE"
    assert table_rows(home, "gold.out") == [{"ds": D(2024, 3, 1), "total": 3}, {"ds": D(2024, 3, 2), "total": 7}]
    assert pa.schema(out.schema().to_arrow()).equals(OUT_SCHEMA)
    assert not (home.root / "tmp").exists()  # no staging: the executors write into the table


def test_run_spark_empty_result_empties_the_range(spark, home):
    model = InlineModel("gold.out", SUM_SQL)
    run_spark(home, model, D(2024, 3, 1), D(2024, 3, 2))
    assert run_spark(home, model, D(2024, 3, 5), D(2024, 3, 6)) == 0
    empty = InlineModel("gold.out", SUM_SQL.replace("sum(n)", "sum(n) FILTER (WHERE n > 99)").replace(
        "GROUP BY ds", "GROUP BY ds HAVING total IS NOT NULL"))
    assert run_spark(home, empty, D(2024, 3, 2), D(2024, 3, 2)) == 0
    assert table_rows(home, "gold.out") == [{"ds": D(2024, 3, 1), "total": 3}]


def test_run_spark_missing_column_leaves_table_unchanged(spark, home):
    model = InlineModel("gold.out", SUM_SQL)
    run_spark(home, model, D(2024, 3, 1), D(2024, 3, 2))
    bad = InlineModel("gold.out", SUM_SQL.replace("AS total", "AS sum_n"))
    with pytest.raises(InvalidInputError, match=r"result lacks columns \['total'\] of gold.out"):
        run_spark(home, bad, D(2024, 3, 1), D(2024, 3, 2))
    assert version(home, "gold.out") == 0


def test_run_spark_null_in_required_column_commits_nothing(spark, home):
    run_spark(home, InlineModel("gold.out", SUM_SQL), D(2024, 3, 1), D(2024, 3, 2))
    bad = InlineModel("gold.out", SUM_SQL.replace("sum(n)", "CAST(NULL AS BIGINT)"))
    with pytest.raises(InvalidInputError, match="total"):
        run_spark(home, bad, D(2024, 3, 1), D(2024, 3, 2))
    assert version(home, "gold.out") == 0


def test_run_spark_rows_outside_range_are_refused(spark, home):
    leaky = InlineModel("gold.out", SUM_SQL.replace("WHERE ds BETWEEN $start AND $end", ""))
    with pytest.raises(InvalidInputError):
        run_spark(home, leaky, D(2024, 3, 2), D(2024, 3, 2))
    assert not Lake.of(home).exists("gold.out")


def test_run_spark_missing_input_and_bad_range(spark, home):
    model = InlineModel("gold.out", SUM_SQL.replace("gold.src", "gold.absent"), ("gold.absent",))
    with pytest.raises(NotFoundError, match="gold.absent"):
        run_spark(home, model, D(2024, 3, 1), D(2024, 3, 1))
    with pytest.raises(InvalidInputError, match="is after end"):
        run_spark(home, model, D(2024, 3, 2), D(2024, 3, 1))


def test_run_spark_sql_error_is_sparks(spark, home):
    from pyspark.errors import AnalysisException

    model = InlineModel("gold.out", SUM_SQL.replace("sum(n)", "sum(no_such_column)"))
    with pytest.raises(InvalidInputError, match="no_such_column") as e:
        run_spark(home, model, D(2024, 3, 1), D(2024, 3, 1))
    assert isinstance(e.value.__cause__, AnalysisException)


# -- engine selection -----------------------------------------------------------------------
def test_engine_comes_from_the_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_ENGINE", "spark")
    assert Home(tmp_path).settings.batch.engine == "spark"
    monkeypatch.delenv("HEADWATER_ENGINE")
    assert Home(tmp_path).settings.batch.engine == "duckdb"


def test_cli_batch_refuses_unknown_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path))
    runner = CliRunner()
    bad = runner.invoke(cli, ["batch", "--engine", "flink"])
    assert bad.exit_code == 2 and "'flink' is not one of 'duckdb', 'spark'" in bad.output
    monkeypatch.setenv("HEADWATER_ENGINE", "flink")
    bad = runner.invoke(cli, ["batch"])
    assert bad.exit_code == 2 and "batch.engine: Input should be 'duckdb' or 'spark' (got 'flink', from env HEADWATER_ENGINE)" in bad.output
