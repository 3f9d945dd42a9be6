"""Printing Arrow results as a table, CSV or JSON (``--format table|csv|json``)."""

from __future__ import annotations

import datetime as dt
import decimal
import io
import json
import sys

import pyarrow as pa
import pyarrow.csv as pacsv
from rich.console import Console
from rich.table import Table


def _json_default(value):
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


def to_json(data) -> str:
    return json.dumps(data, default=_json_default)


def print_table(result: pa.Table, fmt: str) -> None:
    """Print ``result``: ``json`` = one JSON array of row objects; ``csv`` with header; ``table``."""
    if fmt == "json":
        sys.stdout.write(to_json(result.to_pylist()) + "\n")
    elif fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(result, buf)
        sys.stdout.write(buf.getvalue().decode())
    else:
        table = Table(*result.column_names)
        for row in result.to_pylist():
            table.add_row(*("" if v is None else str(v) for v in row.values()))
        Console().print(table)
