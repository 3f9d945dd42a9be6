"""DuckDB → Spark SQL transpilation of the model SQL (pure sqlglot: no engine runs here;
tests/models/test_spark.py runs the outputs on Spark and compares with DuckDB)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest
import sqlglot
from sqlglot.errors import ParseError

from headwater.models import transpile
from headwater.models.dag import MODELS, parameters
from headwater.models.spark import view_name
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
@dataclass(frozen=True)
class FixupCase:
    """A DuckDB statement needing ``fixup``; what sqlglot alone makes of it (wrong), and
    what :func:`to_spark` makes of it. ``rows``: DuckDB's result, which Spark must give
    for the fixed statement (run in tests/models/test_spark.py)."""

    fixup: object
    duckdb: str
    unfixed: str
    fixed: str
    rows: list[tuple]


GENERATE_SERIES = (
    "SELECT CAST(day AS DATE) AS ds "
    "FROM generate_series(DATE '2024-03-01', DATE '2024-03-03', INTERVAL 1 DAY) AS t (day)"
)

FIXUP_CASES = [
    FixupCase(
        transpile.generate_series_table,
        GENERATE_SERIES,
        "SELECT CAST(day AS DATE) AS ds FROM EXPLODE(SEQUENCE(CAST('2024-03-01' AS DATE), "
        "CAST('2024-03-03' AS DATE), INTERVAL '1' DAY), _u(t))",
        "SELECT CAST(day AS DATE) AS ds FROM EXPLODE(SEQUENCE(CAST('2024-03-01' AS DATE), "
        "CAST('2024-03-03' AS DATE), INTERVAL '1' DAY)) AS t(day)",
        [(dt.date(2024, 3, 1),), (dt.date(2024, 3, 2),), (dt.date(2024, 3, 3),)],
    ),
    FixupCase(
        transpile.decimal_division,
        "SELECT 1.0 / 3 AS a, (2 + 0.5) / 4 AS b, 7 / 2 AS c, 1 / 4e0 AS d",
        "SELECT 1.0 / 3 AS a, (2 + 0.5) / 4 AS b, 7 / 2 AS c, 1 / 4e0 AS d",
        "SELECT CAST(1.0 AS DOUBLE) / 3 AS a, CAST((2 + 0.5) AS DOUBLE) / 4 AS b, 7 / 2 AS c, 1 / 4e0 AS d",
        [(1.0 / 3, 0.625, 3.5, 0.25)],
    ),
    FixupCase(
        transpile.integer_cast_of_division,
        "SELECT CAST(5 / 2 AS INT) AS a, CAST(7 / 2 AS INT) AS b, CAST((0 - 7) / 2 AS BIGINT) AS c, "
        "CAST(14 / 7 AS SMALLINT) AS d",
        "SELECT CAST(5 / 2 AS INT) AS a, CAST(7 / 2 AS INT) AS b, CAST((0 - 7) / 2 AS BIGINT) AS c, "
        "CAST(14 / 7 AS SMALLINT) AS d",
        "SELECT CAST(BROUND(5 / 2, 0) AS INT) AS a, CAST(BROUND(7 / 2, 0) AS INT) AS b, "
        "CAST(BROUND((0 - 7) / 2, 0) AS BIGINT) AS c, CAST(BROUND(14 / 7, 0) AS SMALLINT) AS d",
        [(2, 4, -4, 2)],
    ),
    FixupCase(
        transpile.json_path_concat,
        """SELECT k, json_extract_string('{"plan": "pro", "a b": 1}', '$."' || k || '"') AS v """
        """FROM (VALUES ('plan'), ('a b'), ('none')) AS t (k) ORDER BY k""",
        """SELECT k, GET_JSON_OBJECT('{"plan": "pro", "a b": 1}', '$."' || k || '"') AS v """
        """FROM VALUES ('plan'), ('a b'), ('none') AS t(k) ORDER BY k NULLS LAST""",
        """SELECT k, GET_JSON_OBJECT('{"plan": "pro", "a b": 1}', '$[\\'' || k || '\\']') AS v """
        """FROM VALUES ('plan'), ('a b'), ('none') AS t(k) ORDER BY k NULLS LAST""",
        [("a b", "1"), ("none", None), ("plan", "pro")],
    ),
    FixupCase(
        transpile.epoch_us,
        "SELECT epoch_us(TIMESTAMPTZ '2024-03-01 00:00:01.5+00') AS us",
        "SELECT EPOCH_US(CAST('2024-03-01 00:00:01.5+00' AS TIMESTAMP)) AS us",
        "SELECT UNIX_MICROS(CAST('2024-03-01 00:00:01.5+00' AS TIMESTAMP)) AS us",
        [(1709251201500000,)],
    ),
]


@pytest.mark.parametrize("case", FIXUP_CASES, ids=lambda c: c.fixup.__name__)
def test_sqlglot_alone_is_wrong(case):
    assert sqlglot.transpile(case.duckdb, read="duckdb", write="spark")[0] == case.unfixed


@pytest.mark.parametrize("case", FIXUP_CASES, ids=lambda c: c.fixup.__name__)
def test_fixup_output(case):
    assert spark_sql(case.fixup(sqlglot.parse_one(case.duckdb, read="duckdb"))) == case.fixed
    assert to_spark(case.duckdb) == case.fixed  # and to_spark applies it


def test_every_fixup_has_a_case():
    assert [c.fixup for c in FIXUP_CASES] == list(FIXUPS)


def test_decimal_division_leaves_other_operands_alone():
    out = to_spark("SELECT (a + 1) / 2, f(1.5) / 2, x / y, 1.5 * x")
    assert out == "SELECT (a + 1) / 2, F(1.5) / 2, x / y, 1.5 * x"


def test_integer_cast_of_non_division_is_left_alone():
    assert to_spark("SELECT CAST(a AS INT), CAST(a / 2 AS DOUBLE)") == "SELECT CAST(a AS INT), CAST(a / 2 AS DOUBLE)"


def test_json_constant_path_is_left_to_sqlglot():
    out = to_spark("""SELECT json_extract_string(p, '$."a b"'), json_extract_string(p, '$.x')""")
    assert out == "SELECT GET_JSON_OBJECT(p, '$[\\'a b\\']'), GET_JSON_OBJECT(p, '$.x')"


# -- every model transpiles -------------------------------------------------------------------
@pytest.mark.parametrize("model", [m for m in MODELS if m.sql_file], ids=lambda m: m.table)
def test_every_model_transpiles(model):
    sql = model.sql()
    params = parameters(model, sql, D1, D2, lambda table: [D1 - dt.timedelta(days=1), D1])  # states' days
    out = to_spark(sql, params, {t: view_name(t) for t in model.inputs})
    assert not any(f"${name}" in out for name in ("start", "end", "prior", "horizon")) and ":start" not in out and "silver.events" not in out
    sqlglot.parse_one(out, read="spark")  # the output is valid Spark SQL syntax
