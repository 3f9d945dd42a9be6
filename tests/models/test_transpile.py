"""DuckDB → Spark SQL transpilation of the model SQL (pure sqlglot: no engine runs here;
tests/models/test_spark.py runs the outputs on Spark and compares with DuckDB)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlglot
from sqlglot.errors import ParseError

from headwater.models import transpile
from headwater.models.run import MODELS
from headwater.models.transpile import FIXUPS, bind, literal, rename_tables, to_spark

D1 = dt.date(2024, 3, 1)
D2 = dt.date(2024, 3, 7)


def spark_sql(tree) -> str:
    return tree.sql(dialect="spark")


# -- parameters ---------------------------------------------------------------------------
def test_dates_bind_as_typed_date_literals():
    out = to_spark("SELECT $start - 27 AS a, $end AS b", {"start": D1, "end": D2})
    assert out == "SELECT CAST('2024-03-01' AS DATE) - 27 AS a, CAST('2024-03-07' AS DATE) AS b"


def test_datetime_binds_as_utc_timestamp_literal():
    cet = dt.timezone(dt.timedelta(hours=1))
    out = to_spark("SELECT $t AS t", {"t": dt.datetime(2024, 3, 1, 1, 30, tzinfo=cet)})
    assert out == "SELECT CAST('2024-03-01 00:30:00' AS TIMESTAMP) AS t"


@pytest.mark.parametrize(
    ("value", "sql"),
    [(7, "7"), (2.5, "2.5"), ("it's", "'it\\'s'"), (True, "TRUE"), (None, "NULL")],
)
def test_plain_literals(value, sql):
    assert spark_sql(literal(value)) == sql


def test_naive_datetime_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        literal(dt.datetime(2024, 3, 1))


def test_unsupported_parameter_type_is_refused():
    with pytest.raises(TypeError, match="unsupported type list"):
        literal([1, 2])


def test_missing_parameter_names_it():
    with pytest.raises(ValueError, match=r"parameter \$end: no value given"):
        to_spark("SELECT * FROM t WHERE ds BETWEEN $start AND $end", {"start": D1})


def test_positional_parameter_is_refused():
    with pytest.raises(ValueError, match=r"parameter \$\?"):
        bind(sqlglot.parse_one("SELECT ?", read="duckdb"), {"start": D1})


def test_one_statement_only():
    with pytest.raises(ValueError, match="exactly one statement, got 2"):
        to_spark("SELECT 1; SELECT 2")


def test_invalid_sql_raises_parse_error():
    with pytest.raises(ParseError):
        to_spark("SELECT FROM WHERE (")


# -- catalog names --------------------------------------------------------------------------
def test_tables_renamed_to_views_keeping_short_name_as_alias():
    tree = sqlglot.parse_one(
        "WITH x AS (SELECT * FROM silver.events AS s) SELECT events.ds FROM bronze.events JOIN x USING (ds)",
        read="duckdb",
    )
    out = spark_sql(rename_tables(tree, {"bronze.events": "bronze__events", "silver.events": "silver__events"}))
    assert out == (
        "WITH x AS (SELECT * FROM silver__events AS s) "
        "SELECT events.ds FROM bronze__events AS events JOIN x USING (ds)"
    )


def test_tables_not_mapped_are_left_alone():
    tree = sqlglot.parse_one("SELECT * FROM gold.other", read="duckdb")
    assert spark_sql(rename_tables(tree, {"bronze.events": "bronze__events"})) == "SELECT * FROM gold.other"


# -- fix-ups: each shows that sqlglot alone is wrong, and what the fix-up makes of it -------
GENERATE_SERIES = (
    "SELECT CAST(day AS DATE) AS ds "
    "FROM generate_series(DATE '2024-03-01', DATE '2024-03-03', INTERVAL 1 DAY) AS t (day)"
)


def test_generate_series_table_is_wrong_without_fixup():
    assert sqlglot.transpile(GENERATE_SERIES, read="duckdb", write="spark")[0] == (
        "SELECT CAST(day AS DATE) AS ds FROM EXPLODE(SEQUENCE(CAST('2024-03-01' AS DATE), "
        "CAST('2024-03-03' AS DATE), INTERVAL '1' DAY), _u(t))"
    )


def test_generate_series_table_fixup():
    tree = transpile.generate_series_table(sqlglot.parse_one(GENERATE_SERIES, read="duckdb"))
    assert spark_sql(tree) == (
        "SELECT CAST(day AS DATE) AS ds FROM EXPLODE(SEQUENCE(CAST('2024-03-01' AS DATE), "
        "CAST('2024-03-03' AS DATE), INTERVAL '1' DAY)) AS t(day)"
    )


def test_every_fixup_is_applied_by_to_spark():
    assert FIXUPS == (transpile.generate_series_table,)
    assert to_spark(GENERATE_SERIES).endswith("AS t(day)")


# -- every model transpiles -------------------------------------------------------------------
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.table)
def test_every_model_transpiles(model):
    out = to_spark(model.sql(), {"start": D1, "end": D2}, {t: t.replace(".", "__") for t in ("bronze.events",)})
    assert "$start" not in out and ":start" not in out
    sqlglot.parse_one(out, read="spark")  # the output is valid Spark SQL syntax
