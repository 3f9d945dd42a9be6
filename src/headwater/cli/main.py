"""The ``headwater`` command. Every command works on ``HEADWATER_HOME`` (default ``./.headwater``)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import sys
import threading

import click

from headwater.config import Home, port_from_env
from headwater.cli.output import print_table, to_json

FORMATS = click.Choice(["table", "csv", "json"])


def _date(_ctx, _param, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date in YYYY-MM-DD form") from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log progress of every component.")
def cli(verbose: bool) -> None:
    """headwater: product-analytics data platform (embedded default)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")


def default_source(home: Home):
    """The source of ``HEADWATER_WRITE_KEY`` if set, else the first source (one named
    ``default`` is created if there is none)."""
    key = os.environ.get("HEADWATER_WRITE_KEY")
    if key:
        existing = [s for s in home.sources() if s.write_key == key]
        return existing[0] if existing else home.add_source("default" if not home.sources() else f"source-{len(home.sources())}", key)
    return (home.sources() or [home.add_source("default")])[0]


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


@cli.command()
@click.option("--port", type=int, default=None, help="Collector port on 127.0.0.1 (default $HEADWATER_PORT or 8088).")
@click.option("--dagster/--no-dagster", default=True, show_default=True,
              help="Also serve the Dagster UI + daemon (port $HEADWATER_DAGSTER_PORT or a free one).")
def up(port: int | None, dagster: bool) -> None:
    """Run the collector, the stream processor and Dagster until Ctrl-C; print URLs and write key."""
    from headwater.orchestrate.server import port_from_env as dagster_port_from_env
    from headwater.runtime import Platform, free_port

    home = Home.from_env()
    source = default_source(home)
    try:
        dagster_port = dagster_port_from_env(free_port()) if dagster else None
        platform = Platform(home, port or port_from_env(), dagster_port=dagster_port).start()
    except (RuntimeError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"collector  {platform.url}  (Segment HTTP API: POST /v1/batch, /v1/track, ...)")
    if platform.dagster_url:
        click.echo(f"dagster    {platform.dagster_url}  (Dagster UI: assets, runs, backfills; daily schedule, late-data sensor)")
    click.echo(f"write key  {source.write_key}  (source {source.name!r})")
    click.echo(f"home       {home.root}")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        platform.supervise()
    finally:
        platform.stop()


@cli.command()
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 (default $HEADWATER_PORT or 8088).")
def collector(port: int | None) -> None:
    """Run only the collector (HTTP, Segment tracking API)."""
    from headwater.collector.server import serve

    serve(Home.from_env(), host="127.0.0.1", port=port or port_from_env())


@cli.command()
@click.option("--available-now", is_flag=True, help="Process what the log holds now, then exit.")
@click.option("--trigger-interval", type=float, default=0.5, show_default=True, help="Seconds between polls when idle.")
@click.option("--max-records-per-partition", type=int, default=50_000, show_default=True, help="Micro-batch bound per log partition.")
@click.option("--retain-batches", type=int, default=100, show_default=True, help="Offset/commit log entries kept.")
@click.option("--pipeline", "pipeline_path", type=click.Path(exists=True, dir_okay=False), help="Pipeline TOML (default: the built-in real-time aggregates).")
def stream(available_now: bool, trigger_interval: float, max_records_per_partition: int, retain_batches: int, pipeline_path: str | None) -> None:
    """Run only the stream processor (event log -> bronze + realtime Delta tables, exactly once)."""
    from headwater.stream.pipeline import DEFAULT_PIPELINE, Pipeline
    from headwater.stream.processor import BronzeStream, StreamConfig

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    config = StreamConfig(trigger_interval_s=trigger_interval, max_records_per_partition=max_records_per_partition, retain_batches=retain_batches)
    try:
        pipeline = Pipeline.from_toml(pipeline_path) if pipeline_path else DEFAULT_PIPELINE
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError too
        raise click.BadParameter(str(e), param_hint="--pipeline") from None
    BronzeStream(Home.from_env(), config, pipeline=pipeline).run(stop, available_now=available_now)


