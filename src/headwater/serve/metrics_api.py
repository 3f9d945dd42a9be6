"""Metric endpoints of the query API (``GET /api/metrics/...``, ``GET /api/live``), every role.

Each daily metric takes ``start`` / ``end`` (``YYYY-MM-DD``, inclusive; default: the 30 days
ending on the last day the metric's table holds, or today without data), at most 366 days,
``platform`` (exact match; omitted: every platform) and property filters ``where`` (repeated
``properties.<key>:<value>`` / ``context.<key>[.<key>]:<value>``, all must hold; see
:mod:`headwater.serve.filters`). Without a filter it reads the precomputed gold table with
prepared parameters (user input never becomes SQL text); with one, the gold table has no
properties to filter on, so the same SQL reads the gold model computed on read from the
matching events of ``silver.events`` (at most :data:`headwater.serve.filters.MAX_DAYS`
days). It answers ``{"metric", "start", "end", "platform", "where", "source", "k",
"suppressed", "rows": [...]}``, ``source`` the table read (``silver.events`` on read).

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
last 5 and 60 minutes (a union of the per-minute HLL sketches: an estimate, ~1.6 % error). It
takes no ``where``: the realtime tables hold no properties.

Serving (:mod:`headwater.serve.cache`): every route here answers from a per-process cache,
per role, valid until a table the answer read commits (``/api/live``: also at most 0.5 s old);
over HTTP it is an ``async`` handler running misses in a few worker threads. Gold tables are
read through :func:`headwater.lake.sql.read` (pooled connections, views re-registered per
Delta version). The functions keep their signatures (the dashboard calls them in-process);
``route.__wrapped__`` is the uncached function.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any, Literal

import datasketches
import pyarrow as pa
from fastapi import APIRouter, Path, Query

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models.config import ModelConfig
from headwater.models.config import load as load_models
from headwater.serve import cache
from headwater.serve import filters as hw_filters
from headwater.serve.access import Principal, Role
from headwater.serve.api_deps import HomeDep, PrincipalDep
from headwater.serve.filters import Filter
from headwater.serve.privacy import apply_floor, viewer_result

MAX_DAYS = 366
DEFAULT_DAYS = 30
COHORT_DEFAULT_DAYS = {"day": DEFAULT_DAYS, "week": DEFAULT_DAYS, "month": 366}  # month cohorts: a year of them
LIVE_TABLES = ("realtime.events_per_minute", "realtime.users_per_minute")

router = APIRouter(tags=["metrics"])

Start = Annotated[dt.date | None, Query(description="First day (UTC, YYYY-MM-DD); default: 29 days before `end`.")]
End = Annotated[dt.date | None, Query(description="Last day (UTC, YYYY-MM-DD, inclusive); default: the last day with data.")]
Platform = Annotated[str | None, Query(description="Only this platform (e.g. web, ios, android, server).")]
Where = Annotated[list[str] | None, Query(description=(
    "Property filter, repeatable (all must hold): " + hw_filters.SYNTAX + ", e.g. `properties.plan:pro`, "
    "`context.app.version:2.3.1`. Compared exactly with the field's JSON value as text. A filtered request is "
    f"computed on read from silver.events (at most {hw_filters.MAX_DAYS} days)."))]
Grain = Annotated[Literal["day", "week", "month"], Query(description="Cohorts of first-active days, ISO weeks or calendar months.")]
_PLATFORM = "(CAST($platform AS VARCHAR) IS NULL OR platform = $platform)"

# The rows of the retention matrix and of a funnel, read from the gold table or from the same
# model computed on read (headwater.serve.adhoc_api): one query for both.
RETENTION_SQL = ("SELECT cohort_start, cohort_grain, period, cohort_size, active_users, retention, active_users AS persons "
                 "FROM gold.retention WHERE ds BETWEEN $start AND $last AND cohort_start BETWEEN $start AND $end "
                 "AND cohort_grain = $grain ORDER BY cohort_start, period")
FUNNEL_SQL = ("SELECT ds, platform, step, step_name, entered, users, conversion, median_seconds_to_convert, users AS persons "
              f"FROM gold.funnels WHERE ds BETWEEN $start AND $end AND funnel = $funnel AND {_PLATFORM} ORDER BY ds, platform, step")


def _exists(home: Home, table: str) -> bool:
    return lake_sql.version(Lake.of(home), table) is not None  # recorded: the answer changes when the table appears


def _date_range(home: Home, table: str, start: dt.date | None, end: dt.date | None, on_read: bool = False,
                default_days: int = DEFAULT_DAYS) -> tuple[dt.date, dt.date]:
    """The request's days (default: ``default_days`` ending on ``table``'s last day);
    :class:`InvalidInputError` naming the parameter for an empty or too long range (at most
    :data:`MAX_DAYS`, or :data:`headwater.serve.filters.MAX_DAYS` if computed ``on_read``)."""
    if end is None:
        last = lake_sql.read(Lake.of(home), f"SELECT max(ds) AS d FROM {table}")["d"][0].as_py() if _exists(home, table) else None
        end = max(last or dt.datetime.now(dt.timezone.utc).date(), start or dt.date.min)
    if start is None:
        start = end - dt.timedelta(days=min(default_days, hw_filters.MAX_DAYS if on_read else MAX_DAYS) - 1)
    if end < start:
        raise InvalidInputError(f"end: must be on or after start ({start}), got {end}", field="end")
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInputError(f"start: the range {start}..{end} spans {(end - start).days + 1} days, at most {MAX_DAYS}", field="start")
    if on_read:
        hw_filters.check_range(start, end)
    return start, end


def _read(home: Home, table: str, sql: str, params: dict[str, Any], filters: tuple[Filter, ...] = (),
          days: tuple[dt.date, dt.date] | None = None, config: ModelConfig | None = None) -> pa.Table | None:
    """``sql`` over ``table`` with ``params`` (the served read path,
    :func:`headwater.lake.sql.read`); ``None`` when the table was never written. With
    ``filters``, ``table`` is computed on read over the matching events for ``days`` (default
    ``params["start"]..params["end"]``) with the models ``config`` (default: the home's), see
    :func:`headwater.serve.filters.read`."""
    if filters:
        _exists(home, hw_filters.SILVER)  # recorded even when it does not exist yet (the answer is then empty)
        return hw_filters.read(home, table, sql, params, filters, *(days or (params["start"], params["end"])), config)
    if not _exists(home, table):
        return None
    return lake_sql.read(Lake.of(home), sql, params)


def _answer(home: Home, principal: Principal, metric: str, rows: pa.Table | None, start=None, end=None,
            platform=None, limit: int | None = None, source: str | None = None, filters: tuple[Filter, ...] = ()) -> dict:
    """The response body: ``rows`` under the privacy floor (viewers: also no identifiers);
    ``source``: the table read (``silver.events`` when ``filters`` made it computed on read)."""
    k = home.settings.serve.k_anonymity
    shown, suppressed = [], 0
    if rows is not None:
        kept = viewer_result(rows, k) if principal.role == Role.VIEWER else apply_floor(rows, k)
        suppressed = rows.num_rows - kept.num_rows
        shown = kept.slice(0, limit).to_pylist() if limit is not None else kept.to_pylist()
    return {"metric": metric, "start": start, "end": end, "platform": platform, "where": [str(f) for f in filters],
            "source": hw_filters.SILVER if filters else source, "k": k, "suppressed": suppressed, "rows": shown}


def cohort_last_day(end: dt.date, grain: str) -> dt.date:
    """The last day (``ds``) of the ``grain`` cohort starting on or before ``end`` that holds
    it: ``end`` itself (day), ``end`` + 6 (week: a Monday's Sunday), the last day of ``end``'s
    month (month)."""
    if grain == "month":
        return (end.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
    return end + dt.timedelta(days=6 if grain == "week" else 0)


@cache.route(router.get("/metrics/active_users", summary="DAU, WAU, MAU and stickiness per day, by platform"))
def active_users(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None,
                 where: Where = None) -> dict:
    """Rows of ``gold.active_users_by_platform`` (ds, platform, dau, wau, mau, stickiness =
    dau / mau); ``total``: the same over all platforms (``gold.active_users``, a person counts
    once), only without ``platform``. Trailing windows: 1, 7 and 28 days ending on ds."""
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.active_users_by_platform", start, end, bool(filters))
    params = {"start": start, "end": end, "platform": platform}
    rows = _read(home, "gold.active_users_by_platform",
                 "SELECT ds, platform, dau, wau, mau, stickiness, dau AS persons FROM gold.active_users_by_platform "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} ORDER BY ds, platform", params, filters)
    body = _answer(home, principal, "active_users", rows, start, end, platform, source="gold.active_users_by_platform", filters=filters)
    if platform is None:
        total = _read(home, "gold.active_users", "SELECT ds, dau, wau, mau, stickiness, dau AS persons FROM gold.active_users "
                      "WHERE ds BETWEEN $start AND $end ORDER BY ds", {"start": start, "end": end}, filters)
        body["total"] = _answer(home, principal, "active_users", total, start, end)["rows"]
    return body


@cache.route(router.get("/metrics/monthly_active_users", summary="Calendar-month actives by platform"))
def monthly_active_users(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None,
                         platform: Platform = None, where: Where = None) -> dict:
    """One row per calendar month touching the range × platform, from
    ``gold.active_users_monthly`` (month to date): month (its first day), platform,
    active_users (distinct persons active from the first of the month to ``through``),
    through (the month's last day in the range with a row), complete (``through`` is the
    month's last day: the whole calendar month)."""
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.active_users_monthly", start, end, bool(filters))
    # month-to-date counts only grow within a month: the row of its last day in the range is the answer
    rows = _read(home, "gold.active_users_monthly",
                 "SELECT month, platform, arg_max(active_users, ds) AS active_users, max(ds) AS through, "
                 "max(ds) = last_day(month) AS complete, arg_max(active_users, ds) AS persons FROM gold.active_users_monthly "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} GROUP BY month, platform ORDER BY month, platform",
                 {"start": start, "end": end, "platform": platform}, filters)
    return _answer(home, principal, "monthly_active_users", rows, start, end, platform, source="gold.active_users_monthly",
                   filters=filters)


@cache.route(router.get("/metrics/revenue", summary="Exact revenue per day and platform, with revenue per active user"))
def revenue(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None,
            where: Where = None) -> dict:
    """Rows of ``gold.revenue``: ds, platform, revenue (the exact sum of the configured revenue
    property, a decimal **string** with 9 decimals, e.g. ``"0.300000000"``: a JSON number would
    go through a binary float), conversions, paying_persons (distinct persons with a conversion
    of positive revenue: the floor applies to them), active_users (DAU) and
    revenue_per_active_user (a float). With ``where``, both the conversions and the active
    users are those of the matching events."""
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.revenue", start, end, bool(filters))
    rows = _read(home, "gold.revenue",
                 "SELECT ds, platform, CAST(revenue AS VARCHAR) AS revenue, conversions, paying_persons, active_users, "
                 "revenue_per_active_user, paying_persons AS persons FROM gold.revenue "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} ORDER BY ds, platform",
                 {"start": start, "end": end, "platform": platform}, filters)
    return _answer(home, principal, "revenue", rows, start, end, platform, source="gold.revenue", filters=filters)


@cache.route(router.get("/metrics/retention", summary="Retention matrix: day, week or calendar-month cohorts"))
def retention(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None,
              grain: Grain = "day", where: Where = None) -> dict:
    """Rows of ``gold.retention`` whose ``cohort_start`` is in the range: cohort_start (a
    day, an ISO week's Monday, a month's first day), cohort_grain, period (days 0..30, weeks
    0..12 or months 0..12), cohort_size, active_users, retention. Only complete periods have a
    row. Default range for month cohorts: the 366 days ending on ``end`` (a year of cohorts;
    30 days for the others; computed on read: at most the on-read limit)."""
    if platform is not None:
        raise InvalidInputError("platform: retention cohorts span every platform (gold.retention has no platform breakdown)", field="platform")
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.retention", start, end, bool(filters), COHORT_DEFAULT_DAYS[grain])
    # ds (the partition) is the cohort's last day: the cohorts starting in [start, end] end by `last`
    last = cohort_last_day(end, grain)
    rows = _read(home, "gold.retention", RETENTION_SQL, {"start": start, "end": end, "last": last, "grain": grain},
                 filters, (start, last))
    return _answer(home, principal, "retention", rows, start, end, source="gold.retention", filters=filters)


def _known(home: Home, table: str, column: str, configured: set[str], value: str, what: str) -> None:
    """:class:`NotFoundError` naming ``what`` unless ``value`` is configured or in ``table``."""
    if value in configured:
        return
    present = set()
    if _exists(home, table):
        present = set(lake_sql.read(Lake.of(home), f"SELECT DISTINCT {column} AS v FROM {table}")["v"].to_pylist())
    if value not in present:
        names = ", ".join(sorted(configured | present)) or "none"
        raise NotFoundError(f"{what}: unknown {what} {value!r} (known: {names})", field=what)


@cache.route(router.get("/metrics/funnels/{funnel}", summary="A configured funnel: persons per step, step conversion, median time to convert"))
def funnel(home: HomeDep, principal: PrincipalDep, funnel: Annotated[str, Path(description="Funnel name (models config).")],
           start: Start = None, end: End = None, platform: Platform = None, where: Where = None) -> dict:
    """Rows of ``gold.funnels`` for ``funnel``: ds (entry day), platform (of the entry), step,
    step_name, entered, users (reached the step in order within the window), conversion
    (users / entered), median_seconds_to_convert (median over the step's users of the
    seconds from the entry to the step; null for step 1)."""
    config = load_models(home)
    _known(home, "gold.funnels", "funnel", {f.name for f in config.funnels}, funnel, "funnel")
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.funnels", start, end, bool(filters))
    params = {"start": start, "end": end, "platform": platform, "funnel": funnel}
    # computed on read (a filter) with this funnel's steps only
    one = dataclasses.replace(config, funnels=tuple(f for f in config.funnels if f.name == funnel))
    rows = _read(home, "gold.funnels", FUNNEL_SQL, params, filters, config=one)
    return _answer(home, principal, "funnels", rows, start, end, platform, source="gold.funnels", filters=filters)


@cache.route(router.get("/metrics/experiments/{experiment_id}", summary="An experiment's exposure, conversion, lift with CI, p-value and SRM"))
def experiment(home: HomeDep, principal: PrincipalDep, experiment_id: Annotated[str, Path(description="Experiment id (models config).")],
               start: Start = None, end: End = None, platform: Platform = None, where: Where = None) -> dict:
    """Rows of ``gold.experiments`` for the experiment, one per ds × variant, cumulative to
    the end of ds (see the model for the statistics). With ``where``, exposures and
    conversions are the matching events only."""
    if platform is not None:
        raise InvalidInputError("platform: experiment results span every platform (gold.experiments has no platform breakdown)", field="platform")
    _known(home, "gold.experiments", "experiment_id", {x.id for x in load_models(home).experiments}, experiment_id, "experiment")
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.experiments", start, end, bool(filters))
    rows = _read(home, "gold.experiments",
                 "SELECT * EXCLUDE (experiment_id), converters AS persons FROM gold.experiments "
                 "WHERE ds BETWEEN $start AND $end AND experiment_id = $id ORDER BY ds, NOT is_control, variant",
                 {"start": start, "end": end, "id": experiment_id}, filters)
    return _answer(home, principal, "experiments", rows, start, end, source="gold.experiments", filters=filters)


@cache.route(router.get("/metrics/sessions", summary="Sessions per day and platform: count, median length, bounce rate"))
def sessions(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None,
             where: Where = None) -> dict:
    """Rows of ``gold.sessions_daily`` (``gold.sessions`` pre-aggregated per ds × entry
    platform): ds, platform, sessions, median_duration_s (exact median), bounce_rate (share
    of one-event sessions), persons (distinct). With ``where``, sessions are made of the
    matching events only (gold.sessions, then the daily aggregate, computed on read)."""
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.sessions_daily", start, end, bool(filters))
    rows = _read(home, "gold.sessions_daily",
                 "SELECT ds, platform, sessions, median_duration_s, bounce_rate, persons FROM gold.sessions_daily "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} ORDER BY ds, platform",
                 {"start": start, "end": end, "platform": platform}, filters)
    return _answer(home, principal, "sessions", rows, start, end, platform, source="gold.sessions_daily", filters=filters)


