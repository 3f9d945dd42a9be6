"""``headwater import`` (files), ``headwater logs`` (server logs) and ``headwater cdc`` (Postgres)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from headwater.cli.options import open_home, setting_option
from headwater.cli.output import emit, format_option
from headwater.errors import InvalidInputError, NotFoundError


def _mapping_options(defaults: dict[str, str | None]):
    """The column-mapping options shared by ``import`` and ``logs`` (``defaults``: per option)."""
    options = [
        ("--user-id", "user_id", "Column (key) holding the user id."),
        ("--anonymous-id", "anonymous_id", "Column holding the anonymous id."),
        ("--event", "event", "Column holding the event name."),
        ("--timestamp", "timestamp", "Column holding the event time."),
        ("--timestamp-format", "timestamp_format", "strftime pattern of the event time, e.g. '%d/%m/%Y %H:%M' (default ISO 8601)."),
        ("--timestamp-unit", "timestamp_unit", "The event time is a number of s / ms / us since the Unix epoch."),
        ("--event-type", "event_type", "Column holding the event type (default: every row is a track event)."),
        ("--event-id", "event_id", "Column holding a unique event id (default: derived, so re-reads deduplicate)."),
        ("--properties", "properties", "Column holding the properties as a JSON object (default: every unmapped column)."),
        ("--platform", "platform", "Column holding the device platform (web, ios, android, desktop, ...; default: server)."),
    ]

    def decorate(f):
        for flag, dest, help_text in reversed(options):
            kwargs = {"default": defaults.get(dest), "show_default": defaults.get(dest) is not None, "help": help_text}
            if dest == "timestamp_unit":
                kwargs["type"] = click.Choice(["s", "ms", "us"])
            f = click.option(flag, dest, **kwargs)(f)
        return f

    return decorate


def _mapping(**kw):
    from headwater.sources.mapping import Mapping

    if not kw.get("timestamp"):
        raise click.UsageError("--timestamp: name the column holding the event time")
    return Mapping(**kw)


_MAPPING_KEYS = ("user_id", "anonymous_id", "event", "timestamp", "timestamp_format", "timestamp_unit", "event_type", "event_id", "properties", "platform")


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--input-format", type=click.Choice(["csv", "jsonl", "parquet"]), default=None,
              help="Format of the file; default: from its name (.csv, .jsonl, .parquet, optionally .gz).")
@click.option("--source", default="import", show_default=True, help="Source name stamped on the events (its PII policy applies).")
@click.option("--bulk/--live", "bulk", default=None,
              help="Write bronze directly, chunk by chunk (bulk), or go through the event log and the stream (live). "
                   "Default: bulk for 100,000 rows or more, or when the file holds events older than the stream's watermark (history).")
@click.option("--restate/--no-restate", default=True, show_default=True,
              help="After a bulk import, rebuild silver and gold from the first imported day on (headwater batch --start DAY).")
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Rows per bulk chunk; by default at most 500,000, in equal chunks that keep every import worker busy (one Delta commit each; a killed import resumes after its last committed chunk).")
@_mapping_options({})
@format_option
def import_cmd(path: Path, input_format: str | None, source: str, bulk: bool | None, restate: bool, chunk_rows: int | None, fmt: str,
               **mapping) -> None:
    """Import a CSV, JSON lines or Parquet export as events; prints the counts (rows,
    accepted, rejected by type, duplicates) and the path taken.

    Rows that break a rule become bad rows (`headwater badrows`); the good rows are imported.
    History takes the bulk path: bronze is written directly, exactly once (rerun a killed
    import to resume it), and the affected days are then rebuilt. Re-importing the same file
    is deduplicated."""
    from headwater.sources import bulk as bulk_import
    from headwater.sources.files import import_file

    m = _mapping(**{k: mapping[k] for k in _MAPPING_KEYS})
    home = open_home()
    mode = "auto" if bulk is None else "bulk" if bulk else "live"
    done = import_file(home, path, m, fmt=input_format, source=source, mode=mode, watermark_us=_watermark_us(home),
                       **({"chunk_rows": chunk_rows} if chunk_rows else {}))
    out = {"file": str(path), **done.as_dict()}
    if done.path == "bulk":
        out["restated"] = None
        if restate and done.restate:
            from headwater.models.run import build

            # From the first imported day on: later days read it too (trailing windows,
            # retention cohorts, identity stitching, the state kept from day to day).
            out["restated"] = build(home, start=done.first_day, progress=lambda msg: click.echo(msg, err=True))
            bulk_import.mark_restated(home, done.import_id)
    emit(out, fmt)


def _watermark_us(home) -> int | None:
    """The live stream's event-time watermark (µs since the epoch) as of its last committed
    batch; None before its first (the import then takes now minus the default delay)."""
    from headwater.events import STREAM_GROUP
    from headwater.stream.checkpoint import Checkpoint

    if not home.checkpoint_dir(STREAM_GROUP).exists():
        return None
    checkpoint = Checkpoint(home.checkpoint_dir(STREAM_GROUP))
    last = checkpoint.latest_committed()
    if last is None:
        return None
    watermark_ms = checkpoint.read_commit(last).get("metrics", {}).get("watermark_ms")
    return None if watermark_ms is None else watermark_ms * 1000


@click.command("logs")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input-format", type=click.Choice(["kv", "jsonl"]), default="kv", show_default=True,
              help="Lines of the log: kv (key=value | key=value) or jsonl (JSON lines).")
@click.option("--source", default="serverlog", show_default=True, help="Source name stamped on the events.")
@click.option("--name", default=None, help="Key of the stored read position (default: the file name).")
@click.option("--follow", "-f", is_flag=True, help="Keep reading as the file grows (Ctrl-C to stop), like tail -F.")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between polls when following.")
@_mapping_options({"user_id": "user_id", "anonymous_id": "anonymous_id", "event": "event", "timestamp": "ts"})
@format_option
def logs_cmd(path: Path, input_format: str, source: str, name: str | None, follow: bool, interval: float, fmt: str, **mapping) -> None:
    """Read a server log from its stored position into the event log; prints the counts and
    the new position (with --follow: when stopped, each poll's counts on stderr).

    Malformed lines are counted and dead-lettered as bad rows; reading goes on."""
    from headwater.sources.serverlog import ServerLog

    m = _mapping(**{k: mapping[k] for k in _MAPPING_KEYS})
    if not follow and not path.is_file():
        raise NotFoundError(f"{path}: no such file", field="PATH")
    reader = ServerLog(open_home(), path, m, fmt=input_format, source=source, name=name)
    try:
        if follow:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            counts = reader.follow(stop, interval, on_poll=lambda c: click.echo(
                ", ".join(f"{k} {v}" for k, v in c.as_dict().items()), err=True))
        else:
            counts = reader.poll()
    finally:
        reader.close()
    emit({"file": str(path), **counts.as_dict(), "position": reader.position().__dict__}, fmt)


@click.group("cdc")
def cdc_group() -> None:
    """Postgres change data capture: a table -> bronze.cdc_<table> -> silver.dim_account (SCD2)."""


def _cdc_options(f):
    options = [
        setting_option("--dsn", key="cdc.dsn", help="libpq connection string of the source database."),
        click.option("--table", required=True, help="Table to capture: name or schema.name."),
        click.option("--key", default="", help="Key columns, comma-separated (default: the primary key)."),
        click.option("--track", default="", help="Columns whose change starts a new version (default: all non-key columns)."),
        click.option("--tokenize", default=None, help="Columns stored as HMAC tokens (default: columns named email, phone, … as in the PII policy; '' for none)."),
        click.option("--dim", default="dim_account", show_default=True, help="Name of the SCD2 table in silver."),
        click.option("--slot", default=None, help="Replication slot (default headwater_<table>)."),
        click.option("--max-changes", type=int, default=10_000, show_default=True, help="Changes per batch (whole transactions)."),
    ]
    for o in reversed(options):
        f = o(f)
    return f


def _reader(table, key, track, tokenize, dim, slot, max_changes):
    from headwater.sources.cdc.reader import CdcConfig, CdcReader

    home = open_home()
    if home.settings.cdc.dsn is None:
        raise InvalidInputError("--dsn: name the source database (or set setting cdc.dsn, HEADWATER_CDC_DSN)", field="cdc.dsn")
    dsn = home.settings.cdc.dsn.get_secret_value()
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    config = CdcConfig(dsn, table, split(key), split(track), None if tokenize is None else split(tokenize), dim, slot, max_changes=max_changes)
    return CdcReader(home, config)


_NO_SNAPSHOT = click.option("--no-snapshot", is_flag=True, help="Capture changes from now on only, without the table's current rows.")


@cdc_group.command("setup")
@_cdc_options
@_NO_SNAPSHOT
@format_option
def cdc_setup(no_snapshot: bool, fmt: str, **kw) -> None:
    """Create the publication and the replication slot, and snapshot the table's rows;
    prints the slot, the publication and the rows snapshotted."""
    reader = _reader(**kw)
    try:
        rows = reader.setup(snapshot=not no_snapshot)
        emit({"slot": reader.config.slot_name, "publication": reader.config.publication_name, "snapshot_rows": rows}, fmt)
    finally:
        reader.close()


@cdc_group.command("run")
@_cdc_options
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between polls when idle.")
@click.option("--available-now", is_flag=True, help="Process the changes present now, then exit.")
@_NO_SNAPSHOT
@format_option
def cdc_run(interval: float, available_now: bool, no_snapshot: bool, fmt: str, **kw) -> None:
    """Read changes from the slot into bronze and the SCD2 dimension, exactly once
    (runs `setup` first when the slot does not exist yet); prints the changes read."""
    reader = _reader(**kw)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        reader.setup(snapshot=not no_snapshot)
        n = reader.run(stop, interval, available_now=available_now)
        emit({"changes": n}, fmt)
    finally:
        reader.close()


@cdc_group.command("rebuild")
@_cdc_options
@format_option
def cdc_rebuild(fmt: str, **kw) -> None:
    """Recompute the SCD2 dimension from all of bronze.cdc_<table> (backfill); prints its rows."""
    reader = _reader(**kw)
    try:
        emit({"rows": reader.rebuild_dim()}, fmt)
    finally:
        reader.close()
