"""Ad-hoc funnels and retention, computed on read (``GET /api/metrics/funnel``,
``GET /api/metrics/retention/adhoc``), every role.

One definition. A request is computed with the gold model's own SQL: ``gold/funnels.sql``
rendered with a models configuration holding only the requested funnel (steps, window), or
``gold/retention.sql`` rendered with the requested start and return events
(:meth:`headwater.models.dag.Model.sql` with ``config``), run over ``silver.events`` with the
range bound as ``$start`` / ``$end`` exactly as the batch runner binds it. The request's
event names reach the SQL as quoted literals of the rendered ``VALUES`` table, never as SQL
text; dates and the platform are prepared parameters. A request equal to a shipped definition
(a configured funnel's steps and window; retention on any event) reads the precomputed gold
table instead (:mod:`headwater.serve.metrics_api`). ``source`` in the answer says which.

Rows and the privacy floor are those of ``/metrics/funnels/{funnel}`` and
``/metrics/retention`` (same columns, same ``persons``). Role: viewer and above, like every
metric endpoint — the request reads silver, but the answer holds only aggregates of at least
k persons and no identifier (the viewer check refuses one, fail closed).

Limits (400 naming the parameter): 2..:data:`MAX_STEPS` steps, each an event name seen in
the lake (tracked events for a funnel); ``window_hours`` 1..168 (the models config's bound,
and gold.funnels' 7-day lookahead); at most :data:`MAX_DAYS` days (a read scans silver).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models import config as model_config
from headwater.models.dag import MODELS
from headwater.serve import metrics_api
from headwater.serve.api_deps import HomeDep, PrincipalDep
from headwater.serve.metrics_api import End, Platform, Start

MAX_STEPS = 10
MAX_DAYS = 92
ADHOC = "adhoc"  # the funnel's name in the rendered configuration (not in the answer)
SILVER = "silver.events"
_MODEL = {m.table: m for m in MODELS}

router = APIRouter(tags=["metrics"])


def _range(home: Home, start: dt.date | None, end: dt.date | None) -> tuple[dt.date, dt.date]:
    start, end = metrics_api._date_range(home, SILVER, start, end)
    if (end - start).days + 1 > MAX_DAYS:
        raise InvalidInputError(f"start: an ad-hoc range {start}..{end} spans {(end - start).days + 1} days, at most {MAX_DAYS} "
                                "(it is computed from silver.events on read)", field="start")
    return start, end


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
                   platform: str | None):
    """The rows ``/metrics/funnels/{funnel}`` reads from gold.funnels, computed from
    silver.events with ``gold/funnels.sql`` for the one funnel (``steps``, ``window_hours``):
    an Arrow table (ds, platform, step, step_name, entered, users, conversion, persons);
    ``None`` if silver.events does not exist."""
    config = model_config.ModelConfig(funnels=(model_config.Funnel(ADHOC, steps, float(window_hours)),))
    text = _MODEL["gold.funnels"].sql(config=config)
    return metrics_api._read(home, SILVER,
                             "SELECT ds, platform, step, step_name, entered, users, conversion, users AS persons "
                             f"FROM (\n{text}\n) AS f WHERE {metrics_api._PLATFORM} ORDER BY ds, platform, step",
                             {"start": start, "end": end, "platform": platform})


def retention_on_read(home: Home, start_event: str | None, return_event: str | None, start: dt.date, end: dt.date,
                      grain: str):
    """The rows ``/metrics/retention`` reads from gold.retention (cohorts starting in
    ``[start, end]``), computed from silver.events with ``gold/retention.sql`` for the
    events (``None``: any event): an Arrow table (cohort_start, cohort_grain, period,
    cohort_size, active_users, retention, persons); ``None`` if silver.events does not exist."""
    config = model_config.ModelConfig(retention_start_event=start_event, retention_return_event=return_event)
    text = _MODEL["gold.retention"].sql(config=config)
    # the model's $end is the last cohort's last day (ds): + 6 for a week cohort starting on end
    return metrics_api._read(home, SILVER,
                             "SELECT cohort_start, cohort_grain, period, cohort_size, active_users, retention, active_users AS persons "
                             f"FROM (\n{text}\n) AS r WHERE cohort_start BETWEEN $first AND $last AND cohort_grain = $grain "
                             "ORDER BY cohort_start, period",
                             {"start": start, "end": end + dt.timedelta(days=6), "first": start, "last": end, "grain": grain})


@router.get("/metrics/funnel", summary="An ad-hoc funnel (any steps, any window), computed on read unless configured")
def adhoc_funnel(home: HomeDep, principal: PrincipalDep,
                 steps: Annotated[str, Query(description=f"Event names in order, comma-separated (2..{MAX_STEPS}).")],
                 window_hours: Annotated[float, Query(ge=1, le=model_config.MAX_FUNNEL_WINDOW_HOURS,
                                                      description="Conversion window from the entry event, hours.")] = 24,
                 start: Start = None, end: End = None, platform: Platform = None) -> dict:
    """Rows as ``/metrics/funnels/{funnel}``. ``source``: ``gold.funnels`` when the steps and
    window are a configured funnel's (``funnel`` names it), else ``silver.events``."""
    names = tuple(s.strip() for s in steps.split(","))
    if len(names) < 2 or len(names) > MAX_STEPS or not all(names):
        raise InvalidInputError(f"steps: needs 2..{MAX_STEPS} non-empty comma-separated event names, got {len(names)}", field="steps")
    shipped = next((f for f in model_config.load(home).funnels if f.steps == names and f.window_hours == window_hours), None)
    if shipped is not None:
        body = metrics_api.funnel(home, principal, shipped.name, start, end, platform)
        return {**body, "source": "gold.funnels", "funnel": shipped.name, "steps": list(names), "window_hours": window_hours}
    _check_events(home, list(names), "steps", track_only=True)
    start, end = _range(home, start, end)
    rows = funnel_on_read(home, names, window_hours, start, end, platform)
    body = metrics_api._answer(home, principal, "funnels", rows, start, end, platform)
    return {**body, "source": SILVER, "funnel": None, "steps": list(names), "window_hours": window_hours}


@router.get("/metrics/retention/adhoc", summary="Ad-hoc retention (any start and return events), computed on read")
def adhoc_retention(home: HomeDep, principal: PrincipalDep,
                    start_event: Annotated[str | None, Query(description="Cohort event: a person's first day with it (default: any event).")] = None,
                    return_event: Annotated[str | None, Query(description="Return event counted in later periods (default: any event).")] = None,
                    start: Start = None, end: End = None,
                    grain: Annotated[Literal["day", "week"], Query(description="Cohorts of days or ISO weeks.")] = "day") -> dict:
    """Rows as ``/metrics/retention``. ``source``: ``gold.retention`` for any event as both
    (the shipped definition), else ``silver.events``."""
    if start_event is None and return_event is None:
        return {**metrics_api.retention(home, principal, start, end, None, grain), "source": "gold.retention",
                "start_event": None, "return_event": None}
    for field, name in (("start_event", start_event), ("return_event", return_event)):
        if name is not None:
            _check_events(home, [name], field, track_only=False)
    start, end = _range(home, start, end)
    rows = retention_on_read(home, start_event, return_event, start, end, grain)
    body = metrics_api._answer(home, principal, "retention", rows, start, end)
    return {**body, "source": SILVER, "start_event": start_event, "return_event": return_event}
