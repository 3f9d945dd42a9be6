"""Batch layer benchmark: every silver and gold table for one day of generated events, on
DuckDB (the embedded default) and on Spark SQL local[2] (the same model SQL, transpiled).

    uv run python bench/batch.py            # 10,000,000 events (~1M users)
    uv run python bench/batch.py --quick    # 200,000 events

Steps: generate one day into ``bronze.events`` (:mod:`headwater.demo.generate`: sessions,
funnel steps, identifies, aliases, exposures, re-sends), then ``headwater.models.run.build``
for that day with ``engine="duckdb"``, then again with ``engine="spark"`` (which overwrites
the same partitions). The Spark session is started before its clock starts (JVM start-up
is reported apart, ``spark_startup_s``). Python models (identity resolution) run on DuckDB
under both engines. After each build a fingerprint (row count and order-independent hash of
every row) of every built table is taken; ``same_rows`` says whether the engines agree.

Per-model lines go to stderr; the last line of stdout is one JSON object:
``{"bench": "batch", "events": ..., "duckdb_s": ..., "spark_s": ..., "ratio": spark/duckdb, ...}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from headwater.config import Home
from headwater.demo import generate
from headwater.models.dag import MODELS
from headwater.models.run import build
from headwater.lake import sql
from headwater.lake.store import Lake


def fingerprints(home: Home) -> dict[str, list[int]]:
    """``{table: [rows, hash]}`` for every model table: hash = sum of DuckDB row hashes
    (order-independent, modulo 2**64), doubles rounded to 9 decimals first (exp / pow of
    Java and of glibc may differ in the last bit, see tests/models/test_spark_parity.py)."""
    lake = Lake.of(home)
    con = sql.connect(lake)
    try:
        out = {}
        for model in MODELS:
            sql.register(con, lake, model.table)
            cols = ", ".join(f"round({f.name}, 9)" if pa.types.is_floating(f.type) else f.name for f in model.schema)
            n, h = con.sql(
                f"SELECT count(*), sum(hash(row({cols})))::HUGEINT % 18446744073709551616 FROM {model.table}"
            ).fetchall()[0]
            out[model.table] = [int(n), int(h or 0)]
        return out
    finally:
        con.close()


def timed_build(home: Home, day: dt.date, engine: str) -> float:
    def progress(line: str) -> None:
        print(f"  [{engine}] {line}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    build(home, day, day, progress=progress, engine=engine)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 events instead of 10,000,000")
    parser.add_argument("--events", type=int, default=None, help="events to generate (overrides --quick)")
    parser.add_argument("--day", type=dt.date.fromisoformat, default=dt.date(2024, 3, 1))
    parser.add_argument("--engines", default="duckdb,spark", help="comma-separated, in run order (default duckdb,spark)")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary home (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the home directory afterwards")
    args = parser.parse_args()
    events = args.events or (200_000 if args.quick else 10_000_000)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"duckdb", "spark"}:
        parser.error(f"--engines: expected duckdb and/or spark, got {args.engines!r}")

    root = Path(tempfile.mkdtemp(prefix="headwater-bench-batch-", dir=args.dir))
    home = Home(root)
    figures: dict[str, object] = {"bench": "batch", "events": events, "day": args.day.isoformat()}
    prints: dict[str, dict[str, list[int]]] = {}
    try:
        (root / "models.toml").write_text(generate.MODELS_TOML)
        t0 = time.perf_counter()
        figures["bronze_rows"] = generate.write_day(home, events, args.day)
        figures["generate_s"] = round(time.perf_counter() - t0, 2)
        print(f"generated {figures['bronze_rows']} bronze rows in {figures['generate_s']} s", file=sys.stderr)
        for engine in engines:
            if engine == "spark":
                from headwater.spark import session

                t0 = time.perf_counter()
                session("headwater-bench-batch").sql("SELECT 1").collect()
                figures["spark_startup_s"] = round(time.perf_counter() - t0, 2)
            figures[f"{engine}_s"] = round(timed_build(home, args.day, engine), 2)
            prints[engine] = fingerprints(home)
        if "spark" in engines:
            from headwater.spark import session

            session().stop()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    if len(prints) == 2:
        figures["ratio"] = round(figures["spark_s"] / figures["duckdb_s"], 2)
        figures["differing"] = sorted(t for t in prints["duckdb"] if prints["duckdb"][t] != prints["spark"][t])
        figures["same_rows"] = not figures["differing"]
    if "duckdb_s" in figures:
        figures["duckdb_under_60s"] = figures["duckdb_s"] < 60
    figures["rows"] = {t: v[0] for t, v in next(iter(prints.values())).items()}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
