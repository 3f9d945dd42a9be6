"""Property filters of the metric endpoints, and computing a gold model on read.

Syntax (:data:`SYNTAX`): the query parameter ``where``, repeatable, each
``<field>:<value>``; a request keeps only the events where **every** filter holds (AND).

* ``properties.<key>:<value>`` — a top-level property of the event (``silver.events.properties``,
  a JSON object; for identify events, the traits), e.g. ``where=properties.plan:pro``;
* ``context.<key>:<value>`` or ``context.<key>.<key>:<value>`` — a field of the event's
  context, e.g. ``where=context.app.version:2.3.1``, ``where=context.os.name:iOS``.

A key is a letter or ``_`` followed by letters, digits and ``_`` (at most 64 characters); the
value is everything after the first ``:`` and is compared, exactly, with the field's JSON
value as text (a number or boolean by its JSON text: ``properties.count:3``,
``properties.beta:true``). An event without the field does not match. At most
:data:`MAX_FILTERS` filters. A broken rule is a 400 naming ``where``.

Semantics: the metric is computed as if ``silver.events`` held only the matching events —
the gold model's own SQL (:meth:`headwater.models.dag.Model.sql`, one definition), run on read
over a filtered ``silver.events`` (and, for a gold table read from other models, e.g.
``gold.revenue``, every model between them, each over the range :func:`headwater.models.dag.plan`
gives it). So a filter narrows every event a metric looks at: a funnel's steps, a
retention's start and return events, a session's events, an experiment's exposures and
conversions alike (an exposure event without the property is no exposure under the filter).

Safety: a value reaches DuckDB only as a prepared parameter (``SET VARIABLE … = $value``,
read back with ``getvariable``); a key only after it matched the identifier rule above. A
request computed on read covers at most :data:`MAX_DAYS` days (it scans silver.events).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.models import config as model_config
from headwater.models.dag import MODELS, Model, parameters, plan

SILVER = "silver.events"
MAX_DAYS = 92
MAX_FILTERS = 10
SYNTAX = ("`properties.<key>:<value>` or `context.<key>[.<key>]:<value>`, <key> a letter or _ then letters, "
          "digits or _ (at most 64)")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_DEPTH = {"properties": 1, "context": 2}  # keys after the column: top-level properties; context.app.version


@dataclass(frozen=True)
class Filter:
    """Events whose ``column`` (a JSON object column of silver.events) holds ``value`` (as
    text) at the key path ``keys``."""

    column: str
    keys: tuple[str, ...]
    value: str

    def __str__(self) -> str:
        return f"{self.column}.{'.'.join(self.keys)}:{self.value}"

    def sql(self, variable: str) -> str:
        """The condition, the value read from the DuckDB variable ``variable``."""
        path = "$." + ".".join(f'"{k}"' for k in self.keys)  # keys matched _KEY: no quote inside
        return f"json_extract_string({self.column}, '{path}') = getvariable('{variable}')"


def parse(where: list[str] | None) -> tuple[Filter, ...]:
    """The filters of the ``where`` parameters (``None``: none). :class:`InvalidInputError`
    naming ``where`` and the rule for a malformed one."""
    filters = []
    for item in where or []:
        field, sep, value = item.partition(":")
        column, _, path = field.partition(".")
        keys = tuple(path.split(".")) if path else ()
        if not sep or column not in _DEPTH or not 1 <= len(keys) <= _DEPTH[column] or not all(_KEY.fullmatch(k) for k in keys):
            raise InvalidInputError(f"where: expected {SYNTAX}, got {item!r}", field="where")
        filters.append(Filter(column, keys, value))
    if len(filters) > MAX_FILTERS:
        raise InvalidInputError(f"where: at most {MAX_FILTERS} filters, got {len(filters)}", field="where")
    return tuple(filters)


def check_range(start: dt.date, end: dt.date) -> None:
    """:class:`InvalidInputError` naming ``start`` if ``[start, end]`` is longer than
    :data:`MAX_DAYS`, the most a request computed on read may span."""
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise InvalidInputError(f"start: the range {start}..{end} spans {days} days, at most {MAX_DAYS} when computed "
                                "on read from silver.events (a property filter, an ad-hoc definition)", field="start")


def _upstream(table: str) -> tuple[Model, ...]:
    """The models between silver.events and ``table`` (``table`` included), in DAG order."""
    wanted, models = {table}, []
    for model in reversed(MODELS):
        if model.table in wanted and model.table != SILVER:
            wanted |= set(model.inputs)
            models.append(model)
    return tuple(reversed(models))


def read(home: Home, table: str, sql: str, params: dict[str, Any], filters: tuple[Filter, ...],
         start: dt.date, end: dt.date, config: model_config.ModelConfig | None = None) -> pa.Table | None:
    """``sql`` (DuckDB, bound with ``params``) with ``table`` computed on read for ``ds`` in
    ``[start, end]`` from silver.events holding only the events that match every filter.

    ``table`` and every model between silver.events and it run their own SQL (rendered with
    ``config``, default ``home``'s models configuration) over the ranges
    :func:`headwater.models.dag.plan` gives (history readers from silver's first day), each
    result cast to its table's schema and put in the connection under the table's name, so
    ``sql`` reads it as it would read the stored table. Returns ``None`` if silver.events
    does not exist; raises what :func:`headwater.lake.sql.query` raises."""
    lake = Lake.of(home)
    bounds = lake.ds_range(SILVER)
    if bounds is None and not lake.exists(SILVER):
        return None
    config = config or model_config.load(home)
    variables = {f"hw_where_{i}": f.value for i, f in enumerate(filters)}
    condition = " AND ".join(f.sql(v) for v, f in zip(variables, filters)) or None
    con = lake_sql.connect(lake)
    try:
        with lake_sql.errors():
            for name, value in variables.items():
                con.execute(f"SET VARIABLE {name} = $value", {"value": value})
            lake_sql.register(con, lake, SILVER, where=condition)
            models = _upstream(table)
            for model in models:  # inputs the chain does not compute are read as stored
                for other in set(model.inputs) - {m.table for m in models} - {SILVER}:
                    if not lake_sql.register(con, lake, other):
                        raise NotFoundError(f"{table}: input table {other} is not built yet", field=other)
            floor, ceiling = bounds or (None, None)
            for model, s, e in plan(start, end, models, floor=floor, ceiling=ceiling):
                if model.cumulative:  # its prior state: none before floor, where plan starts it
                    lake_sql.register(con, lake, model.table)
                text = model.sql(config=config)
                # the days of a state it reads, as this connection sees it (computed on read or stored)
                days = lambda t: [d for (d,) in con.sql(f"SELECT DISTINCT ds FROM {t} ORDER BY ds").fetchall()]
                bound = parameters(model, text, s, e, days)
                data = con.sql(text, params=bound).to_arrow_table().select(model.schema.names).cast(model.schema)
                layer, name = model.table.split(".")
                con.register(f"__on_read_{layer}__{name}", data)
                con.execute(f'CREATE OR REPLACE VIEW "{layer}"."{name}" AS SELECT * FROM "__on_read_{layer}__{name}"')
            return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()
