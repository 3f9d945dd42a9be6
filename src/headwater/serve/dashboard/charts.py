"""A chart's numbers: the metric's answer shaped into the rows the chart draws.

:func:`render` fetches the answer (:mod:`headwater.serve.dashboard.sources`, i.e. the API's
own functions) and :func:`shape` turns it into the chart's rows, in this order:

1. the list ``chart.rows`` of the answer (a ``stat`` chart: one row ``{value: <scalar>}``);
2. ``latest``: only the rows whose ``ds`` is the largest;
3. ``rollup``: rows sharing the chart's dimensions (x, series; a heatmap's y) become one,
   their value columns summed (``None`` counts as nothing), in the order of their first row;
4. ``conversion``: per series, in x order, ``conversion`` = the first value column / its
   value at the first x, ``step_conversion`` = / its value at the previous x;
5. only the chart's columns (:func:`columns`), values made JSON-safe (dates and times as
   ISO 8601 strings, decimals as strings, NaN as ``None``).

The page, the CSV and JSON links and the live page's server-sent events all use these rows,
so the CSV holds exactly the numbers drawn.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from headwater.config import Home
from headwater.errors import HeadwaterError, InvalidInputError
from headwater.serve.access import Principal
from headwater.serve.dashboard.pages import Chart, Page
from headwater.serve.dashboard.sources import METRICS, Controls, each


@dataclass(frozen=True)
class Instance:
    """A chart as drawn on a page: ``item`` is the funnel or experiment of a ``for_each``
    chart (``None`` otherwise); ``key`` names it in URLs and the DOM (``id`` or ``id~item``)."""

    chart: Chart
    item: str | None = None

    @property
    def key(self) -> str:
        return self.chart.id if self.item is None else f"{self.chart.id}~{self.item}"

    @property
    def title(self) -> str:
        return self.chart.title.replace("{item}", self.item or "")


@dataclass
class Rendered:
    """An instance with its rows, the answer's ``suppressed`` / ``k`` (privacy floor) and
    ``error`` (the :class:`HeadwaterError` that kept it from being drawn, rows then empty)."""

    instance: Instance
    rows: list[dict[str, Any]] = field(default_factory=list)
    suppressed: int = 0
    k: int | None = None
    error: HeadwaterError | None = None


def instances(home: Home, page: Page) -> list[Instance]:
    """The page's charts with ``for_each`` ones repeated per configured funnel / experiment."""
    out: list[Instance] = []
    for chart in page.charts:
        out += [Instance(chart, item) for item in each(home, chart.for_each)] if chart.for_each else [Instance(chart)]
    return out


def columns(chart: Chart, rows: list[dict]) -> list[str]:
    """The columns a chart shows: a table's ``columns`` (default: all of the rows'), else its
    x, series, y, heatmap value, interval ends, label and conversion columns."""
    if chart.kind == "table":
        return list(chart.columns) or (list(rows[0]) if rows else [])
    if chart.kind == "stat":
        return [chart.value]
    names = [chart.x, chart.series, *chart.y, chart.value, chart.low, chart.high, chart.label]
    if chart.conversion:
        names += ["conversion", "step_conversion"]
    return list(dict.fromkeys(n for n in names if n))


