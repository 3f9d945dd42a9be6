"""``headwater demo``: the dataset travels SDK → collector → log → stream → bronze → silver → gold.

Prints what happened; exits 0 when every sent event is accounted for (accepted or
rejected by the collector) and the gold table was built. The platform is stopped at the
end; the tables stay queryable with ``headwater query`` under the same ``HEADWATER_HOME``.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from headwater.config import Home
from headwater.demo.replay import load, replay
from headwater.lake import sql
from headwater.lake.store import Lake
from headwater.models.run import build
from headwater.runtime import Platform, free_port
from headwater.serve.status import status


def _offsets(home: Home) -> tuple[int, int, int]:
    """(events in log, bad rows in log, duplicates dropped by the stream so far)."""
    info = status(home)
    ends = {t: sum(p["end_offset"] for p in v["partitions"].values()) for t, v in info["log"].items()}
    dups = (info["stream"] or {}).get("totals", {}).get("duplicates", 0)
    return ends.get("events", 0), ends.get("bad_rows", 0), dups


def _checkout_funnel(home: Home) -> Table:
    """The configured funnels over the whole range, per platform: persons entering and the
    share reaching each step (sums of gold.funnels' daily entry cohorts)."""
    rows = sql.query(
        Lake.of(home),
        """
        SELECT funnel, step, step_name, platform, sum(users) AS users, sum(entered) AS entered
        FROM gold.funnels GROUP BY ALL ORDER BY funnel, step, platform
        """,
    ).to_pylist()
    platforms = sorted({r["platform"] for r in rows})
    table = Table("funnel", "step", *platforms, title="gold.funnels: person-days reaching each step (share of entries)")
    cells: dict[tuple[str, int, str], dict] = {}
    for r in rows:
        cells.setdefault((r["funnel"], r["step"], r["step_name"]), {})[r["platform"]] = r
    for (funnel, step, name), by in cells.items():
        table.add_row(funnel, f"{step} {name}", *(
            f"{by[p]['users']:,} ({by[p]['users'] / by[p]['entered']:.0%})" if p in by else "" for p in platforms
        ))
    return table


def run_demo(home: Home, port: int | None = None) -> int:
    console = Console(stderr=True)
    # A fresh key every run: only its digest is stored, so an earlier run's key is unknown here.
    write_key = home.rotate_key("demo") if any(s.name == "demo" for s in home.sources()) else home.add_source("demo")
    # Setting collector.port only if set (env / headwater.toml): the default 8088 may be taken,
    # and the demo must run on a fresh clone whatever else listens.
    collector = home.settings.collector
    port = port or (collector.port if "port" in collector.model_fields_set else free_port())
    df = load()
    before = _offsets(home)
    started = time.monotonic()

    platform = Platform(home, port)
    with Progress(
        TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        platform.start()
        try:
            send = progress.add_task("SDK → collector (events)", total=len(df))
            result = replay(platform.url, write_key, df, on_sent=lambda n: progress.update(send, completed=n))
            catch_up = progress.add_task("log → bronze (lag, events)", total=None)
            platform.wait_caught_up(on_lag=lambda n: progress.update(catch_up, description=f"log → bronze (lag {n})"))
            progress.update(catch_up, total=1, completed=1)
        finally:
            platform.stop()
        steps = progress.add_task("batch models", total=None)
        counts = build(home, progress=lambda msg: progress.update(steps, description=msg[:28]))
        progress.update(steps, total=1, completed=1, description="batch models")

    after = _offsets(home)
    accepted, rejected, stream_dups = (a - b for a, b in zip(after, before))
    lake = Lake.of(home)
    bronze, silver = lake.row_count("bronze.events"), lake.row_count("silver.events")

    out = Console()
    summary = Table(title=f"headwater demo: {home.root}", show_header=False)
    summary.add_row("events sent (segment-analytics-python)", f"{result.sent:,}")
    summary.add_row("accepted by the collector", f"{accepted:,}")
    summary.add_row("rejected (bronze.bad_rows)", f"{rejected:,}")
    summary.add_row("duplicates dropped by the stream", f"{stream_dups:,}")
    summary.add_row("bronze.events", f"{bronze:,}")
    summary.add_row("silver.events (exactly deduplicated)", f"{silver:,}")
    summary.add_row("gold.active_users (days)", f"{counts.get('gold.active_users', 0):,}")
    summary.add_row("gold.sessions (30-minute gap)", f"{counts.get('gold.sessions', 0):,}")
    summary.add_row("gold.retention (cohort cells)", f"{counts.get('gold.retention', 0):,}")
    summary.add_row("gold.funnels (day × platform × step)", f"{counts.get('gold.funnels', 0):,}")
    summary.add_row("elapsed", f"{time.monotonic() - started:.1f} s")
    out.print(summary)

    metrics = sql.query(
        lake,
        """
        WITH busiest AS (SELECT ds FROM gold.active_users ORDER BY dau DESC, ds LIMIT 1)
        SELECT a.ds, a.dau, a.wau, a.mau, CASE WHEN a.ds IN (SELECT ds FROM busiest) THEN 'busiest day' ELSE '' END AS note
        FROM gold.active_users a
        WHERE a.ds IN (SELECT ds FROM busiest)
           OR a.ds IN (SELECT ds FROM gold.active_users ORDER BY ds LIMIT 3)
           OR a.ds IN (SELECT ds FROM gold.active_users ORDER BY ds DESC LIMIT 3)
        ORDER BY a.ds
        """,
    )
    table = Table("ds", "DAU", "WAU", "MAU", "", title="gold.active_users (trailing 1/7/28 days)")
    for row in metrics.to_pylist():
        table.add_row(str(row["ds"]), str(row["dau"]), str(row["wau"]), str(row["mau"]), row["note"])
    out.print(table)
    out.print(_checkout_funnel(home))
    out.print(f"Query the tables: HEADWATER_HOME={home.root} headwater query \"SELECT * FROM gold.active_users\"")

    if result.failed_batches or accepted + rejected < result.sent:
        console.print(f"[red]{result.sent - accepted - rejected} events were not accepted or rejected by the collector")
        return 1
    return 0
