"""Configuration of the batch models: funnels, experiments, conversions, tracked traits, identity policy.

The default is ``headwater/models/config.toml`` (documented there); an installation replaces
it whole with ``$HEADWATER_HOME/models.toml``. :func:`load` reads and validates it into a
:class:`ModelConfig`; :func:`render` puts it into a model's SQL text, so the SQL stays one
engine-neutral statement (DuckDB dialect, transpiled to Spark by sqlglot) with the
configuration inlined as ``VALUES`` tables — the way dbt renders a model from its config:

* ``{{name}}`` — a configuration table as a subquery (see :data:`TABLES`), e.g.
  ``{{funnel_steps}}`` → ``(SELECT * FROM (VALUES ('checkout', 1, 'product_view',
  INTERVAL 86400 SECOND), ...) AS funnel_steps (funnel, step, event_name, conversion_window))``;
  ``{{funnel_event_names}}`` (and ``conversion_event_names``, ``exposure_event_names``,
  ``experiment_conversion_event_names``) is a literal list for ``IN`` instead,
  ``('add_to_cart', 'product_view')`` (a constant filter the scan applies, unlike a join);
* a block between ``-- repeat for k in 2..max_funnel_steps`` and ``-- end repeat`` lines is
  repeated for ``k = 2 .. `` the longest funnel's step count, with ``{k}`` and ``{k-1}``
  replaced (a funnel's steps are matched one after the other, see ``gold/funnels.sql``).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from headwater.config import Home
from headwater.errors import InvalidInputError

MAX_FUNNEL_WINDOW_HOURS = 168  # gold.funnels reads at most 7 days after its range (funnel_lookahead_days)
DEFAULT_STITCH_LOOKBACK_DAYS = 7  # identity.stitch_lookback_days (see ModelConfig)
MAX_STITCH_LOOKBACK_DAYS = 3650  # ten years: in effect every day of history
DEDUP_DAYS = 3  # silver.events compares an event's copies within this many days of event time ({{dedup_days}})
DEFAULT_EXPOSURE_EVENT = "Experiment Viewed"  # Segment A/B testing spec
DEFAULT_REVENUE_PROPERTY = "revenue"  # Segment's E-commerce spec (Order Completed.revenue)


class ConfigError(InvalidInputError):
    """The models configuration breaks a rule; the message names the file, field and rule."""


@dataclass(frozen=True)
class Funnel:
    name: str
    steps: tuple[str, ...]  # event names, in order
    window_hours: float  # conversion window from the entry event


@dataclass(frozen=True)
class Experiment:
    id: str  # value of the exposure's properties.experiment_id
    variants: tuple[str, ...]  # values of properties.variation_id
    weights: tuple[float, ...]  # expected traffic share per variant (sums to 1)
    control: str
    conversion_event: str
    exposure_event: str = DEFAULT_EXPOSURE_EVENT


@dataclass(frozen=True)
class ModelConfig:
    merge_identified_users: bool = False
    # An event takes the person its id was linked to only if it lies at most this many days
    # (UTC ds) before the day of the id's silver.identity_map.stitched_at; older events keep
    # the id itself as their person. Bounds how far back a late identify restates (each day
    # of lookback can cost a daily build one restated day: silver, sessions, funnels).
    stitch_lookback_days: int = DEFAULT_STITCH_LOOKBACK_DAYS
    tracked_traits: tuple[str, ...] = ()
    funnels: tuple[Funnel, ...] = ()
    experiments: tuple[Experiment, ...] = ()
    # gold.conversions: the event names that are conversions (sorted) and the property holding revenue
    conversion_events: tuple[str, ...] = ()
    revenue_property: str = DEFAULT_REVENUE_PROPERTY
    # gold.retention's cohort (start) and return events; None = any event, the shipped
    # definition. Not in models.toml: an ad-hoc retention read renders the same SQL with them set.
    retention_start_event: str | None = None
    retention_return_event: str | None = None


def path(home: Home | None) -> Path:
    """The file :func:`load` reads: ``<home>/models.toml`` if it exists, else the default."""
    if home is not None and (home.root / "models.toml").is_file():
        return home.root / "models.toml"
    return Path(str(resources.files("headwater.models").joinpath("config.toml")))


def load(home: Home | None = None) -> ModelConfig:
    """Read and validate the models configuration of ``home`` (see :func:`path`).

    Raises :class:`ConfigError` naming the file, the field and the rule broken (TOML syntax,
    a wrong type, a funnel with fewer than 2 steps or a window outside (0, 168] hours,
    duplicate names, an experiment whose weights do not match its variants, ...)."""
    file = path(home)
    try:
        doc = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: not valid TOML: {e}") from e

    def need(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ConfigError(f"{file}: {field}: expected {names}, got {value!r}")
        return value

    def strings(value: Any, field: str, at_least: int = 0) -> tuple[str, ...]:
        items = tuple(need(v, str, f"{field}[{i}]") for i, v in enumerate(need(value, list, field)))
        if len(items) < at_least:
            raise ConfigError(f"{file}: {field}: needs at least {at_least} entries, got {len(items)}")
        if any(not v for v in items):
            raise ConfigError(f"{file}: {field}: entries must be non-empty strings")
        return items

    identity = need(doc.get("identity", {}), dict, "identity")
    merge = need(identity.get("merge_identified_users", False), bool, "identity.merge_identified_users")
    lookback = need(identity.get("stitch_lookback_days", DEFAULT_STITCH_LOOKBACK_DAYS), int, "identity.stitch_lookback_days")
    if not 0 <= lookback <= MAX_STITCH_LOOKBACK_DAYS:
        raise ConfigError(f"{file}: identity.stitch_lookback_days: must be in [0, {MAX_STITCH_LOOKBACK_DAYS}] days, got {lookback}")
    dim_user = need(doc.get("dim_user", {}), dict, "dim_user")
    traits = strings(dim_user.get("tracked_traits", []), "dim_user.tracked_traits")

    funnels = []
    for i, f in enumerate(need(doc.get("funnels", []), list, "funnels")):
        at = f"funnels[{i}]"
        need(f, dict, at)
        name = need(f.get("name"), str, f"{at}.name")
        window = need(f.get("window_hours", 24), (int, float), f"{at}.window_hours")
        if not 0 < window <= MAX_FUNNEL_WINDOW_HOURS:
            raise ConfigError(f"{file}: {at}.window_hours: must be in (0, {MAX_FUNNEL_WINDOW_HOURS}], got {window}")
        funnels.append(Funnel(name, strings(f.get("steps"), f"{at}.steps", 2), float(window)))
    _unique([f.name for f in funnels], file, "funnels[].name")

    experiments = []
    for i, x in enumerate(need(doc.get("experiments", []), list, "experiments")):
        at = f"experiments[{i}]"
        need(x, dict, at)
        variants = strings(x.get("variants"), f"{at}.variants", 2)
        _unique(list(variants), file, f"{at}.variants")
        weights = tuple(
            float(need(w, (int, float), f"{at}.weights[{j}]"))
            for j, w in enumerate(need(x.get("weights", [1.0] * len(variants)), list, f"{at}.weights"))
        )
        if len(weights) != len(variants) or any(w <= 0 for w in weights):
            raise ConfigError(f"{file}: {at}.weights: needs one positive weight per variant ({len(variants)}), got {list(weights)}")
        control = need(x.get("control", variants[0]), str, f"{at}.control")
        if control not in variants:
            raise ConfigError(f"{file}: {at}.control: {control!r} is not one of the variants {list(variants)}")
        total = sum(weights)
        experiments.append(
            Experiment(
                id=need(x.get("id"), str, f"{at}.id"),
                variants=variants,
                weights=tuple(w / total for w in weights),
                control=control,
                conversion_event=need(x.get("conversion_event"), str, f"{at}.conversion_event"),
                exposure_event=need(x.get("exposure_event", DEFAULT_EXPOSURE_EVENT), str, f"{at}.exposure_event"),
            )
        )
    _unique([x.id for x in experiments], file, "experiments[].id")

    # Conversions: the listed events, else every experiment's conversion_event and every
    # funnel's last step (the events the configured metrics already call conversions).
    conversions = need(doc.get("conversions", {}), dict, "conversions")
    if "events" in conversions:
        events = strings(conversions["events"], "conversions.events")
    else:
        events = tuple(x.conversion_event for x in experiments) + tuple(f.steps[-1] for f in funnels)
    revenue = need(conversions.get("revenue_property", DEFAULT_REVENUE_PROPERTY), str, "conversions.revenue_property")
    if not revenue or any(c in revenue for c in "\"'\\"):  # it becomes a quoted JSON path key on both engines
        raise ConfigError(f"{file}: conversions.revenue_property: must be a non-empty property name "
                          f"without quotes or backslashes, got {revenue!r}")
    return ModelConfig(merge, lookback, traits, tuple(funnels), tuple(experiments), tuple(sorted(set(events))), revenue)


def _unique(names: list[str], file: Path, field: str) -> None:
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise ConfigError(f"{file}: {field}: must be unique, {dups} repeated")


# -- rendering into SQL ----------------------------------------------------------------------
def _literal(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, _Seconds):
        return f"INTERVAL {int(value)} SECOND"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    raise TypeError(f"no SQL literal for {value!r}")


class _Seconds(int):
    """An interval of whole seconds (rendered ``INTERVAL n SECOND``)."""


def _values(name: str, columns: tuple[tuple[str, str], ...], rows: list[tuple]) -> str:
    """A subquery of ``rows`` with ``columns`` ((name, SQL type), ...); typed even when empty."""
    cols = ", ".join(c for c, _ in columns)
    if not rows:
        nulls = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in columns)
        return f"(SELECT {nulls} WHERE 1 = 0)"
    values = ", ".join("(" + ", ".join(_literal(v) for v in row) + ")" for row in rows)
    return f"(SELECT * FROM (VALUES {values}) AS {name} ({cols}))"


def _funnel_steps(c: ModelConfig) -> str:
    rows = [(f.name, k, step, _Seconds(round(f.window_hours * 3600))) for f in c.funnels for k, step in enumerate(f.steps, 1)]
    cols = (("funnel", "VARCHAR"), ("step", "INTEGER"), ("event_name", "VARCHAR"), ("conversion_window", "INTERVAL"))
    return _values("funnel_steps", cols, rows)


def funnel_lookahead_days(c: ModelConfig) -> int:
    """Days after its entry day a funnel's last step may fall: the longest configured window
    in whole days, rounded up (an entry at 23:59 with a 24-hour window converts the next day);
    0 without funnels. ``gold.funnels`` reads and restates that many days after its range."""
    return max((math.ceil(f.window_hours / 24) for f in c.funnels), default=0)


def _in_list(names: set[str]) -> str:
    return "(" + (", ".join(_literal(n) for n in sorted(names)) or "NULL") + ")"  # IN (NULL) holds for no row


def _funnel_event_names(c: ModelConfig) -> str:
    return _in_list({step for f in c.funnels for step in f.steps})


def _experiments(c: ModelConfig) -> str:
    rows = [(x.id, x.control, x.conversion_event, x.exposure_event) for x in c.experiments]
    cols = (("experiment_id", "VARCHAR"), ("control", "VARCHAR"), ("conversion_event", "VARCHAR"), ("exposure_event", "VARCHAR"))
    return _values("experiments", cols, rows)


def _experiment_variants(c: ModelConfig) -> str:
    rows = [(x.id, v, w) for x in c.experiments for v, w in zip(x.variants, x.weights)]
    return _values("experiment_variants", (("experiment_id", "VARCHAR"), ("variant", "VARCHAR"), ("weight", "DOUBLE")), rows)


def _conversion_events(c: ModelConfig) -> str:
    return _values("conversion_events", (("event_name", "VARCHAR"),), [(e,) for e in c.conversion_events])


def _revenue_property(c: ModelConfig) -> str:
    return _values("revenue_property", (("property", "VARCHAR"),), [(c.revenue_property,)])


def _retention_events(c: ModelConfig) -> str:
    def lit(v: str | None) -> str:
        return "CAST(NULL AS VARCHAR)" if v is None else _literal(v)

    return f"(SELECT {lit(c.retention_start_event)} AS start_event, {lit(c.retention_return_event)} AS return_event)"


def _tracked_traits(c: ModelConfig) -> str:
    return _values("tracked_traits", (("trait", "VARCHAR"),), [(t,) for t in c.tracked_traits])


def _person_id(c: ModelConfig) -> str:
    # The one rule giving an event its person; silver/events.sql and the restatement
    # (headwater.models.run, .restate) render it. Every event's map row is looked up by the
    # id the rule reads (user_id, else anonymous_id); an unmapped id is its own person.
    return (f"CASE WHEN e.ds < CAST(m.stitched_at AS DATE) - {c.stitch_lookback_days} THEN m.id "
            "ELSE coalesce(m.person_id, e.user_id, e.anonymous_id) END")


TABLES: dict[str, Callable[[ModelConfig], str]] = {
    "funnel_steps": _funnel_steps,  # funnel, step (1-based), event_name, conversion_window
    "funnel_event_names": _funnel_event_names,  # ('name', ...): every funnel step's event name, for IN
    # the same literal lists, so a scan skips other events before a join: ('name', ...)
    "conversion_event_names": lambda c: _in_list(set(c.conversion_events)),
    "exposure_event_names": lambda c: _in_list({x.exposure_event for x in c.experiments}),
    "experiment_conversion_event_names": lambda c: _in_list({x.conversion_event for x in c.experiments}),
    "experiments": _experiments,  # experiment_id, control, conversion_event, exposure_event
    "experiment_variants": _experiment_variants,  # experiment_id, variant, weight (sums to 1)
    "tracked_traits": _tracked_traits,  # trait
    "conversion_events": _conversion_events,  # event_name
    "revenue_property": _revenue_property,  # property (one row)
    "retention_events": _retention_events,  # start_event, return_event (one row; NULL: any event)
    "funnel_lookahead_days": lambda c: str(funnel_lookahead_days(c)),  # a literal: gold.funnels' lookahead in days
    "dedup_days": lambda c: str(DEDUP_DAYS),  # a literal: silver.events' dedup window in days
    # an expression: the person_id of event row ``e`` whose silver.identity_map row is ``m``
    # (joined on m.id = coalesce(e.user_id, e.anonymous_id)), stitch_lookback_days applied
    "person_id": _person_id,
}

_REPEAT = re.compile(r"^[ \t]*-- repeat for k in 2\.\.max_funnel_steps\n(.*?)^[ \t]*-- end repeat\n", re.M | re.S)
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def render(sql: str, config: ModelConfig) -> str:
    """``sql`` with the configuration put in (see the module docstring).

    Raises ``KeyError`` for an unknown ``{{name}}``."""
    steps = max((len(f.steps) for f in config.funnels), default=1)

    def repeat(m: re.Match) -> str:
        body = m.group(1)
        return "".join(body.replace("{k-1}", str(k - 1)).replace("{k}", str(k)) for k in range(2, steps + 1))

    sql = _REPEAT.sub(repeat, sql)
    return _PLACEHOLDER.sub(lambda m: TABLES[m.group(1)](config), sql)
