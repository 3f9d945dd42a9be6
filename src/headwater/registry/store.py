"""Where contracts are kept: files under the home (default) or a PostgreSQL database.

Both stores hold, per subject (an event name): its versions ``1, 2, …`` (immutable once
written, each a JSON Schema document and its registration time, UTC) and its compatibility
mode (None: the default, ``BACKWARD``). :func:`open_store` picks PostgreSQL when the
setting ``registry.url`` (``HEADWATER_REGISTRY_URL``) is a ``postgresql://`` URL, else the
home's files.

Concurrency: :meth:`Store.append` is compare-and-set on the latest version — it writes
version ``expected + 1`` only if ``expected`` is still the latest, else raises
:class:`ConflictError` — so two concurrent registrations cannot both pass a compatibility
check against the same predecessor. Files: an exclusive ``flock`` on ``registry/.lock``
around read-check-write, each subject file replaced atomically (write temp, fsync, rename,
fsync directory). PostgreSQL: a transaction holding ``pg_advisory_xact_lock`` on the
subject, the version the primary key.

Errors: psycopg's are wrapped here, original as ``__cause__``: the server unreachable or the
connection lost -> :class:`~headwater.errors.TransientError`, a constraint violated ->
:class:`~headwater.errors.ConflictError`, a value PostgreSQL cannot store (e.g. ``\u0000``
in jsonb) -> :class:`~headwater.errors.InvalidInputError`. An unreadable subject file ->
:class:`~headwater.errors.InvalidInputError` naming it.

Change detection: :meth:`Store.stamp` is a cheap value that changes whenever anything is
registered or a mode is set (files: name, size, mtime and inode of every subject file;
PostgreSQL: a counter row bumped in the same transaction), so the collector can poll it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from headwater.config import Home
from headwater.errors import ConflictError, InvalidInputError, TransientError
from headwater.files import write_atomic


@dataclass(frozen=True)
class SchemaVersion:
    """Version ``version`` (1-based) of ``subject``'s contract: ``schema`` (a JSON Schema
    document, Draft 2020-12) registered at ``registered_at`` (UTC)."""

    subject: str
    version: int
    schema: dict
    registered_at: dt.datetime

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the schema's canonical JSON (sorted keys, no whitespace)."""
        return fingerprint(self.schema)


def fingerprint(schema: Any) -> str:
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Store(ABC):
    """Storage of subjects, versions and modes (see the module docstring)."""

    @abstractmethod
    def subjects(self) -> list[str]:
        """Every subject with at least one version, sorted."""

    @abstractmethod
    def versions(self, subject: str) -> list[SchemaVersion]:
        """``subject``'s versions, oldest first (``[]`` if unknown)."""

    @abstractmethod
    def append(self, subject: str, schema: dict, expected_latest: int) -> SchemaVersion:
        """Store ``schema`` as version ``expected_latest + 1`` of ``subject``.

        Raises :class:`~headwater.errors.ConflictError` if ``subject``'s latest version is not
        ``expected_latest`` (0: no version yet): another registration committed first."""

    @abstractmethod
    def mode(self, subject: str) -> str | None:
        """``subject``'s compatibility mode, None if not set."""

    @abstractmethod
    def set_mode(self, subject: str, mode: str) -> None:
        """Set ``subject``'s compatibility mode (the subject need not have versions yet)."""

    @abstractmethod
    def stamp(self) -> Any:
        """A value that changes whenever a version or a mode is written."""

    def latest_all(self) -> dict[str, SchemaVersion]:
        """The latest version of every subject."""
        return {s: v[-1] for s in self.subjects() if (v := self.versions(s))}

    def close(self) -> None:
        """Release connections (no-op for files)."""


