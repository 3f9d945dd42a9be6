"""``headwater maintain``: storage upkeep of the lake — retention, compaction, clustering, vacuum.

What it does per table and when is :func:`headwater.lake.maintenance.maintain`. Dagster's
``maintain`` schedule vacuums every ``lake.vacuum_every_h`` hours
(:mod:`headwater.orchestrate.definitions`)."""

from __future__ import annotations

import datetime as dt

import click

from headwater.cli.options import open_home, setting_option
from headwater.cli.output import emit, format_option



@click.command("maintain")
@setting_option("--retention-h", key="lake.vacuum_retention_h", type=float,
                help="Files superseded longer ago than this many hours are deleted.")
@setting_option("--min-files", key="lake.compact_min_files", type=int,
                help="A partition holding this many small files is compacted.")
@setting_option("--realtime-retention-days", key="lake.realtime_retention_days", type=float,
                help="realtime.* windows that ended longer ago than this many days are deleted.")
@format_option
def maintain(fmt: str) -> None:
    """Upkeep of every table, each step its own commit:

    \b
    1. retention: delete the realtime.* windows older than lake.realtime_retention_days;
    2. clustering: rewrite each closed day of silver.events changed since it was last
       clustered, sorted by (event_name, person_id);
    3. compaction: merge the small files of every partition holding lake.compact_min_files
       of them (the stream does the same for the tables it writes, after its batches);
    4. vacuum: delete the files that commits superseded (MERGE, OPTIMIZE, overwrites) or
       failed writes left, once older than lake.vacuum_retention_h. Time travel to versions
       within it keeps working.

    Prints per table the data files before and after, rows deleted, partitions compacted
    and clustered, and the files vacuumed. Safe while the stream runs."""
    from headwater.lake.maintenance import CLUSTER_STATE, ClusterState
    from headwater.lake.maintenance import maintain as upkeep
    from headwater.lake.store import Lake

    home = open_home()
    state = ClusterState(home.root / CLUSTER_STATE)
    done = upkeep(Lake.of(home), home.settings.lake, dt.datetime.now(dt.timezone.utc), state)
    rows = [
        {"table": r.table, "files_before": r.files_before, "files_after": r.files_after, "rows_deleted": r.rows_deleted,
         "partitions_compacted": r.partitions_compacted, "partitions_clustered": r.partitions_clustered,
         "files_vacuumed": r.files_vacuumed, "paths": r.paths}
        for r in done
    ]
    emit(rows, fmt, table=_print)


def _print(rows: list[dict]) -> None:
    """For people: one line per table with its figures, then the vacuumed paths, indented."""
    for r in rows:
        click.echo(
            f"{r['table']:<34} files {r['files_before']:>6} -> {r['files_after']:<6} {r['rows_deleted']:>8} rows deleted "
            f"{r['partitions_compacted']:>4} compacted {r['partitions_clustered']:>4} clustered {r['files_vacuumed']:>6} files vacuumed"
        )
        for path in r["paths"]:
            click.echo(f"    {path}")
    click.echo(f"{sum(r['files_vacuumed'] for r in rows)} files vacuumed, "
               f"{sum(r['rows_deleted'] for r in rows)} rows deleted in {len(rows)} tables")
