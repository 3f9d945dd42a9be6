"""What the CLI prints: one ``--format table|csv|json`` option (:func:`format_option`) for
every command that prints data, and one printer (:func:`emit`) for the three shapes of data
it prints: an Arrow table, a list of row dicts, or a document (a dict, possibly nested).

``json``: JSON-native values: numbers, ISO-8601 times and dates, durations and intervals in
seconds (a month counts 30 days, as DuckDB's ``epoch()``), nested values as JSON; a table
or row list is one array of row objects, a document one object.
``csv``: a header line, then one line per row; a document is flattened into ``key,value``
rows (``log.events.lag,0``), nested row values are JSON text.
``table`` (default, for people): a table whose durations are written with their units
(``2 h 5 min``); a document is a ``key  value`` table unless the command renders it itself.
"""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import sys
from collections.abc import Callable
from typing import Any

import click
import pyarrow as pa
import pyarrow.csv as pacsv
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "csv", "json")
FORMAT_HELP = (
    "Output: table (for people), csv or json (for scripts: numbers, ISO-8601 times, "
    "durations in seconds)."
)

Data = pa.Table | list[dict[str, Any]] | dict[str, Any]


def format_option(f):
    """The ``--format`` option of every command that prints data (parameter ``fmt``)."""
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True, help=FORMAT_HELP)(f)


# -- values ---------------------------------------------------------------------------------
def _seconds(value: pa.MonthDayNano) -> float:
    months, days, ns = value
    return (months * 30 + days) * 86_400 + ns / 1e9


def plain(value: Any) -> Any:
    """``value`` with JSON-native leaves: ISO strings for times, seconds (float) for
    durations and intervals, numbers for decimals, text for bytes (recursive)."""
    if isinstance(value, pa.MonthDayNano):  # a tuple subclass: json would print a list
        return _seconds(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def to_json(data: Any) -> str:
    """``data`` as one line of JSON (see :func:`plain`); an Arrow table as its row list."""
    if isinstance(data, pa.Table):
        data = data.to_pylist()
    return json.dumps(plain(data))


def human_duration(seconds: float | None) -> str:
    """``seconds`` with units for people: ``0.25 s``, ``42.0 s``, ``5 min 3 s``,
    ``2 h 5 min``, ``10386 d 12 h``; ``-`` for ``None``."""
    if seconds is None:
        return "-"
    sign, s = ("-" if seconds < 0 else ""), abs(seconds)
    if s < 60:
        return f"{sign}{s:.2f} s" if s < 1 else f"{sign}{s:.1f} s"
    minutes, sec = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{sign}{days} d {hours} h"
    if hours:
        return f"{sign}{hours} h {minutes} min"
    return f"{sign}{minutes} min {sec} s"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, pa.MonthDayNano):
        return human_duration(_seconds(value))
    if isinstance(value, dt.timedelta):
        return human_duration(value.total_seconds())
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(plain(value))
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    return str(value)


# -- shapes ---------------------------------------------------------------------------------
def flatten(doc: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """A nested document as ``{"key": "a.b", "value": leaf}`` rows: dicts are walked, and
    lists of dicts by index (``runs.0.id``); a list of plain values is one leaf."""
    rows: list[dict[str, Any]] = []
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            rows += flatten(v, f"{key}.")
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):
            rows += flatten(dict(enumerate(v)), f"{key}.")
        else:
            rows.append({"key": key, "value": v})
    return rows


def _rows(data: Data) -> tuple[list[str], list[dict[str, Any]]]:
    if isinstance(data, pa.Table):
        return data.column_names, data.to_pylist()
    if isinstance(data, dict):
        return ["key", "value"], flatten(data)
    return (list(data[0]) if data else []), data


def _csv_column(array: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column Arrow's CSV writer can write: intervals as seconds, nested values as JSON."""
    t = array.type
    if pa.types.is_interval(t) or pa.types.is_nested(t):
        return pa.chunked_array([pa.array([None if v is None else (plain(v) if pa.types.is_interval(t) else json.dumps(plain(v)))
                                           for v in array.to_pylist()])])
    return array


def _write_csv(data: Data) -> None:
    if isinstance(data, pa.Table):
        table = pa.table({n: _csv_column(c) for n, c in zip(data.column_names, data.columns)}) if data.num_columns else data
    else:
        names, rows = _rows(data)
        cells = [{n: (json.dumps(plain(r.get(n))) if isinstance(r.get(n), (dict, list)) else plain(r.get(n))) for n in names} for r in rows]
        if isinstance(data, dict):  # one value column of mixed types: its text
            cells = [{"key": c["key"], "value": None if c["value"] is None else _text(c["value"])} for c in cells]
        table = pa.Table.from_pylist(cells) if cells else pa.table({n: pa.array([], pa.string()) for n in names})
    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    sys.stdout.write(buf.getvalue().decode())


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (bool, dict, list)) else str(value)


def print_rows(names: list[str], rows: list[dict[str, Any]], title: str | None = None) -> None:
    """A rich table of ``rows`` (columns ``names``) on stdout, durations with units."""
    table = Table(*names, title=title)
    for row in rows:
        table.add_row(*(_cell(row.get(n)) for n in names))
    # On a terminal rich fits the table to its width; into a pipe or file, cells are not
    # wrapped or cut at 80 columns: the table is as wide as its content.
    Console(width=None if sys.stdout.isatty() else 100_000).print(table)


def emit(data: Data, fmt: str, table: Callable[[Any], None] | None = None) -> None:
    """Print ``data`` in ``fmt`` (see the module docstring). ``table``: the command's own
    rendering for people, called with ``data`` when ``fmt`` is ``table``."""
    if fmt == "json":
        sys.stdout.write(to_json(data) + "\n")
    elif fmt == "csv":
        _write_csv(data)
    elif table is not None:
        table(data)
    else:
        print_rows(*_rows(data))
