"""Options shared by several commands, each defined once.

* :func:`setting_option`: an option that overrides one setting (:mod:`headwater.settings`)
  for this run. It has no default of its own: unset, the setting applies (environment,
  ``headwater.toml``, then the declared default, shown in the help). Commands read the value
  from ``home.settings`` after :func:`open_home`, never from the option.
* :func:`date_range`: ``--start`` / ``--end`` as UTC days, ``YYYY-MM-DD`` only.
* :data:`engine_option`: ``--engine`` (setting ``batch.engine``).
"""

from __future__ import annotations

import datetime as dt
import re
import typing
from typing import Any

import click

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.settings import field_info

OVERRIDES = "headwater.overrides"  # ctx.meta key: {dotted setting: value given on the command line}


def setting_option(*decls: str, key: str, help: str, type: Any = None):
    """A click option overriding setting ``key`` (dotted) for this run; ``type`` defaults to
    the choices of a ``Literal`` setting. The help states the setting and its default."""
    info = field_info(key)
    if type is None and typing.get_origin(info.annotation) is typing.Literal:
        type = click.Choice(typing.get_args(info.annotation))
    default = "empty" if info.default in (None, "") else info.default

    def store(ctx: click.Context, _param, value):
        if value is not None:
            ctx.meta.setdefault(OVERRIDES, {})[key] = value

    return click.option(
        *decls, type=type, default=None, expose_value=False, callback=store,
        help=f"{help} Overrides setting {key} (default {default}).",
    )


def open_home() -> Home:
    """The home of ``HEADWATER_HOME`` with its settings, the current command's setting
    options applied. Raises :class:`InvalidInputError` naming a bad setting."""
    ctx = click.get_current_context(silent=True)
    return Home.from_env(**(ctx.meta.get(OVERRIDES, {}) if ctx else {}))


class IsoDate(click.ParamType):
    """A UTC day written ``YYYY-MM-DD`` (nothing else: no week dates, no compact form)."""

    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx) -> dt.date:
        if isinstance(value, dt.date):
            return value
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(value)
            return dt.date.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not a date in YYYY-MM-DD form", param, ctx)


DATE = IsoDate()


def date_range(f):
    """``--start`` and ``--end`` (parameters ``start``, ``end``: ``datetime.date`` or None)."""
    f = click.option("--end", type=DATE, help="Last ds, inclusive (YYYY-MM-DD); default: the last day that can be built.")(f)
    return click.option("--start", type=DATE, help="First ds (YYYY-MM-DD, a UTC day); default: the first ds in bronze.events.")(f)


def check_range(start: dt.date | None, end: dt.date | None) -> None:
    """Raises :class:`InvalidInputError` if both are given and ``start`` is after ``end``."""
    if start and end and start > end:
        raise InvalidInputError(f"--start {start} is after --end {end}", field="--start")


engine_option = setting_option(
    "--engine", key="batch.engine", help="SQL engine of the models: duckdb, or spark (the same SQL on Spark SQL at setting spark.master)."
)
