"""The schema registry: one JSON Schema contract per event name (the *subject*), versioned.

A contract describes an event's ``properties`` object (Draft 2020-12, top-level
``"type": "object"``). :meth:`Registry.register` validates the document, checks it against
the subject's earlier versions under the subject's compatibility mode (:mod:`.compat`,
Confluent Schema Registry's modes) and stores it as the next version; registering a schema
equal to the latest version returns that version (as Confluent does) instead of adding one.
The collector validates every event of a registered name against the latest version
(:mod:`.validate`), and each subject gets a typed table ``silver.evt_<snake name>``
(:mod:`.typed_tables`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import jsonschema
from jsonschema import Draft202012Validator

from headwater.config import Home
from headwater.errors import ConflictError, InvalidInputError, TransientError
from headwater.registry import compat
from headwater.registry.store import SchemaVersion, Store, fingerprint, open_store

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
MAX_SUBJECT_CHARS = 200


class RegistryError(InvalidInputError):
    """A contract, subject or mode the registry refuses; the message names the field and rule."""


class IncompatibleSchemaError(ConflictError):
    """The schema breaks the subject's compatibility mode (it conflicts with the versions
    already registered); ``check`` holds every problem, the message lists them."""

    def __init__(self, check: "Check"):
        super().__init__(check.message(), field="schema")
        self.check = check


@dataclass(frozen=True)
class Problem:
    """One incompatibility: against ``version``, in ``direction`` (``"backward"``: the new
    schema reads data of ``version``; ``"forward"``: ``version`` reads data of the new one)."""

    version: int
    direction: str
    difference: compat.Difference


@dataclass(frozen=True)
class Check:
    """Outcome of checking a schema for ``subject``: ``compatible``; ``mode`` applied;
    ``version`` it would get (or the existing version equal to it, ``existing`` True);
    ``problems`` when incompatible."""

    subject: str
    mode: str
    version: int
    existing: bool = False
    problems: tuple[Problem, ...] = field(default=())

    @property
    def compatible(self) -> bool:
        return not self.problems

    def message(self) -> str:
        if self.compatible:
            if self.existing:
                return f"{self.subject!r}: identical to version {self.version}"
            return f"{self.subject!r}: compatible under {self.mode}, would be version {self.version}"
        lines = [f"{self.subject!r}: schema is incompatible under {self.mode}:"]
        for p in self.problems:
            who = (
                f"a reader using the new schema must accept data written with version {p.version}"
                if p.direction == "backward"
                else f"a reader using version {p.version} must accept data written with the new schema"
            )
            lines.append(f"  - {p.difference.describe()} [{p.direction}: {who}]")
        return "\n".join(lines)


def table_name(subject: str) -> str:
    """The typed table of ``subject``: ``evt_`` + snake case (``Order Completed`` →
    ``evt_order_completed``, ``$pageview`` → ``evt_pageview``, ``checkout.Step-2`` →
    ``evt_checkout_step_2``); camelCase words are split (``signUp`` → ``evt_sign_up``)."""
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", subject)
    s = re.sub(r"[^0-9A-Za-z]+", "_", s).strip("_").lower()
    return f"evt_{s}"


def validate_schema(schema: object) -> dict:
    """Check ``schema`` is a usable contract; returns it. Raises :class:`RegistryError`
    naming the place and the rule: not a JSON object, a ``$schema`` other than Draft
    2020-12, not valid against the Draft 2020-12 meta-schema, top-level type not
    ``object``."""
    if not isinstance(schema, dict):
        raise RegistryError(f"schema: expected a JSON object (a JSON Schema document), got {type(schema).__name__}")
    declared = schema.get("$schema")
    if declared is not None and declared.rstrip("#") != DRAFT_2020_12:
        raise RegistryError(f"schema: `$schema` is {declared!r}; headwater contracts are JSON Schema Draft 2020-12 ({DRAFT_2020_12})")
    try:
        Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "#/" + "/".join(str(p) for p in e.absolute_path)
        raise RegistryError(f"schema: invalid JSON Schema at {where}: {e.message} (meta-schema rule `{e.validator}`)") from None
    if schema.get("type") != "object":
        raise RegistryError('schema: the top level must be `"type": "object"` (a contract describes an event\'s properties object)')
    _check_refs(schema, schema, "#")
    return schema


def _check_refs(node: object, root: dict, where: str) -> None:
    """Contracts are self-contained: every ``$ref`` is a JSON pointer into the document
    (``#/$defs/...``) that resolves; the collector never fetches anything."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_refs(item, root, f"{where}/{i}")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = f"{where}/{key}"
        if key in ("$dynamicRef", "$recursiveRef") or (key == "$ref" and isinstance(value, str) and not value.startswith("#")):
            raise RegistryError(f"schema: {key} {value!r} at {here}: contracts must be self-contained (local `$ref` to `#/$defs/...` only)")
        if key == "$ref" and isinstance(value, str):
            target: object = root
            for part in value[1:].lstrip("/").split("/") if value not in ("#", "#/") else []:
                part = part.replace("~1", "/").replace("~0", "~")
                if isinstance(target, dict) and part in target:
                    target = target[part]
                elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                    target = target[int(part)]
                else:
                    raise RegistryError(f"schema: $ref {value!r} at {here} does not resolve inside the schema")
        elif key not in ("enum", "const", "default", "examples"):  # values, not subschemas
            _check_refs(value, root, here)


def _validate_subject(subject: str) -> None:
    if not isinstance(subject, str) or not subject.strip():
        raise RegistryError("subject: the event name must be a non-empty string")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise RegistryError(f"subject: event name longer than {MAX_SUBJECT_CHARS} characters")
    if table_name(subject) == "evt_":
        raise RegistryError(f"subject: {subject!r} has no letters or digits to name its table silver.evt_<name>")


class Registry:
    """Subjects, versions and compatibility modes over a :class:`~.store.Store`."""

    def __init__(self, store: Store):
        self.store = store

    @classmethod
    def from_home(cls, home: Home) -> "Registry":
        """The registry of ``home`` (PostgreSQL if setting ``registry.url`` is set)."""
        return cls(open_store(home))

    def subjects(self) -> list[str]:
        return self.store.subjects()

    def versions(self, subject: str) -> list[SchemaVersion]:
        return self.store.versions(subject)

    def latest(self, subject: str) -> SchemaVersion | None:
        v = self.store.versions(subject)
        return v[-1] if v else None

    def mode(self, subject: str) -> str:
        """``subject``'s compatibility mode (``BACKWARD`` unless set)."""
        return self.store.mode(subject) or compat.DEFAULT_MODE

    def set_mode(self, subject: str, mode: str) -> None:
        """Set ``subject``'s mode. Raises :class:`RegistryError` for an unknown mode."""
        _validate_subject(subject)
        self.store.set_mode(subject, _valid_mode(mode))

    def check(self, subject: str, schema: object, mode: str | None = None) -> Check:
        """Would ``schema`` be accepted as the next version of ``subject``? ``mode``
        overrides the subject's own for this check. Raises :class:`RegistryError` for an
        invalid subject or schema, or a subject whose table name another subject has."""
        _validate_subject(subject)
        validate_schema(schema)
        mode = _valid_mode(mode) if mode else self.mode(subject)
        versions = self.store.versions(subject)
        if not versions:
            self._check_table_name(subject)
        fp = fingerprint(schema)
        if versions and versions[-1].fingerprint == fp:
            return Check(subject, mode, versions[-1].version, existing=True)
        problems = [
            Problem(version, direction, d)
            for version, direction, writer, reader in compat.pairs(mode, schema, [(v.version, v.schema) for v in versions])
            for d in compat.incompatibilities(writer, reader)
        ]
        return Check(subject, mode, len(versions) + 1, problems=tuple(problems))

    def register(self, subject: str, schema: object, mode: str | None = None) -> tuple[SchemaVersion, bool]:
        """Register ``schema`` as the next version of ``subject``. ``mode``, if given, is
        the mode it is checked under and, once registered, becomes the subject's mode (a
        refused registration changes nothing). Returns ``(version, created)`` (``created``
        False when the schema equals the latest version).

        Raises :class:`IncompatibleSchemaError` (message: every field and rule broken),
        :class:`RegistryError` for an invalid subject, schema or mode,
        :class:`~headwater.errors.TransientError` when concurrent registrations kept winning
        the race, and what the store raises (:mod:`.store`)."""
        for _ in range(5):  # compare-and-set: retry if another registration won the race
            result = self.check(subject, schema, mode)
            if not result.compatible:
                raise IncompatibleSchemaError(result)
            if result.existing:
                registered = self.latest(subject), False
            else:
                try:
                    registered = self.store.append(subject, schema, result.version - 1), True
                except ConflictError:
                    continue
            if mode:
                self.store.set_mode(subject, result.mode)
            return registered
        raise TransientError(f"subject {subject!r}: concurrent registrations kept conflicting; retry", field="subject")

    def _check_table_name(self, subject: str) -> None:
        name = table_name(subject)
        for other in self.store.subjects():
            if other != subject and table_name(other) == name:
                raise RegistryError(f"subject: {subject!r} would share the typed table silver.{name} with {other!r}; use a distinct event name")

    def close(self) -> None:
        self.store.close()


def _valid_mode(mode: str) -> str:
    m = mode.strip().upper()
    if m not in compat.MODES:
        raise RegistryError(f"compatibility: {mode!r} is not one of {', '.join(compat.MODES)}")
    return m
