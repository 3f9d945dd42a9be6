"""A compiled fast path for contract validation: JSON Schema → a msgspec type.

``jsonschema`` walks the schema in Python for every instance (~100-300 µs for a
six-property contract here), too slow for the collector's hot path. Most contracts use a
small, grammar-like subset of JSON Schema that msgspec (a C decoder with typed validation)
expresses exactly, so :func:`compile_check` turns such a contract into a decoder that
validates the raw ``properties`` JSON in one pass (a few µs).

The fast path may only ever *accept*: when it accepts, the instance is valid; when it
refuses, the caller runs ``jsonschema`` (which also names the failing path and keyword), so
a refusal by the fast path that ``jsonschema`` would accept (e.g. ``1.0`` for ``integer``,
which msgspec reads as a float) costs time, never correctness. Keywords are compiled only
where msgspec's meaning is the same as JSON Schema's:

* ``type`` (``string``, ``integer``, ``number``, ``boolean``, ``null``, ``array``,
  ``object``, lists of them); msgspec, like JSON Schema, never takes ``true`` for a number;
* ``properties`` / ``required`` / ``additionalProperties`` (``true``, absent or ``false``) →
  a ``Struct`` (``forbid_unknown_fields`` when closed), optional properties default to UNSET;
* ``enum`` / ``const`` of strings or of integers → ``Literal`` (plus ``None`` for ``null``);
* ``minimum`` / ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum``, ``minLength`` /
  ``maxLength`` (code points, as ``len``), ``pattern`` (Python ``re.search``, as
  ``jsonschema``), ``items``, ``minItems`` / ``maxItems`` → ``Meta`` constraints;
* ``format: date-time`` → msgspec's RFC 3339 datetime with a required offset, which is also
  the definition the collector's ``jsonschema`` format checker uses (see :mod:`.validate`);
* annotations (``title``, ``description``, ``default``, ``examples``, …).

A contract with anything else has no fast path (:func:`compile_check` returns None) and
is validated by ``jsonschema`` alone.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Annotated, Any, Callable, Literal, Union

import msgspec
from msgspec import Meta

ANNOTATIONS = {"title", "description", "default", "examples", "$comment", "$schema", "$id", "deprecated", "readOnly", "writeOnly"}
_COMPILED = {
    "type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "format",
}
DATE_TIME = Annotated[dt.datetime, Meta(tz=True)]
_ids = itertools.count()


class _Unsupported(Exception):
    pass


def compile_check(schema: Any) -> Callable[[str | bytes], bool] | None:
    """A function ``check(json_text) -> bool`` that is True only for instances ``schema``
    accepts, or None when ``schema`` uses keywords outside the compiled subset."""
    try:
        decoder = msgspec.json.Decoder(_type(schema))
    except (_Unsupported, TypeError, ValueError):  # TypeError: a union msgspec cannot express
        return None
    decode = decoder.decode

    def check(text: str | bytes) -> bool:
        try:
            decode(text)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False
        return True

    return check


def _meta(**kw) -> Meta | None:
    kw = {k: v for k, v in kw.items() if v is not None}
    return Meta(**kw) if kw else None


def _with(base: Any, meta: Meta | None) -> Any:
    return Annotated[base, meta] if meta is not None else base


def _bound(value: Any, integer: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise _Unsupported("bound")
    return value


def _type(s: Any) -> Any:
    if s is True or s == {}:
        return Any
    if not isinstance(s, dict) or set(s) - _COMPILED - ANNOTATIONS:
        raise _Unsupported("keyword")
    if s.get("format", "date-time") != "date-time":
        raise _Unsupported("format")
    types = s.get("type")
    if isinstance(types, str):
        types = [types]
    if "enum" in s or "const" in s:
        return _literal(s, types)
    if types is None:
        if set(s) - ANNOTATIONS:
            raise _Unsupported("untyped constraints")  # they apply to some types only
        return Any
    parts = []
    for t in dict.fromkeys(types):
        if t == "integer" and "number" in types:
            continue  # number covers integer
        parts.append(_one(t, s))
    return Union[tuple(parts)] if len(parts) > 1 else parts[0]


def _one(t: str, s: dict) -> Any:
    if t == "null":
        return None
    if t == "boolean":
        return bool
    if t == "string":
        if "format" in s:
            if any(k in s for k in ("minLength", "maxLength", "pattern")):
                raise _Unsupported("format with string constraints")
            return DATE_TIME
        return _with(str, _meta(min_length=s.get("minLength"), max_length=s.get("maxLength"), pattern=s.get("pattern")))
    if t in ("integer", "number"):
        integer = t == "integer"
        meta = _meta(ge=_bound(s.get("minimum"), integer), le=_bound(s.get("maximum"), integer),
                     gt=_bound(s.get("exclusiveMinimum"), integer), lt=_bound(s.get("exclusiveMaximum"), integer))
        return _with(int if integer else float, meta)
    if t == "array":
        return _with(list[_type(s.get("items", True))], _meta(min_length=s.get("minItems"), max_length=s.get("maxItems")))
    if t == "object":
        return _object(s)
    raise _Unsupported(f"type {t}")


def _object(s: dict) -> Any:
    props = s.get("properties") or {}
    required = set(s.get("required") or ())
    extra = s.get("additionalProperties", True)
    if extra not in (True, False, {}) or not required <= set(props):
        raise _Unsupported("object")
    if not props and extra is not False:
        return dict[str, Any]
    fields, rename = [], {}
    for i, (name, sub) in enumerate(props.items()):
        f = f"f{i}"
        rename[f] = name
        typ = _type(sub)
        if name in required:
            fields.append((f, typ))
        else:
            fields.append((f, typ if typ is Any else Union[typ, msgspec.UnsetType], msgspec.UNSET))
    fields.sort(key=lambda f: len(f) == 3)  # required fields first (Struct field order rule)
    return msgspec.defstruct(f"Contract{next(_ids)}", fields, rename=rename, forbid_unknown_fields=extra is False)


def _literal(s: dict, types: list[str] | None) -> Any:
    if set(s) - {"enum", "const", "type"} - ANNOTATIONS or ("enum" in s and "const" in s):
        raise _Unsupported("enum with constraints")  # their intersection is not a Literal
    values = list(s["enum"]) if "enum" in s else [s["const"]]
    nullable = None in values
    values = [v for v in values if v is not None]
    if not values or not (all(isinstance(v, str) for v in values) or all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        raise _Unsupported("enum")
    kind = "string" if isinstance(values[0], str) else "integer"
    allowed = {kind, "number"} if kind == "integer" else {kind}
    if types is not None and not (set(types) & allowed and (not nullable or "null" in types)):
        raise _Unsupported("enum and type")  # the enum intersected with type: keep it simple
    lit = Literal[tuple(values)]
    return Union[lit, None] if nullable else lit
