"""Metric endpoints of the query API (``GET /api/metrics/...``, ``GET /api/live``), every role.

Each daily metric takes ``start`` / ``end`` (``YYYY-MM-DD``, inclusive; default: the 30 days
ending on the last day the metric's table holds, or today without data), at most 366 days,
and ``platform`` (exact match; omitted: every platform). It reads the precomputed gold table
with prepared parameters (user input never becomes SQL text) and answers
``{"metric", "start", "end", "platform", "k", "suppressed", "rows": [...]}``.

Privacy floor (:mod:`headwater.serve.privacy`, k = ``serve.k_anonymity``), for every role:
each row is a breakdown cell whose ``persons`` column is the **smallest distinct-persons
count the row shows** (dau; a retention cell's active users; a funnel step's users; an
experiment variant's converters; a sessions day × platform's persons; a revenue day ×
platform's paying persons; a month × platform's actives); a row under k is
withheld and counted in ``suppressed``. Top events use the largest hourly ``persons`` of the
event in the range, a lower bound of its distinct persons (gold.events_hourly is hourly;
persons do not add up across hours), so the floor errs on the side of withholding. For a
viewer the result also goes through :func:`~headwater.serve.privacy.viewer_result` (no
identifier column ever; none of these queries selects one).

``/api/live`` reads the stream's ``realtime.*`` tables: per-minute event counts by event name
and platform (no person counts: nothing to floor) and active users over all platforms in the
last 5 and 60 minutes (a union of the per-minute HLL sketches: an estimate, ~1.6 % error).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

import datasketches
import pyarrow as pa
from fastapi import APIRouter, Path, Query

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models.config import load as load_models
from headwater.serve.access import Principal, Role
from headwater.serve.api_deps import HomeDep, PrincipalDep
from headwater.serve.privacy import apply_floor, viewer_result

MAX_DAYS = 366
DEFAULT_DAYS = 30
LIVE_TABLES = ("realtime.events_per_minute", "realtime.users_per_minute")

router = APIRouter(tags=["metrics"])

Start = Annotated[dt.date | None, Query(description="First day (UTC, YYYY-MM-DD); default: 29 days before `end`.")]
End = Annotated[dt.date | None, Query(description="Last day (UTC, YYYY-MM-DD, inclusive); default: the last day with data.")]
Platform = Annotated[str | None, Query(description="Only this platform (e.g. web, ios, android, server).")]
_PLATFORM = "(CAST($platform AS VARCHAR) IS NULL OR platform = $platform)"


def _exists(home: Home, table: str) -> bool:
    return Lake.of(home).exists(table)


def _date_range(home: Home, table: str, start: dt.date | None, end: dt.date | None) -> tuple[dt.date, dt.date]:
    """The request's days; :class:`InvalidInputError` naming the parameter for an empty or too long range."""
    if end is None:
        last = lake_sql.query(Lake.of(home), f"SELECT max(ds) AS d FROM {table}")["d"][0].as_py() if _exists(home, table) else None
        end = max(last or dt.datetime.now(dt.timezone.utc).date(), start or dt.date.min)
    if start is None:
        start = end - dt.timedelta(days=DEFAULT_DAYS - 1)
    if end < start:
        raise InvalidInputError(f"end: must be on or after start ({start}), got {end}", field="end")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInputError(f"start: the range {start}..{end} spans {(end - start).days + 1} days, at most {MAX_DAYS}", field="start")
    return start, end


def _read(home: Home, table: str, sql: str, params: dict[str, Any]) -> pa.Table | None:
    """``sql`` over ``table`` with ``params``; ``None`` when the table was never written."""
    if not _exists(home, table):
        return None
    return lake_sql.query(Lake.of(home), sql, params)


