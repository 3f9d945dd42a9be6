"""Where check results go: the ``quality.results`` table and the webhook.

:func:`check` is what ``headwater check`` (and any scheduler) calls: run the checks of a day,
append every result to ``quality.results`` in one commit, and POST the warnings and failures
to ``quality.webhook_url``. The webhook body (JSON)::

    {"source": "headwater", "ds": "2024-05-20", "checked_at": "2024-05-21T06:00:00+00:00",
     "failed": 1, "warned": 2, "blocking_failed": 0,
     "results": [{"check": ..., "table": ..., "subject": ..., "ds": ..., "hour": ...,
                  "status": ..., "blocking": ..., "observed": ..., "expected": ..., "message": ...}]}
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import urllib.error
import urllib.request
from dataclasses import dataclass

import pyarrow as pa

from headwater.config import Home
from headwater.lake.schemas import QUALITY_RESULTS_SCHEMA
from headwater.lake.store import Lake
from headwater.quality import checks
from headwater.quality.checks import Result

TABLE = "quality.results"


@dataclass(frozen=True)
class Report:
    """One run of the checks: its ``results``, ``checked_at`` and the webhook's outcome
    (``None``: not configured or nothing to send; else ``"sent"`` or the error)."""

    ds: dt.date
    checked_at: dt.datetime
    results: list[Result]
    webhook: str | None = None

    @property
    def failed(self) -> list[Result]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def warned(self) -> list[Result]:
        return [r for r in self.results if r.status == "warn"]


def check(home: Home, ds: dt.date | None = None, now: dt.datetime | None = None) -> Report:
    """Run :func:`headwater.quality.checks.run` for ``ds`` (default: yesterday, UTC) at
    ``now`` (default: the wall clock), append the results to ``quality.results`` and send the
    webhook. Raises what the lake raises (:class:`~headwater.errors.TransientError` on I/O)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    ds = ds or (now.date() - dt.timedelta(days=1))
    results = checks.run(home, ds, now)
    record(Lake.of(home), results, now)
    report = Report(ds, now, results)
    url = home.settings.quality.webhook_url
    if url and (report.failed or report.warned):
        report = dataclasses.replace(report, webhook=notify(url, report, home.settings.quality.webhook_timeout_s))
    return report


def rows(results: list[Result], checked_at: dt.datetime) -> pa.Table:
    """``results`` as ``quality.results`` rows (``Result.check`` is the column ``check_name``:
    ``check`` is an SQL keyword)."""
    def row(r: Result) -> dict:
        d = dataclasses.asdict(r)
        return d | {"check_name": d.pop("check"), "checked_at": checked_at}

    return pa.Table.from_pylist([row(r) for r in results], schema=QUALITY_RESULTS_SCHEMA)


def record(lake: Lake, results: list[Result], checked_at: dt.datetime) -> None:
    """Append ``results`` to ``quality.results`` (one commit; nothing for no results)."""
    if results:
        lake.append(TABLE, rows(results, checked_at))


def payload(report: Report) -> dict:
    """The webhook body (module docstring): counts and the results that are not ``pass``."""
    def plain(r: Result) -> dict:
        d = dataclasses.asdict(r)
        return d | {"ds": r.ds and r.ds.isoformat(), "hour": r.hour and r.hour.isoformat()}

    return {
        "source": "headwater", "ds": report.ds.isoformat(), "checked_at": report.checked_at.isoformat(),
        "failed": len(report.failed), "warned": len(report.warned),
        "blocking_failed": sum(r.blocking for r in report.failed),
        "results": [plain(r) for r in report.results if r.status != "pass"],
    }


def notify(url: str, report: Report, timeout_s: float) -> str:
    """POST :func:`payload` as JSON to ``url``; ``"sent"`` on a 2xx answer, else the error
    (an alert channel that is down must not fail the checks)."""
    body = json.dumps(payload(report)).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return "sent" if 200 <= answer.status < 300 else f"HTTP {answer.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return f"not sent: {getattr(e, 'reason', e)}"
