"""Access to served data: read tokens, roles, and what each role may read.

Roles, each including the one before:

==========  ===============================================================================
role        may
==========  ===============================================================================
viewer      metric endpoints and the dashboard only (no SQL); they read ``gold.*`` and
            ``realtime.*`` and return aggregates under the privacy floor
            (:mod:`headwater.serve.privacy`), never a person identifier
analyst     also SQL over ``silver.*``, ``gold.*`` and ``realtime.*``
admin       also ``bronze.*`` (raw events, bad rows, dead letters, CDC) and the SQL function
            ``hw_token(raw_id)`` to join the lake's identifier tokens with its own tables
==========  ===============================================================================

Read tokens (``hw_rt_`` + 192 random bits, :mod:`headwater.credentials`) are shown once, at
creation; ``$HEADWATER_HOME/tokens.json`` (mode 0600) keeps their SHA-256 digest, name, role
and times, never the token. A presented token is hashed, its digest looked up, and the match
confirmed with :func:`headwater.credentials.verify` (constant time). Revoked tokens stay in
the file (an audit trail, and a clear "revoked" answer) with their ``revoked`` time.

The command line is admin by definition: whoever can run ``headwater`` can read the home.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import duckdb
import filelock
import pyarrow as pa

from headwater import credentials
from headwater.config import Home
from headwater.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError
from headwater.files import write_atomic
from headwater.ingest.tokens import Tokenizer
from headwater.lake import catalog
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake

TOKENS_FILE = "tokens.json"


class Role(enum.IntEnum):
    """A read token's role; a higher role may do everything a lower one may."""

    VIEWER = 1
    ANALYST = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        """The role called ``name`` (``viewer``, ``analyst``, ``admin``); else
        :class:`InvalidInputError` naming the choices."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise InvalidInputError(f"role: must be one of {', '.join(ROLE_NAMES)}, got {name!r}", field="role") from None

    def __str__(self) -> str:
        return self.name.lower()


ROLE_NAMES = tuple(str(r) for r in Role)

# Layers each role may read. A viewer reads them only through server-written metric queries.
_LAYERS = {
    Role.VIEWER: ("gold", "realtime"),
    Role.ANALYST: ("silver", "gold", "realtime"),
    Role.ADMIN: catalog.LAYERS,
}


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the token's ``name`` and ``role``."""

    name: str
    role: Role


@dataclass(frozen=True)
class ReadToken:
    """One entry of ``tokens.json``: ``digest`` (``sha256:<hex>``), never the token.
    ``created`` / ``revoked``: UTC times (ISO 8601), ``revoked`` ``None`` while active."""

    name: str
    role: str
    digest: str
    created: str
    revoked: str | None = None

    @property
    def fingerprint(self) -> str:
        return credentials.fingerprint(self.digest)

    def listing(self) -> dict:
        """The public row of ``headwater token list``: no digest, no token."""
        return {"name": self.name, "role": self.role, "fingerprint": self.fingerprint, "created": self.created, "revoked": self.revoked}


def allowed_tables(role: Role) -> tuple[str, ...]:
    """Table patterns ``role`` may read (``"gold.*"``, …), in catalog layer order."""
    return tuple(f"{layer}.*" for layer in catalog.LAYERS if layer in _LAYERS[role])


def may_read(role: Role, table: str) -> bool:
    """Whether ``role`` may read ``table`` (``"layer.name"``)."""
    return table.partition(".")[0] in _LAYERS[role]


def check_sql(principal: Principal, sql: str) -> set[str]:
    """The tables ``sql`` names (found by :func:`headwater.lake.sql.referenced_tables`, the
    catalog's own discovery), if ``principal`` may run it. :class:`ForbiddenError` for a
    viewer (no SQL) or a table outside :func:`allowed_tables`, naming the table and role.

    Catalog introspection (``SHOW TABLES``, ``information_schema``) is allowed: a restricted
    session holds only the role's tables (:func:`run_sql`), so it lists only those."""
    if principal.role < Role.ANALYST:
        raise ForbiddenError(f"role {principal.role}: SQL needs role analyst or admin (a viewer reads metric endpoints)", field="sql")
    names = lake_sql.referenced_tables(sql) or set()
    refused = sorted(t for t in names if not may_read(principal.role, t))
    if refused:
        raise ForbiddenError(f"role {principal.role} may not read {', '.join(refused)} "
                             f"(it reads {', '.join(allowed_tables(principal.role))})", field="sql")
    return names


def identity_token(home: Home, raw_id: str) -> str:
    """The token stored in place of identifier ``raw_id`` (user id, anonymous id, email…):
    HMAC-SHA256 under the home's key, 32 hex characters (:mod:`headwater.ingest.tokens`)."""
    return Tokenizer(home.hmac_key())(raw_id)