# -- files ----------------------------------------------------------------------------------
def _subject_file_name(subject: str) -> str:
    """A file name for any subject text: readable prefix + hash (subjects may hold ``/``)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in subject)[:64]
    return f"{safe}.{hashlib.sha256(subject.encode()).hexdigest()[:12]}.json"


class FileStore(Store):
    """Contracts as one JSON file per subject under ``<home>/registry/subjects/``:
    ``{"subject", "compatibility", "versions": [{"version", "schema", "registered_at"}]}``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = self.root / "subjects"

    @classmethod
    def of(cls, home: Home) -> "FileStore":
        return cls(home.root / "registry")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self, subject: str) -> dict:
        path = self.dir / _subject_file_name(subject)
        try:
            return _load(path)
        except FileNotFoundError:
            return {"subject": subject, "compatibility": None, "versions": []}

    def _write(self, doc: dict) -> None:
        write_atomic(self.dir / _subject_file_name(doc["subject"]), json.dumps(doc, indent=1).encode())

    def _docs(self) -> Iterator[dict]:
        if not self.dir.is_dir():
            return
        for p in sorted(self.dir.glob("*.json")):
            yield _load(p)

    def subjects(self) -> list[str]:
        return sorted(d["subject"] for d in self._docs() if d["versions"])

    def versions(self, subject: str) -> list[SchemaVersion]:
        return _versions(self._read(subject))

    def latest_all(self) -> dict[str, SchemaVersion]:
        return {d["subject"]: _versions(d)[-1] for d in self._docs() if d["versions"]}

    def append(self, subject: str, schema: dict, expected_latest: int) -> SchemaVersion:
        with self._locked():
            doc = self._read(subject)
            latest = len(doc["versions"])
            if latest != expected_latest:
                raise ConflictError(f"subject {subject!r}: latest version is {latest}, expected {expected_latest}")
            now = dt.datetime.now(dt.timezone.utc)
            doc["versions"].append({"version": latest + 1, "schema": schema, "registered_at": now.isoformat()})
            self._write(doc)
        return SchemaVersion(subject, latest + 1, schema, now)

    def mode(self, subject: str) -> str | None:
        return self._read(subject).get("compatibility")

    def set_mode(self, subject: str, mode: str) -> None:
        with self._locked():
            doc = self._read(subject)
            doc["compatibility"] = mode
            self._write(doc)

    def stamp(self) -> Any:
        try:
            entries = os.scandir(self.dir)
        except FileNotFoundError:
            return ()
        with entries:
            return tuple(sorted((e.name, (st := e.stat()).st_mtime_ns, st.st_size, st.st_ino) for e in entries if e.name.endswith(".json")))


def _load(path: Path) -> dict:
    """A subject file; :class:`InvalidInputError` naming the file if it is not valid JSON."""
    data = path.read_bytes()
    try:
        return json.loads(data)
    except ValueError as e:
        raise InvalidInputError(f"schema registry file {path}: not valid JSON ({e}); restore it from a backup", field=str(path)) from None


def _versions(doc: dict) -> list[SchemaVersion]:
    return [
        SchemaVersion(doc["subject"], v["version"], v["schema"], dt.datetime.fromisoformat(v["registered_at"]))
        for v in doc["versions"]
    ]


# -- PostgreSQL -----------------------------------------------------------------------------
_DDL = """
CREATE TABLE IF NOT EXISTS headwater_schema_subjects (
    subject        text PRIMARY KEY,
    compatibility  text
);
CREATE TABLE IF NOT EXISTS headwater_schema_versions (
    subject        text NOT NULL,
    version        integer NOT NULL CHECK (version > 0),
    schema         jsonb NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, version)
);
CREATE TABLE IF NOT EXISTS headwater_schema_changes (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    counter  bigint NOT NULL
);
INSERT INTO headwater_schema_changes VALUES (true, 0) ON CONFLICT DO NOTHING;
"""