@cache.route(router.get("/metrics/top_events", summary="The most frequent events in the range"))
def top_events(home: HomeDep, principal: PrincipalDep, start: Start = None, end: End = None, platform: Platform = None,
               limit: Annotated[int, Query(ge=1, le=1000, description="Most rows returned.")] = 20, where: Where = None) -> dict:
    """event_type, event_name, events (sum over ``gold.events_hourly``), persons (the largest
    hourly distinct count: a lower bound), most events first."""
    filters = hw_filters.parse(where)
    start, end = _date_range(home, "gold.events_hourly", start, end, bool(filters))
    # Every event name is read, and the limit applied after the floor, so withheld rows do not shorten the list.
    rows = _read(home, "gold.events_hourly",
                 "SELECT event_type, event_name, CAST(sum(events) AS BIGINT) AS events, max(persons) AS persons FROM gold.events_hourly "
                 f"WHERE ds BETWEEN $start AND $end AND {_PLATFORM} GROUP BY event_type, event_name "
                 "ORDER BY events DESC, event_type, event_name", {"start": start, "end": end, "platform": platform}, filters)
    return _answer(home, principal, "top_events", rows, start, end, platform, limit=limit, source="gold.events_hourly", filters=filters)


@cache.route(router.get("/live", summary="Seconds-fresh counts from the stream: events per minute, active users in 5 and 60 minutes"),
             max_age_s=cache.LIVE_MAX_AGE_S)
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