def _answer(home: Home, principal: Principal, metric: str, rows: pa.Table | None, start=None, end=None,
            platform=None, limit: int | None = None) -> dict:
    """The response body: ``rows`` under the privacy floor (viewers: also no identifiers)."""
    k = home.settings.serve.k_anonymity
    shown, suppressed = [], 0
    if rows is not None:
        kept = viewer_result(rows, k) if principal.role == Role.VIEWER else apply_floor(rows, k)
        suppressed = rows.num_rows - kept.num_rows
        shown = kept.slice(0, limit).to_pylist() if limit is not None else kept.to_pylist()
    return {"metric": metric, "start": start, "end": end, "platform": platform, "k": k, "suppressed": suppressed, "rows": shown}


@router.get("/metrics/active_users", summary="DAU, WAU, MAU and stickiness per day, by platform")
def active_users(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None) -> dict:
    """Rows of ``gold.active_users_by_platform`` (ds, platform, dau, wau, mau, stickiness =
    dau / mau); ``total``: the same over all platforms (``gold.active_users``, a person counts
    once), only without ``platform``. Trailing windows: 1, 7 and 28 days ending on ds."""
    start, end = _date_range(home, "gold.active_users_by_platform", start, end)
    params = {"start": start, "end": end, "platform": platform}
    rows = _read(home, "gold.active_users_by_platform",
                 "SELECT ds, platform, dau, wau, mau, stickiness, dau AS persons FROM gold.active_users_by_platform "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} ORDER BY ds, platform", params)
    body = _answer(home, principal, "active_users", rows, start, end, platform)
    if platform is None:
        total = _read(home, "gold.active_users", "SELECT ds, dau, wau, mau, stickiness, dau AS persons FROM gold.active_users "
                      "WHERE ds BETWEEN $start AND $end ORDER BY ds", {"start": start, "end": end})
        body["total"] = _answer(home, principal, "active_users", total, start, end)["rows"]
    return body


@router.get("/metrics/monthly_active_users", summary="Calendar-month actives by platform")
def monthly_active_users(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None,
                         platform: Platform = None) -> dict:
    """One row per calendar month touching the range × platform, from
    ``gold.active_users_monthly`` (month to date): month (its first day), platform,
    active_users (distinct persons active from the first of the month to ``through``),
    through (the month's last day in the range with a row), complete (``through`` is the
    month's last day: the whole calendar month)."""
    start, end = _date_range(home, "gold.active_users_monthly", start, end)
    # month-to-date counts only grow within a month: the row of its last day in the range is the answer
    rows = _read(home, "gold.active_users_monthly",
                 "SELECT month, platform, arg_max(active_users, ds) AS active_users, max(ds) AS through, "
                 "max(ds) = last_day(month) AS complete, arg_max(active_users, ds) AS persons FROM gold.active_users_monthly "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} GROUP BY month, platform ORDER BY month, platform",
                 {"start": start, "end": end, "platform": platform})
    return _answer(home, principal, "monthly_active_users", rows, start, end, platform)


@router.get("/metrics/revenue", summary="Exact revenue per day and platform, with revenue per active user")
def revenue(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None) -> dict:
    """Rows of ``gold.revenue``: ds, platform, revenue (the exact sum of the configured revenue
    property, a decimal **string** with 9 decimals, e.g. ``"0.300000000"``: a JSON number would
    go through a binary float), conversions, paying_persons (distinct persons with a conversion
    of positive revenue: the floor applies to them), active_users (DAU) and
    revenue_per_active_user (a float)."""
    start, end = _date_range(home, "gold.revenue", start, end)
    rows = _read(home, "gold.revenue",
                 "SELECT ds, platform, CAST(revenue AS VARCHAR) AS revenue, conversions, paying_persons, active_users, "
                 "revenue_per_active_user, paying_persons AS persons FROM gold.revenue "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} ORDER BY ds, platform",
                 {"start": start, "end": end, "platform": platform})
    return _answer(home, principal, "revenue", rows, start, end, platform)


