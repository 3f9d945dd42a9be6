"""``headwater maintain``: storage upkeep of the lake — vacuum every written table.

Also run by Dagster's ``maintain`` schedule every ``lake.vacuum_every_h`` hours
(:mod:`headwater.orchestrate.definitions`)."""

from __future__ import annotations

import click

from headwater.cli.options import open_home, setting_option
from headwater.cli.output import emit, format_option


@click.command("maintain")
@setting_option("--retention-h", key="lake.vacuum_retention_h", type=float,
                help="Files superseded longer ago than this many hours are deleted.")
@format_option
def maintain(fmt: str) -> None:
    """Vacuum every written table: delete the Delta files that commits superseded (MERGE,
    OPTIMIZE, overwrites) or that failed writes left, once older than the retention. Time
    travel to versions within the retention keeps working. Prints the files removed per table."""
    from headwater.lake.store import Lake

    home = open_home()
    removed = Lake.of(home).vacuum_all(home.settings.lake.vacuum_retention_h)
    rows = [{"table": t, "files_removed": len(paths), "paths": paths} for t, paths in removed.items()]
    emit(rows, fmt, table=_print)


def _print(rows: list[dict]) -> None:
    """For people: one line per table with its count, then the removed paths, indented."""
    for r in rows:
        click.echo(f"{r['table']:<34} {r['files_removed']:>6} files removed")
        for path in r["paths"]:
            click.echo(f"    {path}")
    click.echo(f"{sum(r['files_removed'] for r in rows)} files removed from {len(rows)} tables")
