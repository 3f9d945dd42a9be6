"""Declarative stream pipeline: what the stream processor computes, engine-independent.

A :class:`Pipeline` is plain frozen data. headwater's micro-batch engine
(:mod:`headwater.stream.processor`) runs it, and so does the Spark Structured Streaming
runner (``headwater.stream.spark*``): both must give the same windows for the same input
in the same batch order.

Semantics (the vocabulary of Spark Structured Streaming / Flink; times are event time,
``timestamp[us, UTC]``, unless stated):

* **Derived columns** (:class:`Column`): SQL expressions over the canonical event
  (:data:`headwater.events.EVENT_SCHEMA`) evaluated before everything else; keep them to
  the SQL subset DuckDB and Spark SQL share (``coalesce``, ``CASE``, ``CAST``, arithmetic).
  The default defines ``actor_id = coalesce(user_id, anonymous_id)``: the "user" of
  distinct-user counts and sessions.
* **Dedup** (:class:`Dedup`): an event whose ``key`` was seen within ``ttl`` is dropped
  everywhere (bronze and aggregates). The TTL runs in processing time (``received_at``).
* **Watermark** (:class:`Watermark`): per log partition, ``max(event time seen) − delay``,
  each event time first capped at processing time + ``stream.watermark_tolerance_s``
  (:mod:`headwater.stream.watermark`: one far-future event cannot freeze the windows);
  the global watermark is the minimum over partitions that have data and are not idle
  (no new record for ``idle_timeout`` of *processing* time), never decreasing. As in Spark,
  batch N decides lateness with the watermark computed at the end of batch N−1.
* **Lateness**: an event is too late for an aggregate when
  ``event_ts <= watermark − allowed_lateness``; it is left out of that aggregate and written
  to ``bronze.late_events`` (it still reaches ``bronze.events``). With
  ``allowed_lateness = 0`` this is Spark's rule.
* **Windows**: :class:`Tumbling` ``[start, start+size)`` aligned on the epoch;
  :class:`Hopping` ``size`` every ``slide`` (``size`` a multiple of ``slide``; an event is in
  ``size/slide`` windows); :class:`Session` per group: events closer than ``gap`` belong to
  one session ``[first event, last event + gap)``; sessions merge as events fill gaps.
* **Window close**: a window closes when ``window_end <= watermark − allowed_lateness``
  (no event still accepted can fall into it). ``append`` mode emits each window once, when it
  closes; ``update`` mode emits every window that changed in a batch (an upsert on
  ``(window_start, *group_by)``; a session that merged into another is deleted), and forgets
  it when it closes. Windows still open when the input ends are not emitted in append mode.
* **Measures** (:class:`Measure`): ``count`` (events, int64), ``sum`` of a numeric column
  (float64), ``distinct`` of a column (float64 estimate from an Apache DataSketches HLL
  sketch with ``lg_k``, plus ``<name>_sketch``: the serialized, mergeable sketch). Nulls:
  ``sum`` and ``distinct`` ignore them, a null group value is a group of its own, an event
  with a null session key is not sessionised.

Output of aggregate ``name``: Delta table ``realtime.<name>`` with columns ``window_start``,
``window_end`` (``timestamp[us, UTC]``), the ``group_by`` columns, then the measures.

A pipeline loads from a dict or a TOML file (:func:`Pipeline.from_dict`,
:func:`Pipeline.from_toml`); durations are numbers of seconds or strings such as ``"500ms"``,
``"30s"``, ``"10m"``, ``"24h"``, ``"7d"``. Invalid definitions raise :class:`headwater.errors.InvalidInputError` naming the
field and the rule.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from headwater.errors import InvalidInputError

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: Any, field_name: str) -> dt.timedelta:
    """A ``timedelta`` from a timedelta, a number of seconds or ``"<n>ms|s|m|h|d"``."""
    if isinstance(value, dt.timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.timedelta(seconds=value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise InvalidInputError(f"{field_name}: expected a duration such as 30s, 10m or 24h, got {value!r}")


def _format_duration(d: dt.timedelta) -> str:
    ms = round(d.total_seconds() * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


def _ident(value: str, field_name: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value):
        raise InvalidInputError(f"{field_name}: expected an identifier [A-Za-z_][A-Za-z0-9_]*, got {value!r}")
    return value


def _positive(d: dt.timedelta, field_name: str) -> None:
    if d <= dt.timedelta(0):
        raise InvalidInputError(f"{field_name}: must be positive, got {d}")


def us(d: dt.timedelta) -> int:
    """``d`` in whole microseconds."""
    return d // dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Column:
    """Derived column ``name = expr`` (SQL shared by DuckDB and Spark SQL)."""

    name: str
    expr: str


@dataclass(frozen=True)
class Dedup:
    """Drop events whose ``key`` was seen in the last ``ttl`` (processing time)."""

    key: str = "event_id"
    ttl: dt.timedelta = dt.timedelta(hours=24)

    def __post_init__(self):
        _ident(self.key, "dedup.key")
        _positive(self.ttl, "dedup.ttl")


@dataclass(frozen=True)
class Watermark:
    """Event-time watermark: per partition ``max(column) − delay``; a partition without a
    new record for ``idle_timeout`` (processing time) does not hold the global one back."""

    column: str = "event_ts"
    delay: dt.timedelta = dt.timedelta(minutes=10)
    idle_timeout: dt.timedelta = dt.timedelta(seconds=30)

    def __post_init__(self):
        _ident(self.column, "watermark.column")
        if self.delay < dt.timedelta(0):
            raise InvalidInputError(f"watermark.delay: must be >= 0, got {self.delay}")
        _positive(self.idle_timeout, "watermark.idle_timeout")


@dataclass(frozen=True)
class Tumbling:
    """Fixed, non-overlapping windows ``[k·size, (k+1)·size)`` (epoch-aligned, UTC)."""

    size: dt.timedelta

    def __post_init__(self):
        _positive(self.size, "window.size")


@dataclass(frozen=True)
class Hopping:
    """Windows of ``size`` starting every ``slide`` (epoch-aligned); ``size % slide == 0``."""

    size: dt.timedelta
    slide: dt.timedelta

    def __post_init__(self):
        _positive(self.size, "window.size")
        _positive(self.slide, "window.slide")
        if us(self.size) % us(self.slide):
            raise InvalidInputError(f"window.size: must be a multiple of window.slide ({self.slide}), got {self.size}")


@dataclass(frozen=True)
class Session:
    """Per group, events less than ``gap`` apart form one session ``[first, last + gap)``."""

    gap: dt.timedelta = dt.timedelta(minutes=30)

    def __post_init__(self):
        _positive(self.gap, "window.gap")


Window = Tumbling | Hopping | Session


@dataclass(frozen=True)
class Measure:
    """One output column: ``count`` of events, ``sum`` of ``column``, or ``distinct`` values of
    ``column`` (HLL sketch of ``2**lg_k`` buckets, relative error ~1.04/sqrt(2**lg_k))."""

    name: str
    kind: Literal["count", "sum", "distinct"]
    column: str | None = None
    lg_k: int = 12

    def __post_init__(self):
        _ident(self.name, "measure.name")
        if self.kind not in ("count", "sum", "distinct"):
            raise InvalidInputError(f"measure.kind: expected count, sum or distinct, got {self.kind!r}")
        if self.kind == "count" and self.column is not None:
            raise InvalidInputError(f"measure.column: a count takes no column, got {self.column!r}")
        if self.kind != "count":
            _ident(self.column, f"measure {self.name}: column")
        if not 4 <= self.lg_k <= 21:
            raise InvalidInputError(f"measure.lg_k: must be in 4..21 (DataSketches HLL), got {self.lg_k}")

    @classmethod
    def count(cls, name: str = "events") -> "Measure":
        return cls(name, "count")

    @classmethod
    def sum(cls, name: str, column: str) -> "Measure":
        return cls(name, "sum", column)

    @classmethod
    def distinct(cls, name: str, column: str, lg_k: int = 12) -> "Measure":
        return cls(name, "distinct", column, lg_k)


@dataclass(frozen=True)
class Aggregate:
    """A windowed aggregation written to the Delta table ``realtime.<name>``."""

    name: str
    window: Window
    group_by: tuple[str, ...] = ()
    measures: tuple[Measure, ...] = (Measure("events", "count"),)
    output_mode: Literal["append", "update"] = "append"
    allowed_lateness: dt.timedelta = dt.timedelta(0)

    def __post_init__(self):
        _ident(self.name, "aggregate.name")
        for g in self.group_by:
            _ident(g, f"aggregate {self.name}: group_by")
        if not self.measures:
            raise InvalidInputError(f"aggregate {self.name}: measures must not be empty")
        names = [m.name for m in self.measures] + list(self.group_by) + ["window_start", "window_end"]
        names += [f"{m.name}_sketch" for m in self.measures if m.kind == "distinct"]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"aggregate {self.name}: output column names must be unique, got {names}")
        if self.output_mode not in ("append", "update"):
            raise InvalidInputError(f"aggregate {self.name}: output_mode must be append or update, got {self.output_mode!r}")
        if self.allowed_lateness < dt.timedelta(0):
            raise InvalidInputError(f"aggregate {self.name}: allowed_lateness must be >= 0, got {self.allowed_lateness}")
        if isinstance(self.window, Session) and not self.group_by:
            raise InvalidInputError(f"aggregate {self.name}: a session window needs a group_by key")

    @property
    def table(self) -> str:
        return f"realtime.{self.name}"


@dataclass(frozen=True)
class Pipeline:
    """Dedup → watermark → windowed aggregates, with derived ``columns`` computed first."""

    name: str = "default"
    dedup: Dedup = field(default_factory=Dedup)
    watermark: Watermark = field(default_factory=Watermark)
    aggregates: tuple[Aggregate, ...] = ()
    columns: tuple[Column, ...] = (Column("actor_id", "coalesce(user_id, anonymous_id)"),)

    def __post_init__(self):
        _ident(self.name, "pipeline.name")
        names = [a.name for a in self.aggregates]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"pipeline.aggregates: names must be unique, got {names}")
        for c in self.columns:
            _ident(c.name, "columns.name")

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The TOML/JSON-ready form read back by :meth:`from_dict`."""

        def window(w: Window) -> dict[str, Any]:
            if isinstance(w, Tumbling):
                return {"type": "tumbling", "size": _format_duration(w.size)}
            if isinstance(w, Hopping):
                return {"type": "hopping", "size": _format_duration(w.size), "slide": _format_duration(w.slide)}
            return {"type": "session", "gap": _format_duration(w.gap)}

        return {
            "name": self.name,
            "columns": {c.name: c.expr for c in self.columns},
            "dedup": {"key": self.dedup.key, "ttl": _format_duration(self.dedup.ttl)},
            "watermark": {
                "column": self.watermark.column,
                "delay": _format_duration(self.watermark.delay),
                "idle_timeout": _format_duration(self.watermark.idle_timeout),
            },
            "aggregates": [
                {
                    "name": a.name,
                    "window": window(a.window),
                    "group_by": list(a.group_by),
                    "measures": [
                        {"name": m.name, "kind": m.kind}
                        | ({"column": m.column} if m.column else {})
                        | ({"lg_k": m.lg_k} if m.kind == "distinct" else {})
                        for m in a.measures
                    ],
                    "output_mode": a.output_mode,
                    "allowed_lateness": _format_duration(a.allowed_lateness),
                }
                for a in self.aggregates
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Pipeline":
        """Build from the :meth:`to_dict` form; omitted sections take the defaults.
        :class:`~headwater.errors.InvalidInputError` names the offending field."""

        def window(w: dict[str, Any], where: str) -> Window:
            kind = w.get("type")
            if kind == "tumbling":
                return Tumbling(parse_duration(w.get("size"), f"{where}.size"))
            if kind == "hopping":
                return Hopping(parse_duration(w.get("size"), f"{where}.size"), parse_duration(w.get("slide"), f"{where}.slide"))
            if kind == "session":
                return Session(parse_duration(w.get("gap", "30m"), f"{where}.gap"))
            raise InvalidInputError(f"{where}.type: expected tumbling, hopping or session, got {kind!r}")

        dd, wm = d.get("dedup", {}), d.get("watermark", {})
        aggs = []
        for i, a in enumerate(d.get("aggregates", [])):
            where = f"aggregates[{i}]"
            aggs.append(
                Aggregate(
                    name=a.get("name"),
                    window=window(a.get("window", {}), f"{where}.window"),
                    group_by=tuple(a.get("group_by", ())),
                    measures=tuple(
                        Measure(m.get("name"), m.get("kind"), m.get("column"), m.get("lg_k", 12))
                        for m in a.get("measures", [{"name": "events", "kind": "count"}])
                    ),
                    output_mode=a.get("output_mode", "append"),
                    allowed_lateness=parse_duration(a.get("allowed_lateness", 0), f"{where}.allowed_lateness"),
                )
            )
        kw: dict[str, Any] = {}
        if "columns" in d:
            kw["columns"] = tuple(Column(k, v) for k, v in d["columns"].items())
        return cls(
            name=d.get("name", "default"),
            dedup=Dedup(dd.get("key", "event_id"), parse_duration(dd.get("ttl", "24h"), "dedup.ttl")),
            watermark=Watermark(
                wm.get("column", "event_ts"),
                parse_duration(wm.get("delay", "10m"), "watermark.delay"),
                parse_duration(wm.get("idle_timeout", "30s"), "watermark.idle_timeout"),
            ),
            aggregates=tuple(aggs),
            **kw,
        )

    @classmethod
    def from_toml(cls, path: Path | str) -> "Pipeline":
        """Load a pipeline from a TOML file (same layout as :meth:`to_dict`, aggregates as
        ``[[aggregates]]`` tables). :class:`~headwater.errors.InvalidInputError` names the file
        (invalid TOML) or the offending field."""
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise InvalidInputError(f"{path}: not valid TOML: {e}", field=str(path)) from None
        return cls.from_dict(data)


MINUTE, HOUR = dt.timedelta(minutes=1), dt.timedelta(hours=1)

# The live-dashboard aggregates (issue 3). Update mode: a window's row is upserted every batch
# it changes, so the dashboard sees a minute seconds after its events arrive.
DEFAULT_PIPELINE = Pipeline(
    name="default",
    aggregates=(
        Aggregate(
            "events_per_minute",
            Tumbling(MINUTE),
            group_by=("event_name", "platform"),
            measures=(Measure.count("events"),),
            output_mode="update",
        ),
        Aggregate(
            "users_per_minute",
            Tumbling(MINUTE),
            measures=(Measure.count("events"), Measure.distinct("users", "actor_id")),
            output_mode="update",
        ),
        Aggregate(
            "users_per_hour",
            Tumbling(HOUR),
            measures=(Measure.count("events"), Measure.distinct("users", "actor_id")),
            output_mode="update",
        ),
        Aggregate(
            "sessions",
            Session(dt.timedelta(minutes=30)),
            group_by=("actor_id",),
            measures=(Measure.count("events"),),
            output_mode="update",
        ),
    ),
)