@router.get("/metrics/retention", summary="Retention matrix: day or week cohorts")
def retention(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None,
              grain: Annotated[Literal["day", "week"], Query(description="Cohorts of first-active days or ISO weeks.")] = "day") -> dict:
    """Rows of ``gold.retention`` whose ``cohort_start`` is in the range: cohort_start,
    period (days 0..30 or weeks 0..12), cohort_size, active_users, retention."""
    if platform is not None:
        raise InvalidInputError("platform: retention cohorts span every platform (gold.retention has no platform breakdown)", field="platform")
    start, end = _date_range(home, "gold.retention", start, end)
    # ds (the partition) is the cohort's last day: cohort_start + 0 (day) or + 6 (week).
    rows = _read(home, "gold.retention",
                 "SELECT cohort_start, cohort_grain, period, cohort_size, active_users, retention, active_users AS persons "
                 "FROM gold.retention WHERE ds BETWEEN $start AND CAST($end AS DATE) + 6 "
                 "AND cohort_start BETWEEN $start AND $end AND cohort_grain = $grain ORDER BY cohort_start, period",
                 {"start": start, "end": end, "grain": grain})
    return _answer(home, principal, "retention", rows, start, end)


def _known(home: Home, table: str, column: str, configured: set[str], value: str, what: str) -> None:
    """:class:`NotFoundError` naming ``what`` unless ``value`` is configured or in ``table``."""
    if value in configured:
        return
    present = set()
    if _exists(home, table):
        present = set(lake_sql.query(Lake.of(home), f"SELECT DISTINCT {column} AS v FROM {table}")["v"].to_pylist())
    if value not in present:
        names = ", ".join(sorted(configured | present)) or "none"
        raise NotFoundError(f"{what}: unknown {what} {value!r} (known: {names})", field=what)


@router.get("/metrics/funnels/{funnel}", summary="A configured funnel: persons per step and step conversion")
def funnel(home: HomeDep, principal: PrincipalDep, funnel: Annotated[str, Path(description="Funnel name (models config).")],
           start: Start = None, end: End = None, platform: Platform = None) -> dict:
    """Rows of ``gold.funnels`` for ``funnel``: ds (entry day), platform (of the entry), step,
    step_name, entered, users (reached the step in order within the window), conversion."""
    _known(home, "gold.funnels", "funnel", {f.name for f in load_models(home).funnels}, funnel, "funnel")
    start, end = _date_range(home, "gold.funnels", start, end)
    rows = _read(home, "gold.funnels",
                 "SELECT ds, platform, step, step_name, entered, users, conversion, users AS persons FROM gold.funnels "
                 f"WHERE ds BETWEEN $start AND $end AND funnel = $funnel AND {_PLATFORM} ORDER BY ds, platform, step",
                 {"start": start, "end": end, "platform": platform, "funnel": funnel})
    return _answer(home, principal, "funnels", rows, start, end, platform)


@router.get("/metrics/experiments/{experiment_id}", summary="An experiment's exposure, conversion, lift with CI, p-value and SRM")
def experiment(home: HomeDep, principal: PrincipalDep, experiment_id: Annotated[str, Path(description="Experiment id (models config).")],
               start: Start = None, end: End = None, platform: Platform = None) -> dict:
    """Rows of ``gold.experiments`` for the experiment, one per ds × variant, cumulative to
    the end of ds (see the model for the statistics)."""
    if platform is not None:
        raise InvalidInputError("platform: experiment results span every platform (gold.experiments has no platform breakdown)", field="platform")
    _known(home, "gold.experiments", "experiment_id", {x.id for x in load_models(home).experiments}, experiment_id, "experiment")
    start, end = _date_range(home, "gold.experiments", start, end)
    rows = _read(home, "gold.experiments",
                 "SELECT * EXCLUDE (experiment_id), converters AS persons FROM gold.experiments "
                 "WHERE ds BETWEEN $start AND $end AND experiment_id = $id ORDER BY ds, NOT is_control, variant",
                 {"start": start, "end": end, "id": experiment_id})
    return _answer(home, principal, "experiments", rows, start, end)


