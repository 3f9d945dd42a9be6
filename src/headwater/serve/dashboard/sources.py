"""What the dashboard's charts read: the query API's metric functions, called in-process.

Every metric a chart can name is in :data:`METRICS`. The API metrics call the route functions
of :mod:`headwater.serve.metrics_api` / :mod:`headwater.serve.adhoc_api` directly, so a chart
shows exactly what ``GET /api/...`` answers for the same principal: the same SQL, the same
privacy floor (k = ``serve.k_anonymity``, cells under k withheld and counted in
``suppressed``) and, for a viewer, no identifier column. Two sources are the dashboard's own:

- ``live``: ``GET /api/live``'s answer plus the stream's progress as ``headwater status``
  reports it (:mod:`headwater.serve.progress`): ``events_in_window`` and
  ``events_this_minute`` (sums of ``per_minute``, events), ``watermark_delay_s`` (seconds,
  ``None`` before the stream's first batch), ``records_in_per_s`` and ``lag_events`` (events
  in the log not yet committed by the stream);
- ``quality``: ``quality.results``. ``rows``: the results of the latest run of each check
  (:func:`headwater.quality.alerts.latest`, most severe first); ``by_day``: per day judged in the range × status, ``checks`` (count)
  from that day's last run; ``failed`` / ``warned`` / ``passed``: counts of the last run,
  ``checked_at``. Table-level results, not person breakdowns: no floor applies.

An answer is the API's body: a dict whose lists of row dicts (``rows``, ``total``,
``per_minute``, ``by_day``) charts draw, and scalars (``suppressed``, ``k``, …).
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models.config import load as load_models
from headwater.quality.alerts import TABLE as QUALITY
from headwater.quality.alerts import latest
from headwater.serve import adhoc_api, metrics_api
from headwater.serve.access import Principal
from headwater.serve.progress import log_offsets, query_metrics
from headwater.stream.processor import QUERY

_COMMON = ("home", "principal", "start", "end", "platform", "where")


@dataclass(frozen=True)
class Controls:
    """The page's controls: ``start`` / ``end`` (inclusive UTC days; ``None``: the metric's
    default, the 30 days ending on its last day with data), ``platform`` (``None``: all) and
    ``where``: the API's property filters (``properties.plan:pro``; all must hold)."""

    start: dt.date | None = None
    end: dt.date | None = None
    platform: str | None = None
    where: tuple[str, ...] = ()

    @classmethod
    def parse(cls, query: Mapping[str, str], where: Sequence[str] = ()) -> Controls:
        """From query parameters (empty = unset; ``where``: the repeated parameter's values).
        :class:`InvalidInputError` naming the parameter for a malformed date or ``end``
        before ``start`` (a malformed filter is the metric's to name)."""
        days = {}
        for name in ("start", "end"):
            raw = (query.get(name) or "").strip()
            try:
                days[name] = dt.date.fromisoformat(raw) if raw else None
            except ValueError:
                raise InvalidInputError(f"{name}: must be a date YYYY-MM-DD, got {raw[:40]!r}", field=name) from None
        if days["start"] and days["end"] and days["end"] < days["start"]:
            raise InvalidInputError(f"end: must be on or after start ({days['start']}), got {days['end']}", field="end")
        filters = tuple(w.strip() for w in where if w.strip())
        return cls(days["start"], days["end"], (query.get("platform") or "").strip() or None, filters)

    def query(self) -> list[tuple[str, str]]:
        """The controls as query parameters (unset ones left out), for ``urlencode``."""
        pairs = [("start", self.start), ("end", self.end), ("platform", self.platform)]
        return [(k, str(v)) for k, v in pairs if v is not None] + [("where", w) for w in self.where]


@dataclass(frozen=True)
class Metric:
    """A chart's data source. ``fetch(home, principal, controls, **params)`` → answer;
    ``params``: the keyword parameters a chart may set; ``platform`` / ``dates`` / ``where``:
    whether those controls apply (retention and experiments span every platform); ``each``:
    the models-config list a chart may repeat over (``for_each``), filled into ``each_param``."""

    fetch: Callable[..., dict]
    params: tuple[str, ...] = ()
    platform: bool = True
    dates: bool = True
    where: bool = False
    each: str | None = None
    each_param: str | None = None


def _api(route: Callable[..., dict], platform: bool = True, each: str | None = None, each_param: str | None = None) -> Metric:
    """A metric served by the API route function ``route`` (its other keyword parameters are the chart's params)."""
    signature = inspect.signature(route).parameters
    names = tuple(p for p in signature if p not in _COMMON)
    where = "where" in signature

    def fetch(home: Home, principal: Principal, controls: Controls, **params: Any) -> dict:
        given = {"platform": controls.platform} if platform else {}
        if where:
            given["where"] = list(controls.where) or None
        return route(home, principal, start=controls.start, end=controls.end, **given, **params)

    return Metric(fetch, names, platform, True, where, each, each_param)


