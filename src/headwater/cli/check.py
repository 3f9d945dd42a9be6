"""``headwater check``: run the data-quality checks of a day (:mod:`headwater.quality`)."""

from __future__ import annotations

import datetime as dt

import click

from headwater.cli.options import DATE, open_home, setting_option
from headwater.cli.output import emit, format_option
from headwater.errors import HeadwaterError

COLUMNS = ("status", "check", "table", "subject", "ds", "hour", "observed", "expected", "blocking", "message")


@click.command("check")
@click.option("--ds", type=DATE, help="Day to check (YYYY-MM-DD, UTC); default: yesterday.")
@setting_option("--webhook-url", key="quality.webhook_url", help="POST a JSON summary of warnings and failures here.")
@format_option
def check(ds: dt.date | None, fmt: str) -> None:
    """Check freshness SLAs, completeness (log → bronze → silver, per hour), volume and
    funnel-conversion anomalies, the bad-row rate and schema drift for one day. Every result
    is appended to quality.results and printed; warnings and failures go to the webhook.
    Exits 1 when a check fails (anomalies and drift only warn)."""
    from headwater.quality.alerts import check as run_checks

    report = run_checks(open_home(), ds)
    order = {"fail": 0, "warn": 1, "pass": 2}
    rows = [{c: getattr(r, c) for c in COLUMNS} for r in sorted(report.results, key=lambda r: order[r.status])]
    emit(rows, fmt)
    if report.webhook is not None:
        click.echo(f"webhook: {report.webhook}", err=True)
    if report.failed:
        blocking = sum(r.blocking for r in report.failed)
        raise HeadwaterError(f"{len(report.failed)} check(s) failed for {report.ds} ({blocking} blocking), "
                             f"{len(report.warned)} warning(s)")
