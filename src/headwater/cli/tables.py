"""``headwater tables``: the table catalog — every declared table, whether it exists, its rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
import pyarrow as pa

from headwater.cli.output import emit, format_option
from headwater.config import Home

if TYPE_CHECKING:  # the lake imports deltalake: only when the command runs
    from headwater.lake.store import Lake

COLUMNS = pa.schema([
    ("name", pa.string()), ("layer", pa.string()), ("partition_by", pa.string()), ("grain", pa.string()),
    ("writer", pa.string()), ("description", pa.string()), ("exists", pa.bool_()), ("rows", pa.int64()),
])


def catalog_rows(lake: Lake) -> pa.Table:
    """One row per declared table (:data:`COLUMNS`), in catalog order. A family
    (``silver.evt_*``) is one row with ``exists`` / ``rows`` null, followed by a row per
    existing member; ``rows`` counts from the Delta log (no data read), null if absent."""
    from headwater.lake import catalog

    existing = lake.tables()
    rows = []
    for spec in catalog.TABLES:
        about = {"layer": spec.layer, "partition_by": ", ".join(spec.partition_by), "grain": spec.grain,
                 "writer": spec.writer, "description": spec.description}
        members = [spec.name]
        if spec.is_family:
            rows.append({"name": spec.name, **about, "exists": None, "rows": None})
            members = [t for t in existing if catalog.spec(t) is spec]
        for name in members:
            present = name in existing
            rows.append({"name": name, **about, "exists": present, "rows": lake.row_count(name) if present else None})
    return pa.Table.from_pylist(rows, schema=COLUMNS)


@click.command("tables")
@format_option
def tables(fmt: str) -> None:
    """List the table catalog: name, layer, partition columns, grain, writer, description,
    whether the table exists and its row count."""
    from headwater.lake.store import Lake

    emit(catalog_rows(Lake.of(Home.from_env())), fmt, table=_print)


def _print(rows: pa.Table) -> None:
    """For people: one line per table (name, rows or state, partitioning, writer, description);
    the grain is in the csv / json output."""
    for r in rows.to_pylist():
        state = "family" if r["exists"] is None else f"{r['rows']:,} rows" if r["exists"] else "not written"
        click.echo(f"{r['name']:<34} {state:>14}  {r['partition_by'] or '-':<3} {r['writer']:<8} {r['description']}")