def live(home: Home, principal: Principal, controls: Controls, minutes: int = 60) -> dict:
    """``GET /api/live`` for the platform control, with the stream's progress (module docstring)."""
    body = metrics_api.live(home, principal, platform=controls.platform, minutes=minutes)
    now = body["now"].replace(second=0, microsecond=0)
    rows = body["per_minute"]
    body["events_in_window"] = sum(r["events"] for r in rows)
    body["events_this_minute"] = sum(r["events"] for r in rows if r["minute"] >= now)
    stream = query_metrics(home).get(QUERY, {})
    body["watermark_delay_s"] = None if stream.get("watermark_delay_s") is None else round(stream["watermark_delay_s"], 1)
    body["records_in_per_s"] = round(stream.get("records_in_per_s", 0.0), 1)
    body["lag_events"] = sum(t["lag"] for t in log_offsets(home).values())
    return body


_SEVERITY = "CASE status WHEN 'fail' THEN 0 WHEN 'warn' THEN 1 ELSE 2 END"
_ORDER = {"fail": 0, "warn": 1, "pass": 2}
_COLUMNS = ["check_name", "table", "subject", "ds", "hour", "status", "blocking", "observed", "expected", "message", "checked_at"]


def quality(home: Home, principal: Principal, controls: Controls) -> dict:
    """The ``quality.results`` answer (module docstring); empty lists before the first run."""
    body: dict[str, Any] = {"rows": [], "by_day": [], "failed": None, "warned": None, "passed": None, "checked_at": None}
    if not metrics_api._exists(home, QUALITY):
        return body
    start, end = metrics_api._date_range(home, QUALITY, controls.start, controls.end)
    lake = Lake.of(home)
    # the latest run of each check (the realtime-freshness sensor writes its own runs between the daily ones)
    last = sorted(latest(lake).select(_COLUMNS).to_pylist(), key=lambda r: _ORDER[r["status"]])
    by_day = lake_sql.query(
        lake, f"WITH runs AS (SELECT ds, max(checked_at) AS at FROM {QUALITY} WHERE ds BETWEEN $start AND $end GROUP BY ds) "
        f"SELECT r.ds, r.status, count(*) AS checks FROM {QUALITY} r JOIN runs ON r.ds = runs.ds AND r.checked_at = runs.at "
        f"GROUP BY r.ds, r.status ORDER BY r.ds, {_SEVERITY}", {"start": start, "end": end}).to_pylist()
    counts = {s: sum(r["status"] == s for r in last) for s in ("fail", "warn", "pass")}
    return body | {"start": start, "end": end, "rows": last, "by_day": by_day, "failed": counts["fail"],
                   "warned": counts["warn"], "passed": counts["pass"], "checked_at": max((r["checked_at"] for r in last), default=None)}


METRICS: dict[str, Metric] = {
    "active_users": _api(metrics_api.active_users),
    "monthly_active_users": _api(metrics_api.monthly_active_users),
    "retention": _api(metrics_api.retention, platform=False),
    "funnels": _api(metrics_api.funnel, each="funnel", each_param="funnel"),
    "experiments": _api(metrics_api.experiment, platform=False, each="experiment", each_param="experiment_id"),
    "sessions": _api(metrics_api.sessions),
    "revenue": _api(metrics_api.revenue),
    "top_events": _api(metrics_api.top_events),
    "funnel": _api(adhoc_api.adhoc_funnel),
    "retention_adhoc": _api(adhoc_api.adhoc_retention, platform=False),
    "live": Metric(live, ("minutes",), dates=False),
    "quality": Metric(quality, platform=False),
}


def each(home: Home, kind: str) -> list[str]:
    """The names a ``for_each`` chart repeats over: the configured funnels' names or
    experiments' ids (models config of ``home``, in its order), then those only present in
    ``gold.funnels`` / ``gold.experiments`` (configured earlier; the API serves them too)."""
    models = load_models(home)
    if kind == "funnel":
        names, table, column = [f.name for f in models.funnels], "gold.funnels", "funnel"
    else:
        names, table, column = [x.id for x in models.experiments], "gold.experiments", "experiment_id"
    if metrics_api._exists(home, table):
        present = lake_sql.query(Lake.of(home), f"SELECT DISTINCT {column} AS v FROM {table} ORDER BY v")["v"].to_pylist()
        names += [n for n in present if n not in names]
    return names


def platforms(home: Home) -> list[str]:
    """Platforms for the platform control: those of ``gold.active_users_by_platform`` with a
    day of at least k active persons (a platform of fewer is not advertised)."""
    table = "gold.active_users_by_platform"
    if not metrics_api._exists(home, table):
        return []
    rows = lake_sql.query(Lake.of(home), f"SELECT platform FROM {table} GROUP BY platform HAVING max(dau) >= $k ORDER BY platform",
                          {"k": home.settings.serve.k_anonymity})
    return rows["platform"].to_pylist()
