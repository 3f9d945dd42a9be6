"""``headwater backfill``: build silver and gold for a ds range through Dagster.

Unlike ``headwater batch`` (the direct path), every model run goes through the Dagster
definitions of :mod:`headwater.orchestrate` and is recorded in the home's Dagster instance
(``<HEADWATER_HOME>/dagster``): the runs, their materialised partitions and asset check
results show in the Dagster UI (``headwater up``), tagged ``headwater/backfill=<id>``.
"""

from __future__ import annotations

import datetime as dt
import time

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from headwater.cli.options import check_range, date_range, engine_option, open_home
from headwater.cli.output import emit, format_option
from headwater.config import Home
from headwater.errors import HeadwaterError, NotFoundError


@click.command()
@date_range
@engine_option
@format_option
def backfill(start: dt.date | None, end: dt.date | None, fmt: str) -> None:
    """Backfill silver and gold for a ds range as recorded Dagster runs (partitions overwritten).

    Every model is rebuilt so that it is correct on [start, end]: inputs read with a
    lookback or over all history are rebuilt for those days too. Prints a summary (backfill
    id, range, run ids, rows per table); exits 1 naming the failed step if a run fails."""
    from headwater.lake.store import Lake
    from headwater.models.dag import dag
    from headwater.models.run import run_model
    from headwater.orchestrate.assets import first_ds
    from headwater.orchestrate.definitions import definitions
    from headwater.orchestrate.instance import instance
    from headwater.orchestrate.runs import backfill_requests, execute, failure_message

    check_range(start, end)
    home = open_home()
    first = first_ds(home)
    bounds = Lake.of(home).ds_range("bronze.events")
    if bounds is None:
        raise NotFoundError("bronze.events has no rows: nothing to backfill", field="bronze.events")
    start_day, end_day = start, end
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    models = dag(home)  # the one DAG `headwater batch` builds too
    task = progress.add_task("backfill", total=len(models))
    rows: dict[str, int] = {}

    def runner(home: Home, model, s: dt.date, e: dt.date) -> int:
        span = f"{s}..{e}" if model.partitioned else "(whole table)"
        progress.update(task, description=f"{model.table} {span}")
        rows[model.table] = run_model(home, model, s, e)
        progress.advance(task)
        return rows[model.table]

    defs = definitions(home, models=models, runner=runner)
    last_key = defs.resolve_job_def("daily").partitions_def.get_last_partition_key()
    # Days that can be built: bronze's days that are daily partitions (a day's partition
    # exists once the day is over, UTC; partitions start at setting batch.first_ds or bronze's first ds).
    floor = max(bounds[0], first)
    ceiling = min(bounds[1], dt.date.fromisoformat(last_key)) if last_key else None
    start_day, end_day = max(start_day or floor, floor), min(end_day or bounds[1], ceiling or bounds[1])
    if ceiling is None or start_day > end_day:
        raise NotFoundError(
            f"nothing to backfill in {start or floor}..{end or bounds[1]}: "
            f"bronze has {bounds[0]}..{bounds[1]}, daily partitions run from {first} to "
            f"{last_key or 'none yet'} (a day's partition exists once the day is over, UTC)"
        )
    for given, used, name in ((start, start_day, "--start"), (end, end_day, "--end")):
        if given and given != used:
            console.print(f"{name} {given}: no data or partition beyond {used}; using {used}")
    runs = []
    with instance(home) as inst, progress:
        for s, e, group, request in backfill_requests(models, start_day, end_day, floor, ceiling):
            t0 = time.perf_counter()
            result = execute(defs, inst, request)
            runs.append(result.run_id)
            tables = ", ".join(m.table for m in group)
            if not result.success:
                raise HeadwaterError(f"run {result.run_id} ({tables} {s}..{e}) failed:\n{failure_message(result)}")
            progress.console.print(f"run {result.run_id[:8]}  {s}..{e}  {tables}  {time.perf_counter() - t0:.1f} s")
        progress.update(task, description=f"backfill {start_day}..{end_day}")
    backfill_id = request.tags["headwater/backfill"]
    console.print(f"backfill {backfill_id}: {len(runs)} runs recorded in {home.root / 'dagster'}")
    emit({"backfill": backfill_id, "start": start_day, "end": end_day, "runs": runs, "rows": rows}, fmt)
