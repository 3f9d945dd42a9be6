"""The dashboard's pages, declared in TOML: the defaults shipped as ``pages.toml`` beside
this module, merged with ``$HEADWATER_HOME/dashboard.toml`` (same schema) if it exists.

Schema (``[[pages]]`` tables, each with ``[[pages.charts]]``)::

    [[pages]]
    id = "growth"                 # [a-z0-9][a-z0-9_-]*: the URL /dashboard/pages/growth
    title = "Growth"              # required for a new page
    kind = "daily"                # daily (date range + platform controls) | live (updates every second)
    description = "..."           # optional, shown under the title

    [[pages.charts]]
    id = "dau_web"                # unique on the page
    title = "DAU"                 # "{item}" is replaced by the funnel / experiment of for_each
    metric = "active_users"       # a name of headwater.serve.dashboard.sources.METRICS
    params = { grain = "week" }   # the metric's own parameters (funnel, experiment_id, grain, limit, steps, ...)
    kind = "line"                 # line | bar | heatmap | interval | table | stat
    rows = "rows"                 # which list of the metric's answer: rows (default), total, per_minute, by_day
    x = "ds"                      # line, bar, heatmap, interval: the category column
    y = ["dau", "wau"]            # line, bar: value columns; heatmap: the row column; interval: the point
    series = "platform"           # line, bar: one series per value of this column (then one y)
    value = "retention"           # heatmap: the cell value; stat: the answer's scalar (e.g. active_users_5m)
    low = "lift_rel_ci_low"       # interval: the error bar's ends
    high = "lift_rel_ci_high"
    label = "conversion"          # bar: a column shown as a percentage label on each bar
    columns = ["ds", "dau"]       # table: columns shown (default: all)
    rollup = false                # sum the value columns over rows sharing x (and series)
    latest = false                # keep only the rows of the last ds (cumulative results)
    conversion = false            # add conversion (value / first x's) and step_conversion (/ previous x's)
    stack = false                 # bar: stack the series
    for_each = "funnel"           # funnel | experiment: one chart per configured one (sets the metric's parameter)
    description = ""

Merging: a page of ``dashboard.toml`` whose id is a default page's adds its charts to that
page (a chart with an id already there replaces it; a given title or description replaces
the default's); any other page is added after the defaults. :func:`load` raises
:class:`PagesError` (an :class:`InvalidInputError`) naming the file and the key (``pages[1].charts[0].kind: ...``)
for a file that is not valid TOML or breaks the schema.
"""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.serve.dashboard.sources import METRICS

DEFAULTS = Path(__file__).with_name("pages.toml")
USER_FILE = "dashboard.toml"
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Kind = Literal["line", "bar", "heatmap", "interval", "table", "stat"]
# The columns each kind needs (the rest must be unset, so a typo does not go unnoticed).
_NEEDS = {"line": ("x", "y"), "bar": ("x", "y"), "heatmap": ("x", "y", "value"), "interval": ("x", "y", "low", "high"),
          "table": (), "stat": ("value",)}


class PagesError(InvalidInputError):
    """A pages file is not valid TOML or breaks the schema; the message names the file and
    key. A configuration error of the server (HTTP 500), not of the request."""


class Chart(BaseModel):
    """One chart (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Slug
    title: str = Field(min_length=1)
    metric: str
    kind: Kind
    params: dict[str, str | int | float | bool] = {}
    rows: str = "rows"
    x: str | None = None
    y: tuple[str, ...] = ()
    series: str | None = None
    value: str | None = None
    low: str | None = None
    high: str | None = None
    label: str | None = None
    columns: tuple[str, ...] = ()
    rollup: bool = False
    latest: bool = False
    conversion: bool = False
    stack: bool = False
    for_each: Literal["funnel", "experiment"] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _rules(self) -> Chart:
        metric = METRICS.get(self.metric)
        if metric is None:
            raise ValueError(f"metric: unknown metric {self.metric!r} (known: {', '.join(sorted(METRICS))})")
        unknown = sorted(set(self.params) - set(metric.params))
        if unknown:
            raise ValueError(f"params.{unknown[0]}: not a parameter of metric {self.metric} (it takes: {', '.join(metric.params) or 'none'})")
        if self.for_each is not None and self.for_each != metric.each:
            raise ValueError(f"for_each: metric {self.metric} cannot repeat over {self.for_each!r}"
                             + (f" (it repeats over {metric.each!r})" if metric.each else ""))
        missing = [k for k in _NEEDS[self.kind] if not getattr(self, k)]
        if missing:
            raise ValueError(f"{missing[0]}: a {self.kind} chart needs {' and '.join(_NEEDS[self.kind])}")
        if self.kind in ("heatmap", "interval") and len(self.y) != 1:
            raise ValueError(f"y: a {self.kind} chart takes one y column, got {len(self.y)}")
        if self.series and len(self.y) > 1:
            raise ValueError("y: a chart with series takes one y column")
        for flag in ("rollup", "conversion", "stack", "label"):
            if getattr(self, flag) and self.kind not in (("line", "bar", "heatmap") if flag == "rollup" else ("line", "bar")):
                raise ValueError(f"{flag}: not for a {self.kind} chart")
        return self


class Page(BaseModel):
    """One page: its charts in order; ``title`` may be left out when extending a default page."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Slug
    title: str | None = None
    kind: Literal["daily", "live"] = "daily"
    description: str | None = None
    charts: tuple[Chart, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> Page:
        ids = [c.id for c in self.charts]
        dup = next((i for i in ids if ids.count(i) > 1), None)
        if dup is not None:
            raise ValueError(f"charts: chart id {dup!r} appears twice")
        return self


class PagesFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pages: tuple[Page, ...] = ()


def parse(path: Path) -> tuple[Page, ...]:
    """The pages of one file; :class:`InvalidInputError` naming the file and key."""
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PagesError(f"{path}: not valid TOML: {e}", field=str(path)) from None
    try:
        return PagesFile.model_validate(data).pages
    except ValidationError as e:
        err = e.errors()[0]
        key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".")
        message = err["msg"].removeprefix("Value error, ")
        raise PagesError(f"{path}: {key}: {message}" if key else f"{path}: {message}", field=key or str(path)) from None


@functools.cache
def defaults() -> tuple[Page, ...]:
    return parse(DEFAULTS)


def merge(base: tuple[Page, ...], extra: tuple[Page, ...], origin: str) -> tuple[Page, ...]:
    """``base`` with ``extra`` merged in (module docstring); :class:`PagesError` for a
    new page without a title."""
    pages = {p.id: p for p in base}
    for i, page in enumerate(extra):
        old = pages.get(page.id)
        if old is None:
            if not page.title:
                raise PagesError(f"{origin}: pages[{i}].title: a new page needs a title", field=f"pages[{i}].title")
            pages[page.id] = page
            continue
        charts = {c.id: c for c in old.charts} | {c.id: c for c in page.charts}
        pages[page.id] = old.model_copy(update={"title": page.title or old.title, "charts": tuple(charts.values()),
                                                "description": page.description if page.description is not None else old.description})
    return tuple(pages.values())


def load(home: Home) -> tuple[Page, ...]:
    """The dashboard of ``home``: the defaults merged with ``<home>/dashboard.toml`` when it
    exists (read on every call, so an edit applies at the next request)."""
    user = home.root / USER_FILE
    if not user.is_file():
        return defaults()
    return merge(defaults(), parse(user), str(user))
