"""Contract validation in the collector: each event's ``properties`` against the latest
version of its event name's schema.

The hot path stays cheap: validators are compiled once per contract version
(``Draft202012Validator``, formats asserted, plus the msgspec fast path of :mod:`.fastpath`
that accepts valid properties in one C pass; ``jsonschema`` then only runs on events the
fast path refuses, to confirm and explain) and kept until the registry changes — its
:meth:`~headwater.registry.store.Store.stamp` is polled at most once a ``interval``
(default 1 s), so a newly registered version applies to requests within about a second,
without a restart. A request with no event of a registered name (and a source that
accepts unregistered names) costs one vectorised ``is_in`` over the ``event_name`` column;
only events of registered names have their properties decoded and validated.

Outcome per event (see :func:`apply`):

* name registered, properties valid → kept, ``schema_version`` = the version (as text, ``"2"``);
* name registered, properties invalid → a bad row ``schema_violation`` whose reason names the
  failing JSON path (``properties.items[0].price``), the rule (the JSON Schema keyword, e.g.
  ``type``, ``required``, ``additionalProperties``), what the rule expects and the JSON type
  found (``expected integer, got string``), and the contract version; the request's other
  events are kept. A reason never quotes the value sent (it may be personal data: an email
  where an integer is expected), only the schema's side and the type and size of the value;
* ``track`` event of an unregistered name → per source (``Source.unregistered_events``):
  ``"accept"``: kept with ``schema_version`` null (``headwater schema list`` counts them);
  ``"reject"``: a ``schema_violation`` bad row (rule ``registered``; the name sent is not
  quoted: it is in the payload, scrubbed). Other event types
  (identify, alias, group, page, screen) have no contract unless their name is registered.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match

from headwater.events import SCHEMA_VIOLATION
from headwater.ingest.badrows import BadRow
from headwater.ingest.canonical import Normalized, Rejection
from headwater.registry import fastpath
from headwater.registry.registry import Registry

log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder().decode


_decode_date_time = msgspec.json.Decoder(fastpath.DATE_TIME).decode


def _date_time(value: object) -> bool:
    """RFC 3339 ``date-time`` with a UTC offset or ``Z``, as msgspec parses it (jsonschema
    asserts ``date-time`` only with an optional package; the fast path uses the same parser)."""
    if not isinstance(value, str):
        return True  # format applies to strings only
    try:
        _decode_date_time(msgspec.json.encode(value))
    except msgspec.ValidationError:
        return False
    return True


FORMAT_CHECKER = FormatChecker()
FORMAT_CHECKER.checks("date-time")(_date_time)


@dataclass(frozen=True)
class Contract:
    """The latest version of one subject, compiled: ``validator`` (jsonschema, the
    reference, which also explains failures) and ``fast`` (:mod:`.fastpath`: a msgspec
    decoder that only accepts valid instances; None if the schema is outside its subset)."""

    subject: str
    version: int
    validator: Draft202012Validator
    fast: Callable[[str | bytes], bool] | None = None


class ContractValidator:
    """The latest contract of every subject in ``registry``, reloaded when it changes
    (polled at most every ``interval`` seconds). ``fast_path=False`` validates with
    ``jsonschema`` only (the reference; bench/registry.py compares). Thread-compatible:
    one per event loop."""

    def __init__(self, registry: Registry, interval: float = 1.0, fast_path: bool = True):
        self.registry = registry
        self.interval = interval
        self.fast_path = fast_path
        self._stamp: Any = object()
        self._checked = float("-inf")
        self._contracts: dict[str, Contract] = {}
        self._names = pa.array([], pa.string())

    def contracts(self) -> dict[str, Contract]:
        """Subject → compiled latest version (refreshed if the registry changed)."""
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            self._refresh()
        return self._contracts

    def _refresh(self) -> None:
        try:
            stamp = self.registry.store.stamp()
            if stamp == self._stamp:
                return
            latest = self.registry.store.latest_all()
        except Exception as e:  # registry unreachable: keep validating with what we have
            log.warning("schema registry unreadable, keeping %d contracts: %s", len(self._contracts), e)
            return
        old = self._contracts
        contracts = {}
        for subject, v in latest.items():
            kept = old.get(subject)
            contracts[subject] = kept if kept is not None and kept.version == v.version else Contract(
                subject, v.version, Draft202012Validator(v.schema, format_checker=FORMAT_CHECKER),
                fastpath.compile_check(v.schema) if self.fast_path else None,
            )
        self._contracts, self._stamp = contracts, stamp
        self._names = pa.array(sorted(contracts), pa.string())

    def names(self) -> pa.Array:
        """The registered event names as an Arrow array (for ``is_in``)."""
        self.contracts()
        return self._names


def violation(validator: Draft202012Validator, properties: Any) -> tuple[str, str, str] | None:
    """``(path, rule, message)`` of the most relevant error of ``properties``, None if
    valid. ``path`` is dotted from ``properties`` (``properties.items[0].sku``); for
    ``required`` it names the missing property, for ``additionalProperties`` the first
    unexpected one. ``message`` (:func:`describe`) never quotes the instance's values."""
    if validator.is_valid(properties):
        return None
    error = best_match(validator.iter_errors(properties))
    path = "properties"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [p for p in error.validator_value if p not in error.instance]
        if missing:
            path += f".{missing[0]}"
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict) and isinstance(error.schema, dict):
        extra = [k for k in error.instance if k not in error.schema.get("properties", {})
                 and not any(re.search(p, k) for p in error.schema.get("patternProperties", {}))]
        if extra:
            path += f".{extra[0]}"
    return path, str(error.validator), describe(str(error.validator), error.validator_value, error.instance)


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value (``integer`` for a whole number)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def describe(rule: str, expected: Any, instance: Any) -> str:
    """What ``rule`` (a JSON Schema keyword with its schema value ``expected``) asks and what
    was found, by JSON type and size only: ``expected integer, got string``. The schema's
    side (limits, patterns, formats) is quoted, shortened; the instance's value never is."""
    found = json_type(instance)
    a_found = ("an " if found[0] in "aeiou" else "a ") + found
    size = len(instance) if isinstance(instance, (str, list, dict)) else None
    want = _short(expected)
    match rule:
        case "type":
            types = expected if isinstance(expected, list) else [expected]
            return f"expected {' or '.join(map(str, types))}, got {found}"
        case "required":
            return "required property is missing"
        case "additionalProperties" | "unevaluatedProperties":
            return "property not allowed by the schema"
        case "enum":
            return f"expected one of the {len(expected)} allowed values, got {a_found} that is not one of them"
        case "const":
            return f"expected the schema's constant value, got {a_found} that differs"
        case "minimum" | "exclusiveMinimum" | "maximum" | "exclusiveMaximum":
            op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[rule]
            return f"expected a number {op} {want}, got {a_found} outside it"
        case "multipleOf":
            return f"expected a multiple of {want}, got {a_found} that is not"
        case "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties" | "maxProperties":
            unit = {"Length": "characters", "Items": "items", "Properties": "properties"}[rule[3:]]
            return f"expected {'at least' if rule.startswith('min') else 'at most'} {want} {unit}, got {size}"
        case "pattern":
            return f"expected a string matching {want}, got a string of {size} characters that does not"
        case "format":
            return f"expected a string in format {want}, got {a_found} that is not"
        case "uniqueItems":
            return "expected unique items, got an array with duplicates"
    return f"got {a_found} that fails rule `{rule}`"


