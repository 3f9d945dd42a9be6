"""``headwater badrows``: list failed events (``bronze.bad_rows``) and replay them after a fix."""

from __future__ import annotations

import datetime as dt

import click

from headwater.cli.options import open_home
from headwater.cli.output import emit, format_option
from headwater.events import BAD_ROW_TYPES


def _since(_ctx, _param, value: str | None) -> dt.datetime | None:
    """``YYYY-MM-DD``, an ISO timestamp (UTC if naive), or a duration back from now: ``30m``, ``6h``, ``2d``."""
    if value is None:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if value[:-1].isdigit() and value[-1:] in units:
        return dt.datetime.now(dt.timezone.utc) - dt.timedelta(**{units[value[-1]]: int(value[:-1])})
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected YYYY-MM-DD, an ISO timestamp or a duration like 30m, 6h, 2d") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


_filters = [
    click.option("--type", "error_type", type=click.Choice(BAD_ROW_TYPES), help="Only this failure type."),
    click.option("--source", help="Only this source ('unknown': rows without one, i.e. auth failures)."),
    click.option("--since", callback=_since, help="Received at or after: YYYY-MM-DD, ISO timestamp, or 30m / 6h / 2d ago."),
]


def _with_filters(f):
    for option in reversed(_filters):
        f = option(f)
    return f


@click.group(invoke_without_command=True)
@_with_filters
@click.option("--all", "include_replayed", is_flag=True, help="Include rows already replayed.")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many rows (newest first); 0: all.")
@format_option
@click.pass_context
def badrows(ctx, error_type, source, since, include_replayed, limit, fmt) -> None:
    """List bad rows (failed events), newest first; `badrows replay` re-submits them.

    Types (Snowplow-style): size_violation, decode_failure, envelope_violation,
    schema_violation, auth_failure. Payloads are stored with identifiers and PII tokenised."""
    if ctx.invoked_subcommand is not None:
        return
    from headwater.collector.badrows import list_bad_rows

    rows = list_bad_rows(open_home(), error_type=error_type, source=source, since=since,
                         include_replayed=include_replayed, limit=limit or None)
    if fmt == "table":  # a terminal-wide view; --format json / csv give every column in full
        rows = rows.select(["received_at", "source", "error_type", "reason"])
    emit(rows, fmt)


@badrows.command("replay")
@_with_filters
@format_option
def replay_cmd(error_type, source, since, fmt) -> None:
    """Re-submit not-yet-replayed bad rows through the collector's normalisation, contract
    validation and PII policy into the event log (the stream deduplicates as usual).

    Rows that pass are marked replayed (never replayed twice); rows that fail again stay,
    with the new reason printed."""
    from headwater.collector.badrows import replay

    result = replay(open_home(), error_type=error_type, source=source, since=since)

    def text(doc: dict) -> None:
        click.echo(f"replayed {doc['replayed']} bad rows ({doc['events']} events to the log); {len(doc['failed'])} still failing")
        for f in doc["failed"]:
            click.echo(f"  {f['bad_row_id']}  {f['error_type']}: {f['reason']}", err=True)

    emit({"replayed": result.replayed, "events": result.events, "failed": result.failed}, fmt, table=text)
