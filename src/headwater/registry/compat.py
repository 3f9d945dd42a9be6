"""Schema compatibility of JSON Schema contracts, as Confluent Schema Registry defines it.

Modes (Confluent Schema Registry, "Schema Evolution and Compatibility",
https://docs.confluent.io/platform/current/schema-registry/fundamentals/schema-evolution.html):

========================  =========================================================  ==========
mode                      the new schema must be compatible with                     as
========================  =========================================================  ==========
``BACKWARD`` (default)    the latest version: consumers using the *new* schema can    reader
                          read data written with the latest one
``FORWARD``               the latest version: consumers using the latest schema can   writer
                          read data written with the *new* one
``FULL``                  both of the above
``*_TRANSITIVE``          the same, against *every* earlier version
``NONE``                  nothing is checked
========================  =========================================================  ==========

Rules. JSON Schema does not define compatibility itself; the rules here are the ones
Confluent's JSON Schema provider applies (``io.confluent.kafka.schemaregistry.json.diff``,
explained by its author in https://yokota.blog/2021/03/29/understanding-json-schema-compatibility/),
re-implemented for the keywords event contracts use, with Confluent's names for each change.
:func:`differences` compares a *writer* schema (the data that exists) with a *reader* schema
(the schema that must accept it); a change is incompatible when the reader could refuse a
document the writer accepts. The central point is the content model of an object:

* **open** (``additionalProperties`` absent or ``true``, no ``patternProperties``): any
  undeclared property may be present with any value. So a property *added* to an open
  reader is refused (``PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL``: old data may already carry it
  with another type), and a property *removed* from an open reader is fine.
* **closed** (``additionalProperties: false``): undeclared properties cannot occur. A new
  optional property is fine (``OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL``), a new
  required one is not (``REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL``, unless it has a
  ``default``), and a property removed from a closed reader is refused
  (``PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL``).
* **partially open** (``additionalProperties`` a schema, or ``patternProperties``): an added or
  removed property must be covered by the schema undeclared properties get.

So a contract that is meant to evolve under ``BACKWARD`` (add optional properties over time)
is written closed, ``"additionalProperties": false`` — as Snowplow's Iglu schemas are.
Other rules: a type may widen (``integer`` → ``number``, ``T`` → ``[T, "null"]``:
``TYPE_EXTENDED``) but not narrow or change (``TYPE_NARROWED``, ``TYPE_CHANGED``); making a
property required is refused (``REQUIRED_ATTRIBUTE_ADDED``), making it optional is fine;
``enum`` may grow, not shrink; bounds (``maximum``, ``maxLength``, ``maxItems``, …) may relax,
not tighten; ``pattern`` / ``format`` may be removed, not added or changed. Annotations
(``title``, ``description``, ``default``, ``examples``, ``$comment``, …) never matter.
Keywords outside this set (``anyOf``, ``oneOf``, ``allOf``, ``not``, ``$ref``, ``if``, …) are
compared for equality only: a change in them is reported as ``<KEYWORD>_CHANGED``
(incompatible), since compatibility cannot be shown without Confluent's full set-theoretic
treatment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from headwater.errors import InvalidInputError

MODES = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)
DEFAULT_MODE = "BACKWARD"

# Keywords that describe and never constrain: changes are always compatible.
_ANNOTATIONS = {
    "title", "description", "default", "examples", "$comment", "$id", "$schema", "$anchor",
    "deprecated", "readOnly", "writeOnly", "contentMediaType", "contentEncoding",
}
# Keywords compared structurally below; every other keyword is compared for equality.
_HANDLED = {
    "type", "enum", "const", "properties", "required", "additionalProperties", "patternProperties",
    "minProperties", "maxProperties", "items", "minItems", "maxItems", "uniqueItems",
    "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
}
_JSON_TYPES = ("null", "boolean", "object", "array", "number", "integer", "string")


@dataclass(frozen=True)
class Difference:
    """One change between a writer and a reader schema.

    ``kind``: Confluent's name of the change (e.g. ``TYPE_CHANGED``); ``path``: JSON pointer
    into the schema (``#/properties/revenue/type``); ``field``: the property it concerns as a
    dotted path (``revenue``, ``items[].sku``; ``""`` for the top level); ``compatible``:
    whether the reader still accepts everything the writer does; ``detail``: what changed."""

    kind: str
    path: str
    field: str
    compatible: bool
    detail: str

    def describe(self) -> str:
        where = f"field `{self.field}`" if self.field else "the top-level object"
        return f"{where}: {self.kind} ({self.detail}) at {self.path}"


def differences(writer: Any, reader: Any) -> list[Difference]:
    """Every change from ``writer`` to ``reader`` (JSON Schema documents as Python values:
    ``dict`` or ``bool``), compatible or not, in schema order."""
    out: list[Difference] = []
    _compare(out, writer, reader, "#", "")
    return out


def incompatibilities(writer: Any, reader: Any) -> list[Difference]:
    """The changes that make ``reader`` refuse a document ``writer`` accepts."""
    return [d for d in differences(writer, reader) if not d.compatible]


def pairs(mode: str, new: Any, previous: list[tuple[int, Any]]) -> Iterable[tuple[int, str, Any, Any]]:
    """The ``(version, direction, writer, reader)`` checks ``mode`` asks of schema ``new``
    against ``previous`` (``[(version, schema)]``, oldest first). ``direction`` is
    ``"backward"`` (new reads old) or ``"forward"`` (old reads new).

    Raises :class:`~headwater.errors.InvalidInputError` for an unknown mode."""
    if mode not in MODES:
        raise InvalidInputError(f"compatibility: {mode!r} is not one of {', '.join(MODES)}", field="compatibility")
    if mode == "NONE" or not previous:
        return []
    against = previous if mode.endswith("_TRANSITIVE") else previous[-1:]
    base = mode.removesuffix("_TRANSITIVE")
    checks = []
    for version, old in reversed(against):  # newest first: the likeliest culprit is named first
        if base in ("BACKWARD", "FULL"):
            checks.append((version, "backward", old, new))
        if base in ("FORWARD", "FULL"):
            checks.append((version, "forward", new, old))
    return checks


# -- the comparison -------------------------------------------------------------------------
def _sub(path: str, *parts: str) -> str:
    return "/".join([path, *(p.replace("~", "~0").replace("/", "~1") for p in parts)])


def _field(field: str, name: str) -> str:
    return f"{field}.{name}" if field else name


def _add(out, kind, path, field, ok, detail):
    out.append(Difference(kind, path, field, ok, detail))


def _as_dict(schema: Any) -> dict | None:
    """``True`` → ``{}``; ``False`` → None (matches nothing); dicts as they are."""
    if schema is True:
        return {}
    if schema is False:
        return None
    return schema


def _types(s: dict) -> set[str] | None:
    t = s.get("type")
    if t is None:
        if "enum" in s or "const" in s:
            values = s["enum"] if "enum" in s else [s["const"]]
            return {_type_of(v) for v in values}
        return None
    return {t} if isinstance(t, str) else set(t)


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "integer" if v.is_integer() else "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _covers(reader: set[str], writer: set[str]) -> bool:
    """Does a reader accepting types ``reader`` accept every value of types ``writer``?"""
    return all(t in reader or (t == "integer" and "number" in reader) for t in writer)


def _compare(out: list[Difference], writer: Any, reader: Any, path: str, field: str) -> None:
    w, r = _as_dict(writer), _as_dict(reader)
    if w is None or r == {}:  # the writer writes nothing, or the reader takes anything
        return
    if r is None:
        _add(out, "TYPE_CHANGED", path, field, False, "the reader schema is `false` and accepts nothing")
        return

    wt, rt = _types(w), _types(r)
    if rt is not None:
        if wt is None:
            _add(out, "TYPE_NARROWED", _sub(path, "type"), field, False, f"writer any type, reader {_fmt_types(rt)}")
            return
        if not _covers(rt, wt):
            kind = "TYPE_NARROWED" if _covers(wt, rt) else "TYPE_CHANGED"
            _add(out, kind, _sub(path, "type"), field, False, f"writer {_fmt_types(wt)}, reader {_fmt_types(rt)}")
            return
        if rt != wt and "type" in r:
            _add(out, "TYPE_EXTENDED", _sub(path, "type"), field, True, f"writer {_fmt_types(wt)}, reader {_fmt_types(rt)}")
    elif wt is not None and "type" in w:
        _add(out, "TYPE_EXTENDED", _sub(path, "type"), field, True, f"writer {_fmt_types(wt)}, reader any type")

    _compare_enum(out, w, r, path, field)
    for key, name, looser in _BOUNDS:
        _compare_bound(out, w, r, path, field, key, name, looser)
    _compare_exact(out, w, r, path, field, "pattern", "PATTERN")
    _compare_exact(out, w, r, path, field, "format", "FORMAT")
    if w.get("uniqueItems", False) != r.get("uniqueItems", False):
        ok = not r.get("uniqueItems", False)
        _add(out, "UNIQUE_ITEMS_REMOVED" if ok else "UNIQUE_ITEMS_ADDED", _sub(path, "uniqueItems"), field, ok, "uniqueItems " + ("dropped" if ok else "required"))
    if "items" in w or "items" in r:
        _compare(out, w.get("items", True), r.get("items", True), _sub(path, "items"), field + "[]")
    if _is_object_schema(w) or _is_object_schema(r):
        _compare_object(out, w, r, path, field)

    for key in sorted((set(w) | set(r)) - _HANDLED - _ANNOTATIONS):
        if w.get(key) != r.get(key):
            kind = re.sub(r"(?<!^)(?=[A-Z])", "_", key.lstrip("$")).upper() + "_CHANGED"
            _add(out, kind, _sub(path, key), field, False, f"`{key}` differs; only equal values are known to be compatible")


def _fmt_types(types: set[str]) -> str:
    ordered = [t for t in _JSON_TYPES if t in types]
    return ordered[0] if len(ordered) == 1 else "[" + ", ".join(ordered) + "]"


def _compare_enum(out, w, r, path, field) -> None:
    we = w["enum"] if "enum" in w else ([w["const"]] if "const" in w else None)
    re_ = r["enum"] if "enum" in r else ([r["const"]] if "const" in r else None)
    if we == re_ or re_ is None:
        if we is not None and re_ is None:
            _add(out, "ENUM_ARRAY_REMOVED", _sub(path, "enum"), field, True, "the reader no longer restricts values")
        return
    if we is None:
        _add(out, "ENUM_ARRAY_ADDED", _sub(path, "enum"), field, False, f"values restricted to {re_}")
        return
    missing = [v for v in we if v not in re_]
    if not missing:
        _add(out, "ENUM_ARRAY_EXTENDED", _sub(path, "enum"), field, True, f"writer {we}, reader {re_}")
    else:
        kind = "ENUM_ARRAY_NARROWED" if all(v in we for v in re_) else "ENUM_ARRAY_CHANGED"
        _add(out, kind, _sub(path, "enum"), field, False, f"values {missing} are no longer allowed")


# (keyword, change name, words for a looser / tighter value): a reader may only loosen.
_BOUNDS = (
    ("maxLength", "MAX_LENGTH", ("INCREASED", "DECREASED")),
    ("minLength", "MIN_LENGTH", ("DECREASED", "INCREASED")),
    ("maximum", "MAXIMUM", ("INCREASED", "DECREASED")),
    ("minimum", "MINIMUM", ("DECREASED", "INCREASED")),
    ("exclusiveMaximum", "EXCLUSIVE_MAXIMUM", ("INCREASED", "DECREASED")),
    ("exclusiveMinimum", "EXCLUSIVE_MINIMUM", ("DECREASED", "INCREASED")),
    ("multipleOf", "MULTIPLE_OF", ("REDUCED", "CHANGED")),
    ("maxItems", "MAX_ITEMS", ("INCREASED", "DECREASED")),
    ("minItems", "MIN_ITEMS", ("DECREASED", "INCREASED")),
    ("maxProperties", "MAX_PROPERTIES", ("INCREASED", "DECREASED")),
    ("minProperties", "MIN_PROPERTIES", ("DECREASED", "INCREASED")),
)


def _looser(key: str, old: float, new: float) -> bool:
    if key == "multipleOf":  # every multiple of old is a multiple of new
        return (old / new).is_integer()
    return new > old if key.startswith(("max", "exclusiveMax")) else new < old


def _compare_bound(out, w, r, path, field, key, name, words) -> None:
    o, n = w.get(key), r.get(key)
    if o == n:
        return
    p = _sub(path, key)
    if o is None:
        _add(out, f"{name}_ADDED", p, field, False, f"{key} {n} added")
    elif n is None:
        _add(out, f"{name}_REMOVED", p, field, True, f"{key} {o} removed")
    else:
        ok = _looser(key, o, n)
        _add(out, f"{name}_{words[0] if ok else words[1]}", p, field, ok, f"{key}: writer {o}, reader {n}")


def _compare_exact(out, w, r, path, field, key, name) -> None:
    o, n = w.get(key), r.get(key)
    if o == n:
        return
    p = _sub(path, key)
    if n is None:
        _add(out, f"{name}_REMOVED", p, field, True, f"{key} {o!r} removed")
    elif o is None:
        _add(out, f"{name}_ADDED", p, field, False, f"{key} {n!r} added")
    else:
        _add(out, f"{name}_CHANGED", p, field, False, f"{key}: writer {o!r}, reader {n!r}")


# -- objects ------------------------------------------------------------------------------
def _is_object_schema(s: dict) -> bool:
    t = _types(s)
    return (t is not None and "object" in t) or any(k in s for k in ("properties", "required", "additionalProperties", "patternProperties"))


def _is_open(s: dict) -> bool:
    return not s.get("patternProperties") and s.get("additionalProperties", True) in (True, {})


def _undeclared_schema(s: dict, name: str) -> Any:
    """The schema a property ``name`` gets when ``s`` does not declare it (partial model)."""
    for pattern, sub in (s.get("patternProperties") or {}).items():
        if re.search(pattern, name):
            return sub
    return s.get("additionalProperties", True)


def _compare_object(out, w, r, path, field) -> None:
    wp, rp = w.get("properties") or {}, r.get("properties") or {}
    wreq, rreq = set(w.get("required") or ()), set(r.get("required") or ())

    for name in [n for n in wp if n in rp]:  # required-ness of properties both declare
        sub, f = _sub(path, "required", name), _field(field, name)
        if name in wreq and name not in rreq:
            _add(out, "REQUIRED_ATTRIBUTE_REMOVED", sub, f, True, "required by the writer, optional for the reader")
        elif name not in wreq and name in rreq:
            if _has_default(rp[name]):
                _add(out, "REQUIRED_ATTRIBUTE_WITH_DEFAULT_ADDED", sub, f, True, "required by the reader, with a default")
            else:
                _add(out, "REQUIRED_ATTRIBUTE_ADDED", sub, f, False, "required by the reader but optional for the writer: data without it exists")

    for name in list(wp) + [n for n in rp if n not in wp]:
        sub, f = _sub(path, "properties", name), _field(field, name)
        if name in wp and name in rp:
            _compare(out, wp[name], rp[name], sub, f)
        elif name in wp:  # removed: only the reader's content model matters
            if _is_open(r):
                _add(out, "PROPERTY_REMOVED_FROM_OPEN_CONTENT_MODEL", sub, f, True, "declared by the writer only; the reader's open content model accepts it")
            elif "patternProperties" in r or isinstance(r.get("additionalProperties"), dict):
                inner: list[Difference] = []
                _compare(inner, wp[name], _undeclared_schema(r, name), sub, f)
                ok = all(d.compatible for d in inner)
                out.extend(inner)
                _add(out, f"PROPERTY_REMOVED_{'IS' if ok else 'NOT'}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", sub, f, ok, "declared by the writer only; checked against the reader's schema for undeclared properties")
            elif wp[name] is False:
                _add(out, "PROPERTY_WITH_FALSE_REMOVED_FROM_CLOSED_CONTENT_MODEL", sub, f, True, "declared `false` by the writer (it never occurs)")
            else:
                _add(out, "PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL", sub, f, False, "declared by the writer but not by the reader, whose content model is closed (additionalProperties: false): data carrying it would be refused")
        else:  # added: only the writer's content model matters
            if _is_open(w):
                if _as_dict(rp[name]) == {}:
                    _add(out, "PROPERTY_WITH_EMPTY_SCHEMA_ADDED_TO_OPEN_CONTENT_MODEL", sub, f, True, "declared by the reader only, with an empty schema")
                else:
                    _add(out, "PROPERTY_ADDED_TO_OPEN_CONTENT_MODEL", sub, f, False, "declared by the reader only, but the writer's content model is open: data may carry it with any value (contracts that add properties are written with additionalProperties: false)")
                continue
            if "patternProperties" in w or isinstance(w.get("additionalProperties"), dict):
                inner = []
                _compare(inner, _undeclared_schema(w, name), rp[name], sub, f)
                ok = all(d.compatible for d in inner)
                out.extend(inner)
                _add(out, f"PROPERTY_ADDED_{'IS' if ok else 'NOT'}_COVERED_BY_PARTIALLY_OPEN_CONTENT_MODEL", sub, f, ok, "declared by the reader only; checked against the writer's schema for undeclared properties")
            if name in rreq:
                if _has_default(rp[name]):
                    _add(out, "REQUIRED_PROPERTY_WITH_DEFAULT_ADDED_TO_UNOPEN_CONTENT_MODEL", sub, f, True, "required by the reader, with a default; the writer does not declare it")
                else:
                    _add(out, "REQUIRED_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL", sub, f, False, "required by the reader but not declared by the writer: data without it exists")
            else:
                _add(out, "OPTIONAL_PROPERTY_ADDED_TO_UNOPEN_CONTENT_MODEL", sub, f, True, "optional, declared by the reader only; the writer's content model is closed")

    wa, ra = w.get("additionalProperties", True), r.get("additionalProperties", True)
    p = _sub(path, "additionalProperties")
    if (wa is not False) != (ra is not False):
        ok = ra is not False
        _add(out, "ADDITIONAL_PROPERTIES_ADDED" if ok else "ADDITIONAL_PROPERTIES_REMOVED", p, field, ok,
             "undeclared properties " + ("now allowed" if ok else "no longer allowed (the content model was closed)"))
    elif isinstance(ra, dict) and ra and not (isinstance(wa, dict) and wa):
        _add(out, "ADDITIONAL_PROPERTIES_NARROWED", p, field, False, "undeclared properties now constrained")
    elif isinstance(wa, dict) and wa and ra in (True, {}):
        _add(out, "ADDITIONAL_PROPERTIES_EXTENDED", p, field, True, "undeclared properties no longer constrained")
    elif isinstance(wa, dict) and isinstance(ra, dict) and wa and ra:
        _compare(out, wa, ra, p, _field(field, "*"))


def _has_default(schema: Any) -> bool:
    return isinstance(schema, dict) and "default" in schema