@router.get("/metrics/sessions", summary="Sessions per day and platform: count, median length, bounce rate")
def sessions(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None) -> dict:
    """Per ds × platform of ``gold.sessions``: sessions, median_duration_s, bounce_rate (share
    of one-event sessions), persons (distinct)."""
    start, end = _date_range(home, "gold.sessions", start, end)
    rows = _read(home, "gold.sessions",
                 "SELECT ds, platform, count(*) AS sessions, median(duration_seconds) AS median_duration_s, "
                 "avg(CASE WHEN events = 1 THEN 1.0 ELSE 0.0 END) AS bounce_rate, count(DISTINCT person_id) AS persons "
                 f"FROM gold.sessions WHERE ds BETWEEN $start AND $end AND {_PLATFORM} GROUP BY ds, platform ORDER BY ds, platform",
                 {"start": start, "end": end, "platform": platform})
    return _answer(home, principal, "sessions", rows, start, end, platform)


@router.get("/metrics/top_events", summary="The most frequent events in the range")
def top_events(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None,
               limit: Annotated[int, Query(ge=1, le=1000, description="Most rows returned.")] = 20) -> dict:
    """event_type, event_name, events (sum over ``gold.events_hourly``), persons (the largest
    hourly distinct count: a lower bound), most events first."""
    start, end = _date_range(home, "gold.events_hourly", start, end)
    # Every event name is read, and the limit applied after the floor, so withheld rows do not shorten the list.
    rows = _read(home, "gold.events_hourly",
                 "SELECT event_type, event_name, CAST(sum(events) AS BIGINT) AS events, max(persons) AS persons FROM gold.events_hourly "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} GROUP BY event_type, event_name "
                 "ORDER BY events DESC, event_type, event_name", {"start": start, "end": end, "platform": platform})
    return _answer(home, principal, "top_events", rows, start, end, platform, limit=limit)


@router.get("/live", summary="Seconds-fresh counts from the stream: events per minute, active users in 5 and 60 minutes")
def live(home: HomeDep, principal: PrincipalDep, platform: Platform = None,
         minutes: Annotated[int, Query(ge=1, le=1440, description="Minutes of per-minute counts, up to now.")] = 60) -> dict:
    """``per_minute``: rows (minute, event_name, platform, events) of
    ``realtime.events_per_minute`` from ``minutes`` ago; ``active_users_5m`` /
    ``active_users_60m``: distinct users (HLL estimate, all platforms) of the minutes
    starting in the last 5 / 60 minutes, from ``realtime.users_per_minute``; null without data."""
    now = dt.datetime.now(dt.timezone.utc)
    per_minute = _read(home, LIVE_TABLES[0],
                       "SELECT window_start AS minute, event_name, platform, events FROM realtime.events_per_minute "
                       f"WHERE window_start >= $since AND {_PLATFORM} ORDER BY minute, event_name, platform",
                       {"since": now - dt.timedelta(minutes=minutes), "platform": platform})
    sketches = _read(home, LIVE_TABLES[1], "SELECT window_start, users_sketch FROM realtime.users_per_minute WHERE window_start >= $since",
                     {"since": now - dt.timedelta(minutes=60)})
    return {"now": now, "platform": platform, "minutes": minutes,
            "per_minute": per_minute.to_pylist() if per_minute is not None else [],
            "active_users_5m": _distinct(sketches, now - dt.timedelta(minutes=5)),
            "active_users_60m": _distinct(sketches, now - dt.timedelta(minutes=60))}


def _distinct(sketches: pa.Table | None, since: dt.datetime) -> float | None:
    """The union estimate of the serialized HLL sketches of windows starting at or after ``since``."""
    if sketches is None:
        return None
    union = datasketches.hll_union(21)  # the largest lg_k: a union keeps the smallest of its inputs'
    for start, blob in zip(sketches["window_start"].to_pylist(), sketches["users_sketch"].to_pylist()):
        if start >= since and blob is not None:
            union.update(datasketches.hll_sketch.deserialize(blob))
    return round(union.get_estimate(), 1)
