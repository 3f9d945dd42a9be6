"""Where check results go: the ``quality.results`` table and the webhook.

:func:`check` is what ``headwater check`` and the Dagster quality job
(:mod:`headwater.orchestrate.monitor`) call: run the checks of a day, append every result to
``quality.results`` in one commit, and POST the warnings and failures to
``quality.webhook_url``. :func:`watch_realtime` is the minute-by-minute realtime freshness
check of the ``realtime_freshness`` sensor. :func:`latest` is the current state of every
check (the latest run of each: runs of different checks interleave) and :func:`failing` its
failures (the ``headwater up`` heartbeat). The webhook body (JSON)::

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
from headwater.lake import sql as lake_sql
from headwater.lake.schemas import QUALITY_RESULTS_SCHEMA
from headwater.lake.store import Lake
from headwater.quality import checks
from headwater.quality.checks import Result

TABLE = "quality.results"
RECORD_EVERY_S = 600  # a passing realtime freshness check is stored at most this often (s)


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
    return publish(home, Report(ds, now, checks.run(home, ds, now)))


def publish(home: Home, report: Report, *, store: bool = True, alert: bool = True) -> Report:
    """Append ``report``'s results to ``quality.results`` (if ``store``) and, if ``alert`` and
    it has warnings or failures, POST it to ``quality.webhook_url`` (when set); returns it
    with the webhook's outcome."""
    if store:
        record(Lake.of(home), report.results, report.checked_at)
    url = home.settings.quality.webhook_url
    if alert and url and (report.failed or report.warned):
        report = dataclasses.replace(report, webhook=notify(url, report, home.settings.quality.webhook_timeout_s))
    return report


@dataclass(frozen=True)
class Watch:
    """What :func:`watch_realtime` remembers between two evaluations: the ``realtime.*`` tables
    ``failing`` their freshness SLA, and when results were last stored (``recorded_at``, epoch
    seconds; ``None``: never)."""

    failing: tuple[str, ...] = ()
    recorded_at: float | None = None


def watch_realtime(home: Home, state: Watch, now: dt.datetime | None = None) -> tuple[Report, Watch]:
    """Check the realtime freshness SLA now (:func:`headwater.quality.checks.realtime`).

    Evaluated every minute, it would write a row per table and minute and repeat an alert for
    as long as an incident lasts; so it stores the results when the set of failing tables
    changes or :data:`RECORD_EVERY_S` after the last stored run (``quality.results`` shows it
    is alive), and POSTs the webhook only when a table starts failing. Returns the report
    (``ds``: today, UTC) and the state for the next evaluation."""
    now = now or dt.datetime.now(dt.timezone.utc)
    report = Report(now.date(), now, checks.realtime(home, now))
    failing = tuple(sorted(r.table for r in report.failed))
    due = state.recorded_at is None or now.timestamp() - state.recorded_at >= RECORD_EVERY_S
    store = bool(report.results) and (due or failing != state.failing)
    report = publish(home, report, store=store, alert=bool(set(failing) - set(state.failing)))
    return report, Watch(failing, now.timestamp() if store else state.recorded_at)


# The rows of the latest run of each check (its newest checked_at): runs of different checks
# interleave (the realtime freshness every few minutes, the day's checks once a day).
LATEST = f"""
SELECT * EXCLUDE (latest) FROM (
    SELECT *, checked_at = max(checked_at) OVER (PARTITION BY check_name) AS latest FROM {TABLE}
) WHERE latest ORDER BY check_name, "table", subject, ds, hour
"""


def latest(lake: Lake) -> pa.Table:
    """The ``quality.results`` rows of the latest stored run of each check (empty, with the
    table's schema, before any run): the current state of every check."""
    if not lake.exists(TABLE):
        return QUALITY_RESULTS_SCHEMA.empty_table()
    return lake_sql.query(lake, LATEST)


def failing(lake: Lake) -> dict[str, int]:
    """``{check name: failed results}`` of :func:`latest`, for the checks that fail."""
    out: dict[str, int] = {}
    for r in latest(lake).select(["check_name", "status"]).to_pylist():
        if r["status"] == "fail":
            out[r["check_name"]] = out.get(r["check_name"], 0) + 1
    return out


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
