"""Ad-hoc funnels and retention, computed on read (``GET /api/metrics/funnel``,
``GET /api/metrics/retention/adhoc``), every role.

One definition. A request is computed with the gold model's own SQL: ``gold/funnels.sql``
rendered with a models configuration holding only the requested funnel (steps, window), or
``gold/retention.sql`` rendered with the requested start and return events
(:meth:`headwater.models.dag.Model.sql` with ``config``), run over ``silver.events`` with the
range bound as ``$start`` / ``$end`` exactly as the batch runner binds it
(:func:`headwater.serve.filters.read`, which also applies the property filters ``where``),
and its rows are read with the very query the gold table is read with
(:data:`~headwater.serve.metrics_api.FUNNEL_SQL`, :data:`~headwater.serve.metrics_api.RETENTION_SQL`).
The request's event names reach the SQL as quoted literals of the rendered ``VALUES`` table,
never as SQL text; dates, the platform and filter values are prepared parameters. A request
equal to a shipped definition without a filter (a configured funnel's steps and window;
retention on any event) reads the precomputed gold table instead
(:mod:`headwater.serve.metrics_api`). ``source`` in the answer says which.

Rows and the privacy floor are those of ``/metrics/funnels/{funnel}`` and
``/metrics/retention`` (same columns, same ``persons``). Role: viewer and above, like every
metric endpoint — the request reads silver, but the answer holds only aggregates of at least
k persons and no identifier (the viewer check refuses one, fail closed).

Limits (400 naming the parameter): 2..:data:`MAX_STEPS` steps, each an event name seen in
the lake (tracked events for a funnel); ``window_hours`` 1..168 (the models config's bound,
and gold.funnels' 7-day lookahead); at most :data:`headwater.serve.filters.MAX_DAYS` days
(a read scans silver); ``where`` as for every metric endpoint.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models import config as model_config
from headwater.serve import filters as hw_filters
from headwater.serve import metrics_api
from headwater.serve.api_deps import HomeDep, PrincipalDep
from headwater.serve.filters import SILVER, Filter
from headwater.serve.metrics_api import End, Grain, Platform, Start, Where

MAX_STEPS = 10
ADHOC = "adhoc"  # the funnel's name in the rendered configuration (not in the answer)

router = APIRouter(tags=["metrics"])


def _check_events(home: Home, names: list[str], field: str, track_only: bool) -> None:
    """:class:`InvalidInputError` naming ``field`` unless every name is an event in the lake
    (gold.events_hourly's names, else silver.events'; ``track_only``: tracked events)."""
    table = "gold.events_hourly" if metrics_api._exists(home, "gold.events_hourly") else SILVER
    known: set[str] = set()
    if metrics_api._exists(home, table):
        where = "WHERE event_type = 'track'" if track_only else ""
        known = set(lake_sql.query(Lake.of(home), f"SELECT DISTINCT event_name AS v FROM {table} {where}")["v"].to_pylist())
    unknown = [n for n in names if n not in known]
    if unknown:
        kind = "tracked event" if track_only else "event"
        raise InvalidInputError(f"{field}: unknown {kind} {unknown[0]!r} (not in {table})", field=field)


def funnel_on_read(home: Home, steps: tuple[str, ...], window_hours: float, start: dt.date, end: dt.date,
                   platform: str | None, filters: tuple[Filter, ...] = ()):
    """The rows ``/metrics/funnels/{funnel}`` reads from gold.funnels, computed from the
    events of silver.events matching ``filters`` with ``gold/funnels.sql`` for the one funnel
    (``steps``, ``window_hours``): an Arrow table (ds, platform, step, step_name, entered,
    users, conversion, median_seconds_to_convert, persons); ``None`` if silver.events does
    not exist."""
    config = model_config.ModelConfig(funnels=(model_config.Funnel(ADHOC, steps, float(window_hours)),))
    return hw_filters.read(home, "gold.funnels", metrics_api.FUNNEL_SQL,
                           {"start": start, "end": end, "platform": platform, "funnel": ADHOC}, filters, start, end, config)


def retention_on_read(home: Home, start_event: str | None, return_event: str | None, start: dt.date, end: dt.date,
                      grain: str, filters: tuple[Filter, ...] = ()):
    """The rows ``/metrics/retention`` reads from gold.retention (cohorts starting in
    ``[start, end]``), computed from the events of silver.events matching ``filters`` with
    ``gold/retention.sql`` for the events (``None``: any event): an Arrow table
    (cohort_start, cohort_grain, period, cohort_size, active_users, retention, persons);
    ``None`` if silver.events does not exist."""
    config = model_config.ModelConfig(retention_start_event=start_event, retention_return_event=return_event)
    last = metrics_api.cohort_last_day(end, grain)  # the partitions of the cohorts starting in [start, end]
    return hw_filters.read(home, "gold.retention", metrics_api.RETENTION_SQL,
                           {"start": start, "end": end, "last": last, "grain": grain}, filters, start, last, config)


@router.get("/metrics/funnel", summary="An ad-hoc funnel (any steps, any window), computed on read unless configured")
def adhoc_funnel(home: HomeDep, principal: PrincipalDep,
                 steps: Annotated[str, Query(description=f"Event names in order, comma-separated (2..{MAX_STEPS}).")],
                 window_hours: Annotated[float, Query(ge=1, le=model_config.MAX_FUNNEL_WINDOW_HOURS,
                                                      description="Conversion window from the entry event, hours.")] = 24,
                 start: Start = None, end: End = None, platform: Platform = None, where: Where = None) -> dict:
    """Rows as ``/metrics/funnels/{funnel}``. ``source``: ``gold.funnels`` when the steps and
    window are a configured funnel's (``funnel`` names it) and there is no ``where``, else
    ``silver.events``."""
    names = tuple(s.strip() for s in steps.split(","))
    if len(names) < 2 or len(names) > MAX_STEPS or not all(names):
        raise InvalidInputError(f"steps: needs 2..{MAX_STEPS} non-empty comma-separated event names, got {len(names)}", field="steps")
    filters = hw_filters.parse(where)
    shipped = next((f for f in model_config.load(home).funnels if f.steps == names and f.window_hours == window_hours), None)
    if shipped is not None and not filters:
        body = metrics_api.funnel(home, principal, shipped.name, start, end, platform)
        return {**body, "funnel": shipped.name, "steps": list(names), "window_hours": window_hours}
    _check_events(home, list(names), "steps", track_only=True)
    start, end = metrics_api._date_range(home, SILVER, start, end, on_read=True)
    rows = funnel_on_read(home, names, window_hours, start, end, platform, filters)
    body = metrics_api._answer(home, principal, "funnels", rows, start, end, platform, source=SILVER, filters=filters)
    return {**body, "funnel": None, "steps": list(names), "window_hours": window_hours}


@router.get("/metrics/retention/adhoc", summary="Ad-hoc retention (any start and return events), computed on read")
def adhoc_retention(home: HomeDep, principal: PrincipalDep,
                    start_event: Annotated[str | None, Query(description="Cohort event: a person's first day with it (default: any event).")] = None,
                    return_event: Annotated[str | None, Query(description="Return event counted in later periods (default: any event).")] = None,
                    start: Start = None, end: End = None, grain: Grain = "day", where: Where = None) -> dict:
    """Rows as ``/metrics/retention``. ``source``: ``gold.retention`` for any event as both
    (the shipped definition) without ``where``, else ``silver.events``."""
    filters = hw_filters.parse(where)
    if start_event is None and return_event is None and not filters:
        return {**metrics_api.retention(home, principal, start, end, None, grain), "start_event": None, "return_event": None}
    for field, name in (("start_event", start_event), ("return_event", return_event)):
        if name is not None:
            _check_events(home, [name], field, track_only=False)
    start, end = metrics_api._date_range(home, SILVER, start, end, True, metrics_api.COHORT_DEFAULT_DAYS[grain])
    rows = retention_on_read(home, start_event, return_event, start, end, grain, filters)
    body = metrics_api._answer(home, principal, "retention", rows, start, end, source=SILVER, filters=filters)
    return {**body, "start_event": start_event, "return_event": return_event}
