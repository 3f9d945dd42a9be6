"""``headwater quarantine``: stream micro-batches that failed the same way
``stream.quarantine_after`` times in a row, and the operator's decision to skip one.

A quarantined batch stops the stream processor before it (it exits with code 4 and names the
batch) until an operator decides here: ``retry`` once the cause is fixed, or ``skip``. Skipping is never silent: the batch's offsets, error and an export of its
events stay in the checkpoint (docs/faults.md).
"""

from __future__ import annotations

import datetime as dt

import click

from headwater.cli.options import open_home
from headwater.cli.output import emit, format_option


def _when(ms: int | None) -> str | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="seconds")


def _row(rec: dict) -> dict:
    """One record as a row: status, counts and times in UTC; offsets as ``topic/p:[start,end)``."""
    status = "skipped" if rec["skipped_ms"] else "quarantined" if rec["quarantined_ms"] else "failing"
    ranges = [f"{t}/{p}:[{s},{e})" for t, parts in rec["offsets"].items() for p, (s, e) in parts.items() if e > s]
    return {
        "batch": rec["batch_id"],
        "status": status,
        "failures": rec["count"],
        "error": rec["error"],
        "offsets": " ".join(ranges),
        "first_failed": _when(rec["first_failed_ms"]),
        "last_failed": _when(rec["last_failed_ms"]),
        "skipped": _when(rec["skipped_ms"]),
    }


@click.group()
def quarantine() -> None:
    """Stream batches that keep failing: list them, skip one (explicitly, never silently)."""


@quarantine.command("list")
@format_option
def quarantine_list(fmt: str) -> None:
    """List failing, quarantined and skipped stream batches: failures in a row, error, offsets."""
    from headwater.stream.checkpoint import Checkpoint
    from headwater.stream.processor import QUERY

    home = open_home()
    emit([_row(r) for r in Checkpoint(home.checkpoint_dir(QUERY)).failures()], fmt)


def _skipped_text(row: dict) -> None:
    click.echo(f"batch {row['batch']} skipped: {row['offsets']}")
    for topic, out in row["export"].items():
        click.echo(f"  {topic}: " + (f"{out['rows']} events in {out['path']}" if "path" in out else f"not exported ({out['error']})"))
    if row["tables_with_batch"]:
        click.echo("  already committed before the failure: " + ", ".join(row["tables_with_batch"]))


@quarantine.command("skip")
@click.argument("batch", type=int)
@format_option
def quarantine_skip(batch: int, fmt: str) -> None:
    """Commit quarantined stream batch BATCH as skipped: its offsets are recorded as skipped in
    the commit log, its events exported under the checkpoint's quarantine/ directory, and the
    stream resumes after it. Refused while a stream processor runs (exit 4)."""
    from headwater.stream.processor import skip_quarantined

    rec = skip_quarantined(open_home(), batch)
    emit({**_row(rec), **rec["skip"]}, fmt, table=_skipped_text)


@quarantine.command("retry")
@click.argument("batch", type=int)
@format_option
def quarantine_retry(batch: int, fmt: str) -> None:
    """Lift the quarantine of stream batch BATCH once its cause is fixed: the stream processor
    runs it again on its next start (under `headwater up`: within the restart backoff)."""
    from headwater.stream.checkpoint import Checkpoint
    from headwater.stream.processor import QUERY

    home = open_home()
    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    with checkpoint.lock(timeout_s=10):
        rec = checkpoint.retry(batch)
    emit(_row(rec), fmt, table=lambda row: click.echo(f"batch {batch} will be retried (it had failed {row['failures']} times: {row['error']})"))