def run_sql(home: Home, principal: Principal, sql: str, params: dict | list | None = None) -> pa.Table:
    """``sql`` for ``principal``: :func:`check_sql`, then :func:`headwater.lake.sql.query` in a
    session holding only the role's tables, without file access; an admin's session also has
    ``hw_token(VARCHAR)``. Errors as those two functions raise."""
    check_sql(principal, sql)
    return lake_sql.query(Lake.of(home), sql, params, **_restrictions(home, principal))


def sql_session(home: Home, principal: Principal, sql: str) -> AbstractContextManager[duckdb.DuckDBPyConnection]:
    """:func:`check_sql`, then the restricted session of :func:`run_sql` ready to run ``sql``
    (:func:`headwater.lake.sql.session`), for callers that stream its result or interrupt it."""
    check_sql(principal, sql)
    return lake_sql.session(Lake.of(home), sql, **_restrictions(home, principal))


def _restrictions(home: Home, principal: Principal) -> dict:
    hw_token = Tokenizer(home.hmac_key()).column if principal.role >= Role.ADMIN else None
    return {"tables": lambda t: may_read(principal.role, t), "hw_token": hw_token}


class TokenStore:
    """The read tokens of ``home`` (``tokens.json``). Changes are serialised by a file lock
    and written atomically (0600); :meth:`authenticate` rereads the file only when it changed,
    so a revocation applies to the next request."""

    def __init__(self, home: Home):
        self.path: Path = home.root / TOKENS_FILE
        self._lock = filelock.FileLock(str(self.path) + ".lock")
        self._seen: tuple[int, int] | None = None
        self._by_digest: dict[str, ReadToken] = {}

    def tokens(self) -> list[ReadToken]:
        """Every token, revoked ones included, in creation order. :class:`InvalidInputError`
        naming the file if it is not a list of tokens."""
        if not self.path.exists():
            return []
        try:
            return [ReadToken(**entry) for entry in json.loads(self.path.read_bytes())]
        except (ValueError, TypeError) as e:
            raise InvalidInputError(f"{self.path}: not a list of read tokens ({e})", field=str(self.path)) from None

    def add(self, role: Role, name: str | None = None) -> tuple[ReadToken, str]:
        """A new token of ``role`` and the token itself — the only time it is available.
        ``name`` defaults to ``<role>-<fingerprint>``. :class:`ConflictError` if an active token
        has that name."""
        token = credentials.generate(credentials.READ_TOKEN_PREFIX)
        digest = credentials.digest(token)
        entry = ReadToken(name or f"{role}-{credentials.fingerprint(digest)[:8]}", str(role), digest, _now())
        if not entry.name.strip():
            raise InvalidInputError("name: must not be empty", field="name")
        with self._lock:
            existing = self.tokens()
            if any(t.name == entry.name and t.revoked is None for t in existing):
                raise ConflictError(f"token {entry.name!r} exists (revoke it first, or pick another --name)", field="name")
            self._write(existing + [entry])
        return entry, token

    def revoke(self, name: str) -> ReadToken:
        """Revoke the active token ``name`` and return its entry; it stops working at the next
        request. :class:`NotFoundError` if no active token has that name."""
        with self._lock:
            existing = self.tokens()
            match = [i for i, t in enumerate(existing) if t.name == name and t.revoked is None]
            if not match:
                raise NotFoundError(f"token {name!r}: no such active token (see `headwater token list`)", field="name")
            existing[match[0]] = revoked = replace(existing[match[0]], revoked=_now())
            self._write(existing)
        return revoked

    def authenticate(self, token: str | None) -> Principal:
        """The principal of a presented read token. :class:`UnauthorizedError` when it is
        missing, unknown or revoked (the message never repeats the token)."""
        if not token:
            raise UnauthorizedError("a read token is required (Authorization: Bearer hw_rt_…)", field="token")
        self._reload()
        entry = self._by_digest.get(credentials.digest(token))
        # The lookup is by digest (see credentials); the final comparison is constant-time.
        if entry is None or not credentials.verify(token, entry.digest):
            raise UnauthorizedError("unknown read token", field="token")
        if entry.revoked is not None:
            raise UnauthorizedError(f"read token {entry.name!r} was revoked at {entry.revoked}", field="token")
        return Principal(entry.name, Role.parse(entry.role))

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            seen = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            seen = None
        if seen != self._seen or seen is None:
            self._by_digest = {t.digest: t for t in self.tokens()}
            self._seen = seen

    def _write(self, tokens: list[ReadToken]) -> None:
        write_atomic(self.path, json.dumps([asdict(t) for t in tokens], indent=2).encode(), mode=0o600)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