class PostgresStore(Store):
    """Contracts in PostgreSQL (psycopg 3): tables ``headwater_schema_subjects`` (subject,
    compatibility), ``headwater_schema_versions`` (subject, version, schema jsonb,
    registered_at timestamptz) and a one-row change counter ``headwater_schema_changes``,
    created on first use. ``url``: a libpq connection string (``postgresql://user@host/db``).

    One connection, opened lazily and re-opened after a failure; every call is its own
    transaction. Raises :class:`~headwater.errors.TransientError` when the server cannot be
    reached (see the module docstring for the other errors)."""

    def __init__(self, url: str):
        self.url = url
        self._conn = None

    def _connect(self):
        import psycopg

        if self._conn is None or self._conn.closed:
            try:
                self._conn = psycopg.connect(self.url, autocommit=True)
            except psycopg.ProgrammingError as e:  # a malformed URL; unreachable servers are OperationalError
                raise InvalidInputError(f"registry.url: {str(e).strip()}", field="registry.url") from e
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('headwater_schema_ddl'))")
                self._conn.execute(_DDL)
        return self._conn

    @contextmanager
    def _tx(self):
        import psycopg

        try:
            conn = self._connect()
            try:
                with conn.transaction():
                    yield conn
            except psycopg.OperationalError:
                conn.close()  # a broken connection is replaced on the next call
                raise
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            raise TransientError(f"schema registry database: {str(e).strip()}", field="registry.url") from e
        except psycopg.IntegrityError as e:
            raise ConflictError(f"schema registry database: {str(e).strip()}") from e
        except psycopg.DataError as e:
            raise InvalidInputError(f"schema registry database refused a value: {str(e).strip()}") from e

    def subjects(self) -> list[str]:
        with self._tx() as c:
            return [r[0] for r in c.execute("SELECT DISTINCT subject FROM headwater_schema_versions ORDER BY 1")]

    def versions(self, subject: str) -> list[SchemaVersion]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT version, schema, registered_at FROM headwater_schema_versions WHERE subject = %s ORDER BY version",
                (subject,),
            ).fetchall()
        return [SchemaVersion(subject, v, s, t.astimezone(dt.timezone.utc)) for v, s, t in rows]

    def latest_all(self) -> dict[str, SchemaVersion]:
        with self._tx() as c:
            rows = c.execute(
                "SELECT DISTINCT ON (subject) subject, version, schema, registered_at FROM headwater_schema_versions "
                "ORDER BY subject, version DESC"
            ).fetchall()
        return {s: SchemaVersion(s, v, d, t.astimezone(dt.timezone.utc)) for s, v, d, t in rows}

    def append(self, subject: str, schema: dict, expected_latest: int) -> SchemaVersion:
        from psycopg.types.json import Jsonb

        with self._tx() as c:
            c.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (subject,))
            latest = c.execute("SELECT coalesce(max(version), 0) FROM headwater_schema_versions WHERE subject = %s", (subject,)).fetchone()[0]
            if latest != expected_latest:
                raise ConflictError(f"subject {subject!r}: latest version is {latest}, expected {expected_latest}")
            (at,) = c.execute(
                "INSERT INTO headwater_schema_versions (subject, version, schema) VALUES (%s, %s, %s) RETURNING registered_at",
                (subject, latest + 1, Jsonb(schema)),
            ).fetchone()
            c.execute("UPDATE headwater_schema_changes SET counter = counter + 1")
        return SchemaVersion(subject, latest + 1, schema, at.astimezone(dt.timezone.utc))

    def mode(self, subject: str) -> str | None:
        with self._tx() as c:
            row = c.execute("SELECT compatibility FROM headwater_schema_subjects WHERE subject = %s", (subject,)).fetchone()
        return row[0] if row else None

    def set_mode(self, subject: str, mode: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO headwater_schema_subjects (subject, compatibility) VALUES (%s, %s) "
                "ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
                (subject, mode),
            )
            c.execute("UPDATE headwater_schema_changes SET counter = counter + 1")

    def stamp(self) -> Any:
        with self._tx() as c:
            return c.execute("SELECT counter FROM headwater_schema_changes").fetchone()[0]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def open_store(home: Home) -> Store:
    """:class:`PostgresStore` when setting ``registry.url`` is set (the settings accept only
    ``postgresql://`` and ``postgres://`` URLs), else the home's :class:`FileStore`."""
    url = home.settings.registry.url
    return PostgresStore(url.get_secret_value()) if url is not None else FileStore.of(home)