@cli.command()
@click.option("--start", callback=_date, help="First ds (YYYY-MM-DD); default the first ds in bronze.")
@click.option("--end", callback=_date, help="Last ds (YYYY-MM-DD); default the last ds in bronze.")
@click.option("--engine", type=click.Choice(["duckdb", "spark"]), default=None,
              help="SQL engine (default $HEADWATER_ENGINE or duckdb); spark runs the same SQL on Spark SQL local mode.")
def batch(start: dt.date | None, end: dt.date | None, engine: str | None) -> None:
    """Build silver and gold tables for a ds range (partitions are overwritten, never appended twice)."""
    from headwater.models.run import build, engine_from_env

    try:
        engine = engine_from_env(engine)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    counts = build(Home.from_env(), start, end, progress=lambda msg: click.echo(msg, err=True), engine=engine)
    click.echo(to_json(counts))


@cli.command()
@click.argument("sql")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
def query(sql: str, fmt: str) -> None:
    """Run SQL (DuckDB) over the tables, named bronze.events, silver.events, gold.active_users, ..."""
    import duckdb

    from headwater.serve.catalog import query as run_query

    try:
        result = run_query(Home.from_env(), sql)
    except duckdb.Error as e:
        raise click.ClickException(str(e)) from None
    print_table(result, fmt)


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def status(fmt: str) -> None:
    """Log end offsets, committed offsets, lag, stream progress and table row counts."""
    from headwater.serve.status import status as get_status

    info = get_status(Home.from_env())
    if fmt == "json":
        click.echo(to_json(info))
        return
    click.echo(f"home {info['home']}")
    for topic, t in info["log"].items():
        for p, v in t["partitions"].items():
            click.echo(f"log {topic}[{p}]  end {v['end_offset']}  committed {v['committed_offset']}  lag {v['lag']}")
    if info["stream"]:
        s = info["stream"]
        click.echo(f"stream  last batch {s['last_batch_id']} at {s['last_batch_time']}  totals {s['totals']}")
    for name, m in info.get("metrics", {}).items():
        delay = "-" if m["watermark_delay_s"] is None else f"{m['watermark_delay_s']:.1f}s"
        click.echo(
            f"query {name}  batch {m['last_batch_id']} took {m['batch_duration_s']:.3f}s  "
            f"in {m['records_in_per_s']:.0f}/s  out {m['records_out_per_s']:.0f}/s  watermark delay {delay}"
        )
    for name, rows in info["tables"].items():
        click.echo(f"table {name}  {rows} rows")


@cli.group()
def source() -> None:
    """Sources and their write keys."""


@source.command("add")
@click.argument("name")
@click.option("--write-key", default=None, help="Use this write key (default: generate one).")
def source_add(name: str, write_key: str | None) -> None:
    """Add a source; prints its write key."""
    try:
        click.echo(Home.from_env().add_source(name, write_key).write_key)
    except ValueError as e:
        raise click.ClickException(str(e)) from None


@source.command("list")
def source_list() -> None:
    for s in Home.from_env().sources():
        click.echo(f"{s.name}\t{s.write_key}")


@cli.command()
@click.option("--port", type=int, default=None, help="Collector port (default: $HEADWATER_PORT or a free port).")
def demo(port: int | None) -> None:
    """The main job: replay the e-commerce dataset through the Segment SDK into DAU/WAU/MAU."""
    from headwater.demo.run import run_demo

    sys.exit(run_demo(Home.from_env(), port))


from headwater.cli.schema import schema as _schema  # noqa: E402
cli.add_command(_schema)

from headwater.cli.sources import cdc_group, import_cmd, logs_cmd  # noqa: E402

cli.add_command(import_cmd)
cli.add_command(logs_cmd)
cli.add_command(cdc_group)

from headwater.cli.badrows import badrows as _badrows  # noqa: E402
cli.add_command(_badrows)

from headwater.cli.backfill import backfill as _backfill  # noqa: E402
cli.add_command(_backfill)

from headwater.cli.policy import policy as _policy  # noqa: E402
source.add_command(_policy)
