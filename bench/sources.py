"""File import throughput: ``headwater import`` of a CSV and a Parquet export, beside DuckDB.

    uv run python bench/sources.py [--quick] [--rows N]

Generates an N-row export (default 5,000,000; ``--quick`` 200,000) in a temp dir — user id,
anonymous id, event name, ISO timestamp (CSV) / timestamp (Parquet), three property columns
— and times, in the same run:

- ``duckdb``: DuckDB's own ``read_csv`` / ``read_parquet`` of the file, every column, drained
  as Arrow record batches (the reader alone: the floor of any DuckDB-based import);
- ``bulk``: :func:`headwater.sources.files.import_file` ``mode="bulk"`` into a fresh home —
  read, map, validate, derive event ids, tokenise ids (HMAC), contracts, PII policy, dedup
  against bronze, Parquet written by two worker threads, and one Delta commit per chunk
  (at most 500,000 rows: :func:`headwater.sources.bulk.chunk_size`) into ``bronze.events`` (the
  path history takes; the restatement that ``headwater import`` runs after it is the batch
  build, measured by bench/batch.py);
- ``live``: the same into the event log (Arrow IPC, durable SQLite appends), for reference:
  the stream processor still has to take those events to bronze.

``ratio = bulk_rows_per_s / duckdb_rows_per_s`` per format: the share of DuckDB's read speed
left after the platform's work. Target: bulk ≥ 1,000,000 rows/s. Also printed: CPU seconds per
million rows (all threads), which a busy machine distorts less than rows/s. The last line of
stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import duckdb

from headwater.config import Home
from headwater.runtime import use_allocator
from headwater.sources.files import import_file
from headwater.sources.mapping import Mapping

TARGET = 1_000_000  # bulk import rows/s, issue 13


def generate(dir_: Path, rows: int) -> tuple[Path, Path]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(
        f"""
        CREATE TABLE export AS
        SELECT
            'user-' || (hash(i) % 50000) AS user_id,
            'anon-' || (hash(i) % 50000) || '-' || (i % 3) AS anonymous_id,  -- ~3 devices per user
            (['Page Viewed', 'Product Viewed', 'Product Added', 'Checkout Started', 'Order Completed', 'Signed Up'])[1 + i % 6] AS event,
            TIMESTAMPTZ '2024-01-01 00:00:00+00' + to_microseconds(i * 3_100_000) AS ts,
            round((hash(i * 13) % 20000) / 100.0, 2) AS price,
            'SKU-' || (i % 5000) AS sku,
            (['web', 'ios', 'android'])[1 + i % 3] AS device
        FROM range({rows}) t(i)
        """
    )
    csv, parquet = dir_ / "export.csv", dir_ / "export.parquet"
    con.execute(f"COPY (SELECT * REPLACE (strftime(ts, '%Y-%m-%dT%H:%M:%S.%fZ') AS ts) FROM export) TO '{csv}' (HEADER)")
    con.execute(f"COPY export TO '{parquet}' (FORMAT parquet)")
    con.close()
    return csv, parquet


def duckdb_read(path: Path, fmt: str) -> tuple[float, float]:
    """``(rows/s, CPU seconds per million rows)`` of DuckDB reading ``path``."""
    con = duckdb.connect()
    t0, c0 = time.perf_counter(), time.process_time()
    reader = con.sql(f"SELECT * FROM read_{fmt}('{path}')").to_arrow_reader(200_000)
    n = sum(b.num_rows for b in reader)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    con.close()
    return n / elapsed, cpu / n * 1e6


def headwater_import(path: Path, home_dir: Path, mode: str) -> tuple[float, float]:
    """``(rows/s, CPU seconds per million rows)`` of importing ``path`` (CPU of every thread of
    this process: DuckDB's, delta-rs' and Python's — a figure a busy machine inflates less)."""
    home = Home(home_dir)
    mapping = Mapping(timestamp="ts", user_id="user_id", anonymous_id="anonymous_id", event="event")
    t0, c0 = time.perf_counter(), time.process_time()
    counts = import_file(home, path, mapping, source="bench", mode=mode)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if counts.accepted != counts.rows:
        raise SystemExit(f"{path.name}: {counts.as_dict()} (every generated row is valid)")
    return counts.accepted / elapsed, cpu / counts.accepted * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200,000 rows (CI-sized)")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    use_allocator()  # the Arrow memory pool of the `headwater` CLI, which runs `headwater import`
    rows = args.rows or (200_000 if args.quick else 5_000_000)
    result: dict = {"bench": "sources", "rows": rows}
    with tempfile.TemporaryDirectory(prefix="hw-bench-sources-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        csv, parquet = generate(tmp, rows)
        print(f"generated {rows:,} rows in {time.perf_counter() - t0:.1f} s: csv {csv.stat().st_size / 1e6:.0f} MB, parquet {parquet.stat().st_size / 1e6:.0f} MB", file=sys.stderr)
        # Warm-up: one-time imports of the first query (pyarrow/DuckDB load pandas lazily, ~1-5 s).
        (tmp / "warm.csv").write_text("user_id,anonymous_id,event,ts\nu,a,E,2024-01-01T00:00:00Z\n")
        for mode in ("bulk", "live"):
            headwater_import(tmp / "warm.csv", tmp / f"home-warm-{mode}", mode)
        for fmt, path in (("csv", csv), ("parquet", parquet)):
            base, base_cpu = duckdb_read(path, fmt)
            bulk, bulk_cpu = headwater_import(path, tmp / f"home-bulk-{fmt}", "bulk")
            live, _ = headwater_import(path, tmp / f"home-live-{fmt}", "live")
            result[f"{fmt}_duckdb_rows_per_s"] = round(base)
            result[f"{fmt}_bulk_rows_per_s"] = round(bulk)
            result[f"{fmt}_ratio"] = round(bulk / base, 3)
            result[f"{fmt}_live_rows_per_s"] = round(live)
            result[f"{fmt}_duckdb_cpu_s_per_1m_rows"] = round(base_cpu, 2)
            result[f"{fmt}_bulk_cpu_s_per_1m_rows"] = round(bulk_cpu, 2)
            print(f"{fmt:8s} duckdb read_{fmt} {base:12,.0f} rows/s   bulk import {bulk:12,.0f} rows/s   ratio {bulk / base:.3f}   "
                  f"(CPU s per 1M rows: duckdb {base_cpu:.2f}, bulk {bulk_cpu:.2f}; live path {live:,.0f} rows/s)", file=sys.stderr)
        result["target_rows_per_s"] = TARGET
        result["target_met"] = all(result[f"{f}_bulk_rows_per_s"] >= TARGET for f in ("csv", "parquet"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
