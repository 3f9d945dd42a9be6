"""Clustering benchmark: a selective query (one event name, one day) on ``silver.events`` as
the batch writes it, then after ``headwater maintain`` has clustered the day (sorted by
event_name, person_id: :mod:`headwater.lake.maintenance`).

    uv run python bench/cluster.py            # 10,000,000 events
    uv run python bench/cluster.py --quick    # 200,000 events

Steps: generate one day into ``bronze.events`` (:mod:`headwater.demo.generate`), build
``silver.identity_map`` and ``silver.events`` for it (DuckDB), run the query through the
lake's SQL catalog (:mod:`headwater.lake.sql`, DuckDB over the Delta snapshot, as the API
does) ``--repeat`` times warm and take the median, cluster the day with
:func:`headwater.lake.maintenance.maintain` (the day is closed: "now" is the next day), and
query again. Pruning is read from the metadata the readers use: files whose Delta log
statistics admit the event name, row groups whose Parquet statistics do.

Progress goes to stderr; the last line of stdout is one JSON object:
``{"bench": "cluster", "events": ..., "before": {...}, "after": {...}, "speedup": before_ms / after_ms,
"rows_read_ratio": before / after, ...}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from headwater.config import Home
from headwater.demo import generate
from headwater.lake import sql
from headwater.lake.maintenance import ClusterState, maintain
from headwater.lake.store import Lake
from headwater.models.dag import MODELS
from headwater.models.run import run_model

TABLE = "silver.events"


def layout(lake: Lake, day: dt.date, name: str) -> dict[str, int]:
    """Files, row groups and rows of ``day``'s partition, and how many of each the statistics
    cannot rule out for ``event_name = name`` (what a reader has to open and decode)."""
    adds = lake.add_actions(TABLE).to_pylist()
    files = [a for a in adds if a["partition.ds"] == day]
    admit = [a for a in files if a["min.event_name"] is not None and a["min.event_name"] <= name <= a["max.event_name"]]
    groups = groups_read = rows = rows_read = 0
    root = Path(lake.uri(TABLE))
    for a in files:
        meta = pq.ParquetFile(root / a["path"]).metadata
        col = meta.schema.names.index("event_name")
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(col).statistics
            read = a in admit and stats.has_min_max and stats.min <= name <= stats.max
            n = meta.row_group(g).num_rows
            groups, groups_read, rows, rows_read = groups + 1, groups_read + read, rows + n, rows_read + n * read
    return {"files": len(files), "files_read": len(admit), "row_groups": groups, "row_groups_read": groups_read,
            "rows": rows, "rows_read": rows_read}


def query(lake: Lake, day: dt.date, name: str, repeat: int) -> tuple[float, list]:
    """Median ms of the selective query over ``repeat`` warm runs, and its result."""
    con = sql.connect(lake)
    try:
        sql.register(con, lake, TABLE)
        text = f"SELECT count(*) AS events, count(DISTINCT person_id) AS persons FROM {TABLE} WHERE ds = $day AND event_name = $name"
        result = con.sql(text, params={"day": day, "name": name}).fetchall()  # warm-up
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            con.sql(text, params={"day": day, "name": name}).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(times), 2), result
    finally:
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 events instead of 10,000,000")
    parser.add_argument("--events", type=int, default=None, help="events to generate (overrides --quick)")
    parser.add_argument("--day", type=dt.date.fromisoformat, default=dt.date(2024, 3, 1))
    parser.add_argument("--event", default="purchase", help="the event name the query selects (default purchase)")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs of the query, each way (median reported)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary home (default: system temp)")
    args = parser.parse_args()
    events = args.events or (200_000 if args.quick else 10_000_000)

    root = Path(tempfile.mkdtemp(prefix="headwater-bench-cluster-", dir=args.dir))
    home = Home(root)
    lake = Lake.of(home)
    figures: dict[str, object] = {"bench": "cluster", "events": events, "day": args.day.isoformat(), "event_name": args.event}
    try:
        (root / "models.toml").write_text(generate.MODELS_TOML)
        generate.write_day(home, events, args.day)
        t0 = time.perf_counter()
        for model in MODELS:
            if model.table in ("silver.identity_map", TABLE):
                run_model(home, model, args.day, args.day)
        figures["silver_rows"] = lake.row_count(TABLE)
        print(f"silver.events: {figures['silver_rows']} rows built in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        before = layout(lake, args.day, args.event)
        before["ms"], result = query(lake, args.day, args.event, args.repeat)
        print(f"before: {before}", file=sys.stderr)
        t0 = time.perf_counter()
        now = dt.datetime.combine(args.day + dt.timedelta(days=1), dt.time(12), dt.timezone.utc)
        done = maintain(lake, home.settings.lake, now, ClusterState(None), tables=[TABLE])
        figures["cluster_s"] = round(time.perf_counter() - t0, 2)
        after = layout(lake, args.day, args.event)
        after["ms"], result_after = query(lake, args.day, args.event, args.repeat)
        print(f"after ({done[0].partitions_clustered} day clustered in {figures['cluster_s']} s): {after}", file=sys.stderr)
        figures["result"] = {"events": result[0][0], "persons": result[0][1]}
        figures["same_result"] = result == result_after
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["before"], figures["after"] = before, after
    figures["speedup"] = round(before["ms"] / after["ms"], 2)
    figures["rows_read_ratio"] = round(before["rows_read"] / max(after["rows_read"], 1), 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
