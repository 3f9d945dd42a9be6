"""Model SQL from DuckDB to Spark SQL: sqlglot, then a short list of explicit fix-ups.

The batch models (:mod:`headwater.models.run`) are written once, in DuckDB's dialect, with
the prepared parameters ``$start`` / ``$end`` and catalog names ``<layer>.<name>``.
:func:`to_spark` turns one model into a statement Spark SQL runs with the same meaning:

1. parse with sqlglot (``read="duckdb"``);
2. bind the parameters as typed literals (a ``datetime.date`` becomes ``DATE '2024-03-01'``,
   never an untyped string, so ``$start - 27`` stays date arithmetic on both engines);
3. apply :data:`FIXUPS`, the rewrites for constructs sqlglot transpiles wrongly (each is a
   function below with the wrong and the right output in its comment, and a test);
4. rename catalog tables to the Spark temporary views that hold them (Spark has no
   schema-qualified temporary views), keeping the short name as alias so ``events.col``
   still resolves;
5. generate Spark SQL (``write="spark"``; sqlglot already makes DuckDB's NULL ordering
   explicit, turns ``QUALIFY`` into a subquery, ``arg_max`` into ``max_by``, …).

A fix-up rewrites the sqlglot tree *before* generation, in DuckDB terms, into an equivalent
form that sqlglot does transpile right. When a sqlglot upgrade fixes a case, its test in
``tests/models/test_transpile.py`` (which checks the unfixed output is still wrong) fails,
and the fix-up can go.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

import sqlglot
from sqlglot import exp

from headwater.errors import InvalidInputError

Fixup = Callable[[exp.Expression], exp.Expression]


def literal(value: object) -> exp.Expression:
    """A typed SQL literal for a parameter value.

    ``date`` → ``DATE 'YYYY-MM-DD'``; ``datetime`` (must be timezone-aware) →
    ``TIMESTAMP '… UTC'`` normalised to UTC (both engines run with session time zone UTC);
    ``bool``, ``int``, ``float``, ``str`` and ``None`` → the plain literal.
    Raises ``TypeError`` for any other type and ``ValueError`` for a naive ``datetime``."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise InvalidInputError(f"parameter value {value!r}: a datetime must be timezone-aware (UTC)")
        text = value.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(sep=" ")
        return exp.cast(exp.Literal.string(text), exp.DataType.build("TIMESTAMP"))
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), exp.DataType.build("DATE"))
    if value is None or isinstance(value, (bool, int, float, str)):
        return exp.convert(value)
    raise TypeError(f"parameter value {value!r}: unsupported type {type(value).__name__}")


def bind(tree: exp.Expression, params: Mapping[str, object]) -> exp.Expression:
    """Replace every named placeholder ``$name`` by :func:`literal` of ``params[name]``.

    Raises ``ValueError`` naming a placeholder without a value (positional ``?`` / ``$1``
    placeholders are refused the same way: models use named parameters only)."""

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            name = node.name
            if not name or name not in params:
                raise InvalidInputError(f"parameter ${name or '?'}: no value given (have {sorted(params)})")
            return literal(params[name])
        return node

    return tree.transform(replace)


# -- fix-ups ------------------------------------------------------------------------------
def generate_series_table(tree: exp.Expression) -> exp.Expression:
    """``generate_series(...)`` used as a table with a column alias.

    DuckDB:  ``FROM generate_series(DATE '2024-01-01', DATE '2024-01-03', INTERVAL 1 DAY) AS t (day)``
    sqlglot: ``FROM EXPLODE(SEQUENCE(...), _u(t))``          — wrong: the alias becomes a
             second argument, Spark fails with ``UNRESOLVED_ROUTINE `_u```
    fixed:   ``FROM EXPLODE(SEQUENCE(...)) AS t(day)``      — Spark's table-valued generator.

    The fix wraps the series in ``unnest(...)`` first (the same rows in DuckDB), which sqlglot
    transpiles with the alias intact. The step is kept, so dates step by days on both engines
    (DuckDB yields timestamps, Spark dates: models cast the column, as ``CAST(day AS DATE)``)."""

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and isinstance(node.this, exp.GenerateSeries):
            return exp.Unnest(expressions=[node.this.copy()], alias=node.args.get("alias"))
        return node

    return tree.transform(replace)


def decimal_division(tree: exp.Expression) -> exp.Expression:
    """Division by or of a decimal literal.

    DuckDB:  ``1.0 / 3`` is ``DOUBLE`` 0.3333333333333333 (any ``/`` with a DECIMAL operand
             gives DOUBLE)
    sqlglot: ``1.0 / 3``                      — wrong: Spark divides ``decimal(2,1)`` by
             ``int`` in decimal arithmetic and rounds to scale 6: ``0.333333``
    fixed:   ``CAST(1.0 AS DOUBLE) / 3``      — ``DOUBLE`` division, as in DuckDB.

    Models write literals like ``1.0 / n`` and ``x / 1000000.0`` for floating division; the
    columns they divide are integers or doubles, never decimals, so decimal literals (alone
    or in arithmetic such as ``(n + 0.5) / 2``) are the only decimal operands: such an
    operand is cast to DOUBLE, as DuckDB does. ``1e6`` literals are DOUBLE on both engines."""
    arithmetic = (exp.Add, exp.Sub, exp.Mul, exp.Neg, exp.Paren)

    def decimal(node: exp.Expression) -> bool:
        if isinstance(node, exp.Literal):
            return not node.is_string and "." in node.this and "e" not in node.this.lower()
        return isinstance(node, arithmetic) and any(decimal(child) for child in node.iter_expressions())

    def as_double(node: exp.Expression) -> exp.Expression:
        return exp.cast(node.copy(), exp.DataType.build("DOUBLE")) if decimal(node) else node

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Div):
            node.set("this", as_double(node.this))
            node.set("expression", as_double(node.expression))
        return node

    return tree.transform(replace)


