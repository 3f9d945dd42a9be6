"""``headwater import`` (files), ``headwater logs`` (server logs) and ``headwater cdc`` (Postgres)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import click

from headwater.cli.output import to_json
from headwater.config import Home


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
    try:
        return Mapping(**kw)
    except ValueError as e:
        raise click.UsageError(str(e)) from None


_MAPPING_KEYS = ("user_id", "anonymous_id", "event", "timestamp", "timestamp_format", "timestamp_unit", "event_type", "event_id", "properties", "platform")


@click.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), default=None, help="Default: from the file name.")
@click.option("--source", default="import", show_default=True, help="Source name stamped on the events (its PII policy applies).")
@_mapping_options({})
def import_cmd(path: Path, fmt: str | None, source: str, **mapping) -> None:
    """Import a CSV, JSON lines or Parquet export as events (prints counts as JSON).

    Rows that break a rule become bad rows (`headwater query "SELECT * FROM bronze.bad_rows"`);
    the good rows are imported. Re-importing the same file is deduplicated downstream."""
    from headwater.sources.files import import_file

    m = _mapping(**{k: mapping[k] for k in _MAPPING_KEYS})
    try:
        counts = import_file(Home.from_env(), path, m, fmt=fmt, source=source)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(to_json({"file": str(path), **counts.as_dict()}))


@click.command("logs")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["kv", "jsonl"]), default="kv", show_default=True, help="key=value | key=value lines, or JSON lines.")
@click.option("--source", default="serverlog", show_default=True, help="Source name stamped on the events.")
@click.option("--name", default=None, help="Key of the stored read position (default: the file name).")
@click.option("--follow", "-f", is_flag=True, help="Keep reading as the file grows (Ctrl-C to stop), like tail -F.")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between polls when following.")
@_mapping_options({"user_id": "user_id", "anonymous_id": "anonymous_id", "event": "event", "timestamp": "ts"})
def logs_cmd(path: Path, fmt: str, source: str, name: str | None, follow: bool, interval: float, **mapping) -> None:
    """Read a server log from its stored position into the event log (prints counts as JSON).

    Malformed lines are counted and dead-lettered as bad rows; reading goes on."""
    from headwater.sources.serverlog import ServerLog

    m = _mapping(**{k: mapping[k] for k in _MAPPING_KEYS})
    if not follow and not path.is_file():
        raise click.ClickException(f"{path}: no such file")
    try:
        reader = ServerLog(Home.from_env(), path, m, fmt=fmt, source=source, name=name)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    try:
        if follow:
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            counts = reader.follow(stop, interval, on_poll=lambda c: click.echo(to_json(c.as_dict()), err=True))
        else:
            counts = reader.poll()
    finally:
        reader.close()
    click.echo(to_json({"file": str(path), **counts.as_dict(), "position": reader.position().__dict__}))


@click.group("cdc")
def cdc_group() -> None:
    """Postgres change data capture: a table -> bronze.cdc_<table> -> silver.dim_account (SCD2)."""


def _cdc_options(f):
    options = [
        click.option("--dsn", required=True, envvar="HEADWATER_CDC_DSN", help="libpq connection string ($HEADWATER_CDC_DSN)."),
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


def _reader(dsn, table, key, track, tokenize, dim, slot, max_changes):
    import psycopg

    from headwater.sources.cdc.reader import CdcConfig, CdcReader

    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    try:
        config = CdcConfig(dsn, table, split(key), split(track), None if tokenize is None else split(tokenize), dim, slot, max_changes=max_changes)
        return CdcReader(Home.from_env(), config)
    except (ValueError, psycopg.Error) as e:
        raise click.ClickException(str(e).strip()) from None


_NO_SNAPSHOT = click.option("--no-snapshot", is_flag=True, help="Capture changes from now on only, without the table's current rows.")


@cdc_group.command("setup")
@_cdc_options
@_NO_SNAPSHOT
def cdc_setup(no_snapshot: bool, **kw) -> None:
    """Create the publication and the replication slot, and snapshot the table's rows."""
    reader = _reader(**kw)
    try:
        rows = reader.setup(snapshot=not no_snapshot)
        click.echo(to_json({"slot": reader.config.slot_name, "publication": reader.config.publication_name, "snapshot_rows": rows}))
    finally:
        reader.close()


@cdc_group.command("run")
@_cdc_options
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds between polls when idle.")
@click.option("--available-now", is_flag=True, help="Process the changes present now, then exit.")
@_NO_SNAPSHOT
def cdc_run(interval: float, available_now: bool, no_snapshot: bool, **kw) -> None:
    """Read changes from the slot into bronze and the SCD2 dimension, exactly once
    (runs `setup` first when the slot does not exist yet)."""
    reader = _reader(**kw)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        reader.setup(snapshot=not no_snapshot)
        n = reader.run(stop, interval, available_now=available_now)
        click.echo(to_json({"changes": n}))
    finally:
        reader.close()


@cdc_group.command("rebuild")
@_cdc_options
def cdc_rebuild(**kw) -> None:
    """Recompute the SCD2 dimension from all of bronze.cdc_<table> (backfill)."""
    reader = _reader(**kw)
    try:
        click.echo(to_json({"rows": reader.rebuild_dim()}))
    finally:
        reader.close()
