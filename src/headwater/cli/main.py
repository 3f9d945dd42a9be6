"""The ``headwater`` command. Every command works on ``HEADWATER_HOME`` (default ``./.headwater``)
with the settings of :mod:`headwater.settings`; options named after a setting override it for
one run (:mod:`headwater.cli.options`). Data is printed with ``--format table|csv|json``
(:mod:`headwater.cli.output`); errors become exit codes in one place (:mod:`headwater.cli.errors`).
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import sys
import threading

import click

from headwater import credentials
from headwater.cli.errors import DEBUG, HeadwaterGroup
from headwater.cli.options import check_range, date_range, engine_option, open_home, setting_option
from headwater.cli.output import emit, format_option, human_duration, print_rows
from headwater.config import Home


@click.group(cls=HeadwaterGroup)
@click.option("-v", "--verbose", is_flag=True, help="Log progress of every component.")
@click.option("--debug", is_flag=True, help="Show the traceback of an error instead of its one-line message.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """headwater: product-analytics data platform (embedded default)."""
    from headwater.runtime import use_allocator

    ctx.meta[DEBUG] = debug
    use_allocator()
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s")


def default_source(home: Home) -> tuple[str, str]:
    """``(name, write key line)`` of the source ``up`` reports: the source of setting
    ``collector.write_key`` if set (created if absent; the key must pass
    :func:`headwater.credentials.check_strength`), else the first source (one named
    ``default`` is created if there is none). The key itself is printed only when it was
    just generated (shown once); otherwise only its fingerprint."""
    key = home.settings.collector.write_key
    sources = home.sources()
    if key is not None:
        plain = credentials.check_strength(key.get_secret_value(), "collector.write_key")
        existing = [s for s in sources if credentials.verify(plain, s.key_digest)]
        name = existing[0].name if existing else "default" if not sources else f"source-{len(sources)}"
        if not existing:
            home.add_source(name, plain)
        return name, f"fingerprint {credentials.fingerprint(credentials.digest(plain))} (setting collector.write_key)"
    if sources:
        return sources[0].name, f"fingerprint {sources[0].key_fingerprint} (shown once at creation; `headwater source rotate {sources[0].name}` issues a new one)"
    return "default", f"{home.add_source('default')}  (shown once: keep it)"


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


_port_option = setting_option("--port", key="collector.port", type=int, help="Collector port on 127.0.0.1.")


@cli.command()
@_port_option
@click.option("--dagster/--no-dagster", default=True, show_default=True,
              help="Also serve the Dagster UI + daemon (on setting dagster.port, or a free port).")
def up(dagster: bool) -> None:
    """Run the collector, the stream processor and Dagster until Ctrl-C; print URLs and write key,
    then a heartbeat line every 10 s: events in and out per second, lag, freshness, failing checks."""
    from headwater.runtime import Platform, free_port

    home = open_home()
    name, key_line = default_source(home)
    dagster_port = (home.settings.dagster.port or free_port()) if dagster else None
    platform = Platform(home, home.settings.collector.port, dagster_port=dagster_port)
    # Before the first child starts: a SIGTERM at any moment from here stops the children too.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        platform.start()
        click.echo(f"collector  {platform.url}  (Segment HTTP API: POST /v1/batch, /v1/track, ...)")
        click.echo(f"query API  {platform.url}/api  (docs: {platform.url}/api/docs; read tokens: headwater token add)")
        click.echo(f"dashboard  {platform.url}/dashboard  (log in with a read token: headwater token add --role viewer)")
        if platform.dagster_url:
            click.echo(f"dagster    {platform.dagster_url}  (Dagster UI, started on first visit: assets, runs, backfills; daily schedule, late-data sensor)")
        click.echo(f"write key  {key_line}  (source {name!r})")
        click.echo(f"home       {home.root}")
        platform.supervise(heartbeat=click.echo)  # a heartbeat line every serve.heartbeat.HEARTBEAT_S
    finally:
        platform.stop()


@cli.command()
@_port_option
@setting_option("--workers", key="collector.workers", type=click.IntRange(1, 256), help="Processes serving the port together.")
@click.option("--worker-of", type=int, hidden=True, help="Serve as a worker of the supervisor with this pid (it starts them).")
def collector(worker_of: int | None) -> None:
    """Run only the collector (HTTP: Segment tracking API, PostHog capture) and the query API (/api):
    setting collector.workers processes serving the port, each restarted if it exits; with one,
    it serves in this process."""
    home = open_home()
    if worker_of is None and home.settings.collector.worker_count > 1:
        from headwater.runtime import Platform

        platform = Platform(home, home.settings.collector.port, stream=False)
        signal.signal(signal.SIGTERM, _interrupt)  # before the first worker starts: SIGTERM stops them all
        try:
            platform.start()
            platform.supervise()
        finally:
            platform.stop()
        return
    from headwater.collector.server import serve
    from headwater.serve.app import mounts
    from headwater.serve.metrics import render

    serve(home, host="127.0.0.1", port=home.settings.collector.port, metrics=lambda: render(home), mounts=mounts(home),
          worker_of=worker_of)


@cli.command()
@click.option("--available-now", is_flag=True, help="Process what the log holds now, then exit.")
@setting_option("--engine", key="stream.engine",
                help="embedded (headwater's micro-batch engine) or spark (the same pipeline on Spark Structured Streaming, setting spark.master).")
@setting_option("--trigger-interval", key="stream.trigger_interval_s", type=float, help="Seconds between micro-batches when idle.")
@setting_option("--max-records-per-partition", key="stream.max_records_per_partition", type=int, help="Micro-batch bound per log partition (events).")
@setting_option("--retain-batches", key="stream.retain_batches", type=int, help="Offset / commit log entries kept.")
@click.option("--pipeline", "pipeline_path", type=click.Path(exists=True, dir_okay=False),
              help="Pipeline TOML (dedup, watermark, windows); default: the built-in real-time aggregates.")
def stream(available_now: bool, pipeline_path: str | None) -> None:
    """Run only the stream processor (event log -> bronze + realtime Delta tables, exactly once)
    until SIGTERM / Ctrl-C, on the engine of setting stream.engine."""
    from headwater.stream.pipeline import DEFAULT_PIPELINE, Pipeline
    from headwater.stream.processor import BronzeStream, StreamConfig

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    home = open_home()
    s = home.settings.stream
    if s.engine == "spark":
        _stream_on_spark(home, Pipeline.from_toml(pipeline_path) if pipeline_path else None, stop, available_now)
        return
    config = StreamConfig(trigger_interval_s=s.trigger_interval_s, max_records_per_partition=s.max_records_per_partition,
                          retain_batches=s.retain_batches, compact_every=s.compact_every,
                          max_batch_bytes=s.max_batch_bytes, quarantine_after=s.quarantine_after)
    pipeline = Pipeline.from_toml(pipeline_path) if pipeline_path else DEFAULT_PIPELINE
    processor = BronzeStream(home, config, pipeline=pipeline)
    try:
        processor.run(stop, available_now=available_now)
    finally:
        processor.close()


def _stream_on_spark(home: Home, pipeline, stop: threading.Event, available_now: bool) -> None:
    """``headwater stream`` on Spark Structured Streaming (:class:`~headwater.stream.spark.runner.SparkPipeline`)
    at setting ``spark.master``: ``pipeline``, or the built-in one with its session windows in
    append mode (the only mode Spark has for them). A first run starts where the consumer group
    stands (the embedded engine's last batch). A pipeline Spark cannot run is refused before
    the JVM starts (:class:`~headwater.errors.InvalidInputError`, exit 2)."""
    from headwater.spark import session
    from headwater.stream.pipeline import DEFAULT_PIPELINE
    from headwater.stream.spark.runner import SparkConfig, SparkPipeline, check_supported, for_spark

    pipeline = pipeline or for_spark(DEFAULT_PIPELINE)
    check_supported(pipeline)
    s = home.settings.stream
    config = SparkConfig(max_records_per_partition=s.max_records_per_partition, available_now=available_now,
                         trigger_interval_s=s.trigger_interval_s, start_at_group=True)
    runner = SparkPipeline(session("headwater-stream", settings=home.settings), home, pipeline, config)
    if available_now:
        runner.run_available_now()
    else:
        runner.run(stop)


def _counts_table(counts: dict[str, int]) -> None:
    print_rows(["table", "rows"], [{"table": t, "rows": n} for t, n in counts.items()])


@cli.command()
@date_range
@engine_option
@click.option("--full-rebuild", "full", is_flag=True,
              help="Rebuild every table from the first bronze day, trusting nothing built before (no range).")
@format_option
def batch(start: dt.date | None, end: dt.date | None, full: bool, fmt: str) -> None:
    """Build silver and gold tables for a ds range (partitions are overwritten, never appended
    twice); prints the rows written per table. Incremental: a day reads its events and the
    cumulative state of the day before, and what it changes (late rows, an earlier range,
    re-stitched identities) is restated forward."""
    from headwater.models.run import build

    check_range(start, end)
    if full and (start or end):
        raise click.UsageError("--full-rebuild covers every day of bronze: give no --start / --end")
    home = open_home()
    counts = build(home, start, end, progress=lambda msg: click.echo(msg, err=True), full=full)
    emit(counts, fmt, table=_counts_table)


@cli.command()
@click.argument("sql")
@format_option
def query(sql: str, fmt: str) -> None:
    """Run SQL (DuckDB) over the tables, named bronze.events, silver.events, gold.active_users, ...;
    hw_token(raw_id) gives the stored token of an identifier (join with your own files)."""
    from headwater.ingest.tokens import Tokenizer
    from headwater.lake import sql as catalog
    from headwater.lake.store import Lake

    home = open_home()
    emit(catalog.query(Lake.of(home), sql, hw_token=Tokenizer(home.hmac_key()).column), fmt)


def _status_text(info: dict) -> None:
    """``headwater status`` for people: one line per log partition, query and table, with units."""
    click.echo(f"home {info['home']}")
    for topic, t in info["log"].items():
        for p, v in t["partitions"].items():
            click.echo(f"log {topic}[{p}]  end offset {v['end_offset']}  committed {v['committed_offset']}  lag {v['lag']} events")
    if info["stream"]:
        s = info["stream"]
        totals = ", ".join(f"{k} {v}" for k, v in s["totals"].items())
        click.echo(f"stream  last batch {s['last_batch_id']} at {s['last_batch_time']}  totals: {totals}")
    for name, m in info.get("metrics", {}).items():
        click.echo(
            f"query {name}  batch {m['last_batch_id']} took {human_duration(m['batch_duration_s'])}  "
            f"in {m['records_in_per_s']:.0f} records/s  out {m['records_out_per_s']:.0f} rows/s  "
            f"watermark delay {human_duration(m['watermark_delay_s'])}"
        )
    for name, rows in info["tables"].items():
        click.echo(f"table {name}  {rows} rows")


@cli.command()
@format_option
def status(fmt: str) -> None:
    """Log end offsets, committed offsets, lag, stream progress, watermark and table row counts."""
    from headwater.serve.status import status as get_status

    emit(get_status(open_home()), fmt, table=_status_text)


@cli.group()
def source() -> None:
    """Sources: their write keys and policies (PII, events without a contract)."""


_WRITE_KEY_OPTION = click.option("--write-key", default=None, help="Use this write key, at least 16 characters (default: generate one).")


@source.command("add")
@click.argument("name")
@_WRITE_KEY_OPTION
def source_add(name: str, write_key: str | None) -> None:
    """Add source NAME; prints its write key alone (for scripts: KEY=$(headwater source add web)).

    This is the only time the key is shown: only its digest is stored."""
    click.echo(open_home().add_source(name, write_key))


@source.command("rotate")
@click.argument("name")
@_WRITE_KEY_OPTION
def source_rotate(name: str, write_key: str | None) -> None:
    """Give source NAME a new write key and print it alone (shown once); the old key stops
    working within a second."""
    click.echo(open_home().rotate_key(name, write_key))


@source.command("list")
@format_option
def source_list(fmt: str) -> None:
    """List the sources: name, write-key fingerprint (printf %s "$KEY" | sha256sum | cut -c1-12),
    policy for events without a contract. Keys themselves are never stored."""
    rows = [{"name": s.name, "key_fingerprint": s.key_fingerprint, "unregistered_events": s.unregistered_events}
            for s in open_home().sources()]
    emit(rows, fmt)


@cli.command()
@click.option("--port", type=int, default=None, help="Collector port; default: setting collector.port if set, else a free port.")
def demo(port: int | None) -> None:
    """The main job: replay the e-commerce dataset through the Segment SDK into DAU/WAU/MAU."""
    from headwater.demo.run import run_demo

    sys.exit(run_demo(open_home(), port))


@cli.group()
def config() -> None:
    """The settings of this installation (headwater.toml, HEADWATER_* variables)."""


@config.command("show")
@format_option
def config_show(fmt: str) -> None:
    """Print the effective settings, secrets masked, and where each value comes from
    (default, headwater.toml, or an environment variable)."""
    from headwater.settings import describe

    emit(describe(open_home().settings), fmt, table=lambda rows: print_rows(["key", "value", "origin"], rows))


@config.command("docs")
def config_docs() -> None:
    """Print the table of every setting (key, variables, default, meaning) as Markdown: the
    settings table of README.md."""
    from headwater.settings import settings_table

    click.echo(settings_table(), nl=False)


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

from headwater.cli.tables import tables as _tables  # noqa: E402
cli.add_command(_tables)

from headwater.cli.maintain import maintain as _maintain  # noqa: E402
cli.add_command(_maintain)

from headwater.cli.check import check as _check  # noqa: E402
cli.add_command(_check)

from headwater.cli.policy import policy as _policy  # noqa: E402
source.add_command(_policy)

from headwater.cli.quarantine import quarantine as _quarantine  # noqa: E402
cli.add_command(_quarantine)

from headwater.cli.tokens import identity as _identity, token as _token  # noqa: E402
cli.add_command(_token)
cli.add_command(_identity)


def main() -> None:
    """The ``headwater`` program (its console script and ``python -m headwater``): this
    process's import policy, then :func:`cli`. pandas stays out of the process unless it starts
    a Spark session (:func:`headwater.spark.defer_pandas`); that policy is set here, not in the
    group, because a host process that invokes :func:`cli` itself (a test's ``CliRunner``)
    keeps its own imports."""
    from headwater.spark import defer_pandas

    defer_pandas()
    cli()