def _short(value: Any, limit: int = 80) -> str:
    """A schema value as short text (limits, patterns and formats can be long)."""
    text = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def apply(
    norm: Normalized,
    validator: ContractValidator,
    *,
    messages: Sequence[Any],
    at: Callable[[int], str],
    reject_unregistered: bool,
    redact: Callable[[bytes], str],
    source: str,
    received_at_us: int,
    protocol: str | None = "segment",
) -> Normalized:
    """``norm`` with its events checked against their contracts (see the module doc).

    ``norm.events`` must hold one row per accepted message in request order (so the k-th
    row is the k-th message index not in ``norm.errors``); ``messages`` are the request's
    raw messages (the payload of a bad row, through ``redact``); ``at(i)`` is the JSON path
    of message ``i`` in the request (``$.batch[3]``). Returns a new :class:`Normalized`
    with the rejected events moved to its rejections (sorted by index; bad rows with
    ``field`` = the JSON path and ``rule`` = the JSON Schema keyword) and ``schema_version``
    set on the validated ones."""
    events = norm.events
    contracts = validator.contracts()
    if events.num_rows == 0 or (not contracts and not reject_unregistered):
        return norm
    names = events.column("event_name")
    registered = pc.fill_null(pc.is_in(names, value_set=validator.names()), False)
    unregistered_rejects = None
    if reject_unregistered:
        is_track = pc.equal(events.column("event_type"), "track")
        unregistered_rejects = pc.and_(is_track, pc.invert(registered))
        if not pc.any(unregistered_rejects).as_py():
            unregistered_rejects = None
    if not pc.any(registered).as_py() and unregistered_rejects is None:
        return norm

    rejected_rows: dict[int, tuple[str, str, str]] = {}  # row → (path in the message, rule, reason)
    versions: list[str | None] = [None] * events.num_rows
    rows = pc.indices_nonzero(registered).to_pylist()
    take = pa.array(rows, pa.int64())  # typed: an empty Python list would be a null array
    row_names = names.take(take).to_pylist()
    props = events.column("properties").take(take).to_pylist()
    for row, name, text in zip(rows, row_names, props):
        c = contracts[name]
        if c.fast is not None and c.fast(text or "{}"):  # valid for sure: skip jsonschema
            versions[row] = str(c.version)
            continue
        try:
            found = violation(c.validator, _decode(text) if text else {})
        except Exception as e:  # e.g. RecursionError on absurdly deep data: refuse this event only
            found = ("properties", "validation", f"could not be validated ({type(e).__name__})")  # the text may quote values
        if found is None:
            versions[row] = str(c.version)
        else:
            path, rule, message = found
            rejected_rows[row] = (path, rule, f"Field `{path}`: {message} (rule `{rule}` of schema {name!r} version {c.version})")
    if unregistered_rejects is not None:
        for row in pc.indices_nonzero(unregistered_rejects).to_pylist():
            rejected_rows[row] = ("event", "registered", f"Field `event`: the event name has no registered schema and source {source!r} rejects unregistered events (rule `registered`)")

    # Message index of each event row: the request's indices minus the rejected ones.
    refused = {r.index for r in norm.rejections}
    indices = [i for i in range(events.num_rows + len(refused)) if i not in refused]
    rejections = list(norm.rejections)
    for row, (path, rule, reason) in sorted(rejected_rows.items()):
        i = indices[row]
        field = f"{at(i)}.{path}"
        bad = BadRow(SCHEMA_VIOLATION, f"{reason} - at `{field}`", source, received_at_us, redact(bytes(messages[i])), protocol, field, rule)
        rejections.append(Rejection(i, bad))
    rejections.sort(key=lambda r: r.index)

    column = pa.array(versions, pa.string())
    out = events.set_column(events.schema.get_field_index("schema_version"), events.schema.field("schema_version"), column)
    if rejected_rows:
        keep = [True] * events.num_rows
        for row in rejected_rows:
            keep[row] = False
        out = out.filter(pa.array(keep))
    return Normalized(out, rejections)
