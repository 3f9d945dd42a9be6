"""Pre-aggregation vs compute on read: DAU / WAU / MAU of one day, read from the gold table
or computed from ``silver.events`` at query time.

    uv run python bench/serving.py            # 28 days x 100,000 events
    uv run python bench/serving.py --quick    # 28 days x 10,000 events

Steps: generate ``--days`` days into ``bronze.events`` (:mod:`headwater.demo.generate`, the
same user population every day), build every silver and gold table on DuckDB
(:func:`headwater.models.run.build`, the build time of ``gold.active_users`` alone is
``gold_build_s``), then time, ``--reads`` times each, one request as the serving layer makes
it — a fresh DuckDB connection over one long-lived :class:`~headwater.lake.store.Lake`
(:func:`headwater.lake.sql.query`), so the cost of registering the tables a query names is
included:

- **pre-aggregated** (the peer): ``SELECT dau, wau, mau FROM gold.active_users WHERE ds = D``;
- **on read**: the same figures as ``count(DISTINCT person_id)`` over the trailing 1 / 7 / 28
  days of ``silver.events`` (the definition of ``gold/active_users.sql``).

Both must give the same numbers (``same_result``). ``ratio = on_read_ms / preagg_ms`` (median
latencies); ``break_even_reads = gold_build_s / (on_read - preagg)``: how many reads of the
day pay for building its gold partition. The last line of stdout is one JSON object.
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

from headwater.config import Home
from headwater.demo import generate
from headwater.lake import sql
from headwater.lake.store import Lake
from headwater.models.run import build

PREAGG = "SELECT dau, wau, mau FROM gold.active_users WHERE ds = $d"
ON_READ = """
SELECT count(DISTINCT person_id) FILTER (WHERE ds = CAST($d AS DATE))      AS dau,
       count(DISTINCT person_id) FILTER (WHERE ds >= CAST($d AS DATE) - 6)  AS wau,
       count(DISTINCT person_id)                                            AS mau
FROM silver.events
WHERE ds BETWEEN CAST($d AS DATE) - 27 AND CAST($d AS DATE) AND person_id IS NOT NULL
"""


def timed(lake: Lake, text: str, day: dt.date, reads: int) -> tuple[float, list]:
    """Median latency (ms) of ``reads`` requests, and the result of the last one."""
    times, rows = [], None
    for _ in range(reads):
        t0 = time.perf_counter()
        rows = sql.query(lake, text, {"d": day}).to_pylist()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="10,000 events a day instead of 100,000")
    ap.add_argument("--events-per-day", type=int, default=None)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--reads", type=int, default=20)
    args = ap.parse_args()
    per_day = args.events_per_day or (10_000 if args.quick else 100_000)
    first = dt.date(2024, 3, 1)
    last = first + dt.timedelta(days=args.days - 1)

    root = Path(tempfile.mkdtemp(prefix="headwater-bench-serving-"))
    figures: dict = {"bench": "serving", "days": args.days, "events_per_day": per_day}
    try:
        home = Home(root)
        (root / "models.toml").write_text(generate.MODELS_TOML)
        users = max(per_day // 10, 100)  # the same population every day: WAU / MAU > DAU
        figures["bronze_rows"] = sum(
            generate.write_day(home, per_day, first + dt.timedelta(days=i), seed=i, users=users) for i in range(args.days)
        )
        gold_s: dict[str, float] = {}

        def progress(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
            if line.startswith("gold.active_users "):
                gold_s["s"] = float(line.rsplit(" in ", 1)[1].split()[0])

        t0 = time.perf_counter()
        build(home, first, last, progress=progress, engine="duckdb")
        figures["build_all_s"] = round(time.perf_counter() - t0, 2)
        figures["gold_build_s"] = gold_s.get("s")

        lake = Lake.of(home)  # one per process, as a server keeps it: snapshots are reused
        preagg_ms, pre_rows = timed(lake, PREAGG, last, args.reads)
        on_read_ms, read_rows = timed(lake, ON_READ, last, args.reads)
        figures.update(
            preagg_ms=round(preagg_ms, 2),
            on_read_ms=round(on_read_ms, 2),
            ratio=round(on_read_ms / preagg_ms, 1),
            same_result=pre_rows == read_rows,
            result=pre_rows[0] if pre_rows else None,
        )
        if figures["gold_build_s"] is not None and on_read_ms > preagg_ms:
            figures["break_even_reads"] = round(figures["gold_build_s"] * 1000 / (on_read_ms - preagg_ms), 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