def integer_cast_of_division(tree: exp.Expression) -> exp.Expression:
    """A ``/`` quotient (DOUBLE on both engines) cast to an integer type.

    DuckDB:  ``CAST(5 / 2 AS INT)`` is ``2`` and ``CAST(7 / 2 AS INT)`` is ``4``: DuckDB rounds
             a DOUBLE to the nearest integer, ties to even
    sqlglot: ``CAST(5 / 2 AS INT)``             — wrong: Spark truncates toward zero (2, 3)
    fixed:   ``CAST(BROUND(5 / 2, 0) AS INT)``  — Spark's ``bround`` rounds half to even.

    (``retention.sql`` casts week differences ``days / 7``; they are whole there, the fix-up
    keeps any other quotient right.)"""
    integers = {exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT, exp.DataType.Type.BIGINT}

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Cast) and node.to.this in integers:
            inner = node.this.unnest() if isinstance(node.this, exp.Paren) else node.this
            if isinstance(inner, exp.Div):
                rounded = exp.Anonymous(this="BROUND", expressions=[inner.copy(), exp.Literal.number(0)])
                return exp.Cast(this=rounded, to=node.to.copy())
        return node

    return tree.transform(replace)


def json_path_concat(tree: exp.Expression) -> exp.Expression:
    """A JSON path built by string concatenation, with a quoted key.

    DuckDB:  ``json_extract_string(p, '$."' || trait || '"')`` — the key ``trait`` quoted, so
             any name (spaces, dots) works
    sqlglot: ``GET_JSON_OBJECT(p, '$."' || trait || '"')``  — wrong: Spark's JSON path has
             no quoted keys and returns NULL for every row
    fixed:   ``GET_JSON_OBJECT(p, '$[\'' || trait || '\']')`` — Spark's bracket notation.

    sqlglot already converts constant paths (``'$."a b"'`` → ``'$[\'a b\']'``); a
    concatenation is opaque to it. In the concatenation's string pieces ``."`` opens a key
    (→ ``['``) and any other ``"`` closes one (→ ``']``). Keys holding ``'`` are not
    supported by Spark's bracket notation."""

    def pieces(node: exp.Expression) -> list[exp.Expression]:
        if isinstance(node, exp.DPipe):
            return pieces(node.this) + pieces(node.expression)
        return [node]

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, (exp.JSONExtract, exp.JSONExtractScalar)) and isinstance(node.expression, exp.DPipe):
            for piece in pieces(node.expression):
                if isinstance(piece, exp.Literal) and piece.is_string:
                    piece.set("this", piece.this.replace('."', "['").replace('"', "']"))
        return node

    return tree.transform(replace)


def epoch_us(tree: exp.Expression) -> exp.Expression:
    """Microseconds since the epoch of a timestamp.

    DuckDB:  ``epoch_us(ts)`` — a BIGINT read off the stored value (``date_diff('microsecond',
             …)`` on a TIMESTAMPTZ goes through the ICU calendar: three per session were
             ~12 % of ``gold.sessions``' DuckDB time at 2M events)
    sqlglot: ``EPOCH_US(ts)``     — wrong: Spark has no such function
    fixed:   ``UNIX_MICROS(ts)`` — Spark's (sqlglot parses DuckDB's name as an unknown function)."""

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.lower() == "epoch_us" and len(node.expressions) == 1:
            return exp.UnixMicros(this=node.expressions[0].copy())
        return node

    return tree.transform(replace)


FIXUPS: tuple[Fixup, ...] = (generate_series_table, decimal_division, integer_cast_of_division, json_path_concat, epoch_us)
"""The fix-ups :func:`to_spark` applies, in order (each one's docstring shows wrong and right)."""


def rename_tables(tree: exp.Expression, views: Mapping[str, str]) -> exp.Expression:
    """Point every table ``layer.name`` in ``views`` at the view ``views["layer.name"]``.

    An unaliased reference keeps its short name as alias (``FROM bronze.events`` becomes
    ``FROM bronze__events AS events``), so columns qualified as ``events.x`` still resolve.
    CTE names and tables not in ``views`` are left alone."""

    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and node.db and not node.catalog:
            view = views.get(f"{node.db}.{node.name}")
            if view is not None:
                alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
                return exp.Table(this=exp.to_identifier(view), alias=alias.copy())
        return node

    return tree.transform(replace)


def to_spark(
    sql: str,
    params: Mapping[str, object] | None = None,
    views: Mapping[str, str] | None = None,
    *,
    pretty: bool = False,
) -> str:
    """Spark SQL for one DuckDB statement ``sql``.

    ``params`` bind the ``$name`` placeholders (see :func:`literal` for the types);
    ``views`` maps catalog names (``"bronze.events"``) to the Spark temporary views that
    hold them (see :func:`rename_tables`). Comments are dropped.

    Raises ``sqlglot.errors.ParseError`` if ``sql`` is not valid DuckDB SQL, ``ValueError``
    if it holds more than one statement or a placeholder has no value, ``TypeError`` for an
    unsupported parameter type."""
    statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    if len(statements) != 1:
        raise InvalidInputError(f"sql: expected exactly one statement, got {len(statements)}")
    tree = bind(statements[0], params or {})
    for fixup in FIXUPS:
        tree = fixup(tree)
    tree = rename_tables(tree, views or {})
    return tree.sql(dialect="spark", pretty=pretty, comments=False)