def _plain(v: Any) -> Any:
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _sum(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(isinstance(v, str) for v in present):  # exact decimals travel as strings (revenue)
        return str(sum(Decimal(v) for v in present))
    return sum(present)


def _check(chart: Chart, answer: dict, rows: list[dict]) -> None:
    """:class:`InvalidInputError` naming the chart's key that asks for something the
    metric's answer does not hold (a user's chart with a typo shows why it is empty)."""
    if chart.kind == "stat":
        if chart.value not in answer:
            scalars = sorted(k for k, v in answer.items() if not isinstance(v, (list, dict)))
            raise InvalidInputError(f"value: metric {chart.metric} has no {chart.value!r} (it has: {', '.join(scalars)})", field="value")
        return
    if not isinstance(answer.get(chart.rows), list):
        lists = sorted(k for k, v in answer.items() if isinstance(v, list))
        raise InvalidInputError(f"rows: metric {chart.metric} has no rows {chart.rows!r} (it has: {', '.join(lists)})", field="rows")
    if not rows:
        return
    wanted = {"x": chart.x, "series": chart.series, "value": chart.value, "low": chart.low, "high": chart.high, "label": chart.label,
              **{f"y[{i}]": c for i, c in enumerate(chart.y)}, **{f"columns[{i}]": c for i, c in enumerate(chart.columns)}}
    if chart.latest:
        wanted["latest"] = "ds"
    for key, column in wanted.items():
        if column and column not in rows[0] and not (key == "label" and chart.conversion):
            raise InvalidInputError(f"{key}: the rows of metric {chart.metric} have no column {column!r} "
                                    f"(columns: {', '.join(rows[0])})", field=key)


def shape(chart: Chart, answer: dict) -> list[dict[str, Any]]:
    """The chart's rows from the metric's answer (module docstring); :class:`InvalidInputError`
    naming the chart's key if it names a column or list the answer does not have."""
    rows = [dict(r) for r in answer.get(chart.rows) or []] if chart.kind != "stat" else []
    _check(chart, answer, rows)
    if chart.kind == "stat":
        return [{chart.value: _plain(answer[chart.value])}]
    if chart.latest and rows:
        last = max(r["ds"] for r in rows)
        rows = [r for r in rows if r["ds"] == last]
    dims = [c for c in (chart.x, chart.series, chart.y[0] if chart.kind == "heatmap" else None) if c]
    measures = [c for c in ((chart.value,) if chart.kind == "heatmap" else chart.y) if c]
    if chart.rollup:
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(tuple(r.get(d) for d in dims), []).append(r)
        rows = [{**dict(zip(dims, key)), **{m: _sum([r.get(m) for r in grp]) for m in measures}} for key, grp in groups.items()]
    if chart.conversion and measures:
        first: dict[Any, Any] = {}
        previous: dict[Any, Any] = {}
        for r in rows:
            s, v = r.get(chart.series) if chart.series else None, r.get(measures[0])
            v = None if v is None else float(v)  # a decimal string (revenue) too
            base, prev = first.setdefault(s, v), previous.get(s, v)
            r["conversion"] = v / base if v is not None and base else None
            r["step_conversion"] = v / prev if v is not None and prev else None
            previous[s] = v
    cols = columns(chart, rows)
    return [{c: _plain(r.get(c)) for c in cols} for r in rows]


def render(home: Home, principal: Principal, instance: Instance, controls: Controls, answers: dict | None = None) -> Rendered:
    """The instance's rows for ``principal`` under ``controls``. A :class:`HeadwaterError`
    of the metric (a bad range, an unknown funnel, the lake unreadable) or of :func:`shape`
    becomes ``error``. ``answers``: a cache of answers shared
    by the charts of one page (charts of the same metric and parameters fetch once)."""
    chart = instance.chart
    metric = METRICS[chart.metric]
    params = dict(chart.params)
    if instance.item is not None:
        params[metric.each_param] = instance.item
    key = (chart.metric, tuple(sorted(params.items())))
    answers = {} if answers is None else answers
    try:
        if key not in answers:
            answers[key] = metric.fetch(home, principal, controls, **params)
        answer = answers[key]
        return Rendered(instance, shape(chart, answer), answer.get("suppressed") or 0, answer.get("k"))
    except HeadwaterError as e:
        return Rendered(instance, error=e)


def to_csv(chart: Chart, rows: list[dict]) -> str:
    """``rows`` as CSV (RFC 4180, header of :func:`columns`; ``None`` as an empty field)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    cols = columns(chart, rows)
    writer.writerow(cols)
    for r in rows:
        writer.writerow(["" if r.get(c) is None else r.get(c) for c in cols])
    return out.getvalue()
