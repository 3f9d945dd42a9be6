"""Installation home: every piece of state lives under ``HEADWATER_HOME``.

Layout (all paths relative to the home directory, default ``./.headwater``)::

    secrets/hmac.key          32 random bytes, mode 0600: key of the identifier HMAC
    sources.json              sources: write-key digests (never the keys) and per-source policies
    log/log.db                the embedded event log (SQLite, WAL mode)
    checkpoints/<query>/      stream checkpoints (offset log, commit log, state)
    lake/<layer>/<table>/     Delta tables, e.g. lake/bronze/events (the default lake.root; headwater.lake.store)
    registry/subjects/        event contracts: one JSON file per event name (headwater.registry)
    tmp/                      scratch (the Spark batch engine's staging files, removed after use)

Settings (ports, keys, engines, backends: :mod:`headwater.settings`) are resolved once from
the environment and ``headwater.toml`` and carried by :attr:`Home.settings`; the files above
are data the installation accumulates, not settings.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import msgspec

from headwater import credentials
from headwater.errors import ConflictError, InvalidInputError, NotFoundError
from headwater.settings import Settings
from headwater.settings import load as load_settings


def _write_private(path: Path, data: bytes, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically, with owner-only permissions (0600).

    With ``replace=False`` an existing ``path`` is kept (``os.link`` refuses to overwrite),
    so two processes creating the same file at once agree on one content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


# Property / trait / context keys (compared lowercase, without a leading "$", "_" or "-")
# whose values are identifiers: HMAC-tokenised by default (see headwater.ingest.pii).
DEFAULT_TOKENIZE_KEYS = ("email", "emailaddress", "phone", "phonenumber", "mobile", "mobilephone", "telephone", "tel")
# Keys removed by default: raw IP addresses (no offline GeoIP database ships here, so no
# country is derived from them; see headwater.ingest.pii).
DEFAULT_DROP_KEYS = ("ip", "ipaddress")
UNREGISTERED_POLICIES = ("accept", "reject")


@dataclass(frozen=True)
class PiiPolicy:
    """Per-source handling of personal data in ``properties`` / ``traits`` / ``context``.

    ``tokenize``: keys whose values become HMAC tokens; ``drop``: keys removed; ``keep``:
    keys exempt from both lists and from value detection. Keys match at any depth and are
    compared lowercase without a leading ``$`` and without ``_`` / ``-`` (``$Email_Address``
    → ``emailaddress``). ``detect_values``: also tokenise email addresses, international
    (``+``) phone numbers and IPv4/IPv6 addresses found inside any other string value."""

    tokenize: tuple[str, ...] = DEFAULT_TOKENIZE_KEYS
    drop: tuple[str, ...] = DEFAULT_DROP_KEYS
    keep: tuple[str, ...] = ()
    detect_values: bool = True


@dataclass(frozen=True)
class Source:
    """A client source: events sent with its write key are stamped ``source=name``.

    ``key_digest``: the write key's digest (:func:`headwater.credentials.digest`); the key
    itself is never stored (it is shown once, when created). Per-source policies (all
    optional in ``sources.json``): ``pii`` (:class:`PiiPolicy`); ``unregistered_events``: what
    the collector does with an event whose name has no registered schema — ``"accept"``
    (store it, unvalidated) or ``"reject"`` (bad row ``schema_violation``)."""

    name: str
    key_digest: str
    pii: PiiPolicy = PiiPolicy()
    unregistered_events: str = "accept"

    def __post_init__(self):
        if self.unregistered_events not in UNREGISTERED_POLICIES:
            raise InvalidInputError(f"unregistered_events: must be one of {', '.join(UNREGISTERED_POLICIES)}, got {self.unregistered_events!r}")
        if not credentials.is_digest(self.key_digest):
            raise InvalidInputError("key_digest: expected 'sha256:' and 64 hex digits", field="key_digest")

    @property
    def key_fingerprint(self) -> str:
        """The write key's public short name (:func:`headwater.credentials.fingerprint`)."""
        return credentials.fingerprint(self.key_digest)


@dataclass(frozen=True)
class Home:
    """The home directory of one installation, the paths inside it, and its settings.

    ``settings``: the installation's :class:`headwater.settings.Settings`, loaded once at the
    edge (CLI command, process start) and passed down with the home. ``Home(path)`` alone
    resolves them for ``path`` on first use (environment + ``headwater.toml``)."""

    root: Path
    _settings: Settings | None = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def from_env(cls, **overrides) -> "Home":
        """The home named by ``HEADWATER_HOME`` (default ``./.headwater``), created if absent,
        with its settings resolved once (``overrides``: dotted keys given on the command line,
        see :func:`headwater.settings.load`). Raises :class:`headwater.errors.InvalidInputError`
        naming the bad setting."""
        settings = load_settings(**overrides)
        return cls(settings.home, settings)

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            object.__setattr__(self, "_settings", load_settings(home=Path(self.root)))
        return self._settings

    @property
    def sources_path(self) -> Path:
        return self.root / "sources.json"

    def checkpoint_dir(self, query: str) -> Path:
        return self.root / "checkpoints" / query

    # -- secrets ------------------------------------------------------------------
    def hmac_key(self) -> bytes:
        """Key of the identifier HMAC: setting ``collector.hmac_key`` (hex) if set, else the
        key file, generated (32 random bytes, mode 0600) on first use."""
        key = self.settings.collector.hmac_key
        if key is not None:
            return bytes.fromhex(key.get_secret_value())
        path = self.root / "secrets" / "hmac.key"
        if not path.exists():
            _write_private(path, secrets.token_bytes(32), replace=False)
        return path.read_bytes()

    # -- sources ------------------------------------------------------------------
    def sources(self) -> list[Source]:
        """All sources; ``[]`` before the first one is added. Raises
        :class:`~headwater.errors.InvalidInputError` naming the file and field if
        ``sources.json`` does not hold a list of sources.

        A file written before keys were hashed (entries with a plain ``write_key``) is
        migrated on first read: each key is replaced by its digest and the file rewritten,
        so the keys already deployed keep working and no longer sit in plain text."""
        if not self.sources_path.exists():
            return []
        try:
            raw = msgspec.json.decode(self.sources_path.read_bytes())
            plain = isinstance(raw, list) and any(isinstance(s, dict) and "write_key" in s for s in raw)
            if plain:
                raw = [_hash_key(s) for s in raw]
            sources = msgspec.convert(raw, type=list[Source])
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            raise InvalidInputError(f"{self.sources_path}: {e}", field=str(self.sources_path)) from None
        if plain:
            self._write_sources(sources)
        return sources

    def add_source(self, name: str, write_key: str | None = None) -> str:
        """Add source ``name`` and return its write key — the only time it is available:
        ``sources.json`` keeps its digest. The key is generated (``hw_wk_`` + 192 random
        bits) unless given; a given key must pass :func:`headwater.credentials.check_strength`
        (:class:`~headwater.errors.InvalidInputError`). Adding an existing source with its
        own key again returns that key (idempotent).

        Raises :class:`~headwater.errors.ConflictError` if ``write_key`` belongs to another
        source, or if ``name`` exists and ``write_key`` is not its key (see :meth:`rotate_key`)."""
        existing = self.sources()
        key, owner = _claim_key(name, write_key, existing)
        if owner is None and any(s.name == name for s in existing):
            raise ConflictError(f"source {name!r} exists; its write key was shown when it was created "
                                f"(`headwater source rotate {name}` issues a new one)", field="name")
        if owner is None:
            self._write_sources(existing + [Source(name, credentials.digest(key))])
        return key

    def rotate_key(self, name: str, write_key: str | None = None) -> str:
        """Give source ``name`` a new write key (generated unless given, as in
        :meth:`add_source`) and return it; the old key stops working within a second.
        :class:`~headwater.errors.NotFoundError` if there is no such source,
        :class:`~headwater.errors.ConflictError` if ``write_key`` belongs to another source."""
        key, _ = _claim_key(name, write_key, self.sources())
        self.update_source(name, key_digest=credentials.digest(key))
        return key

    def update_source(self, name: str, **changes) -> Source:
        """Replace fields of source ``name`` (e.g. ``pii=PiiPolicy(...)``,
        ``unregistered_events="reject"``); :class:`~headwater.errors.NotFoundError` if there is
        no such source, :class:`~headwater.errors.InvalidInputError` for an invalid value. The
        collector picks the change up within a second."""
        existing = self.sources()
        match = [s for s in existing if s.name == name]
        if not match:
            raise NotFoundError(f"source {name!r}: no such source (see `headwater source list`)", field="source")
        updated = dataclasses.replace(match[0], **changes)
        self._write_sources([updated if s.name == name else s for s in existing])
        return updated

    def _write_sources(self, sources: list[Source]) -> None:
        _write_private(self.sources_path, json.dumps(msgspec.to_builtins(sources), indent=2).encode())


def _hash_key(entry: dict) -> dict:
    """A ``sources.json`` entry with its plain ``write_key`` replaced by ``key_digest``."""
    if not isinstance(entry, dict) or "write_key" not in entry:
        return entry
    entry = dict(entry)
    entry["key_digest"] = credentials.digest(str(entry.pop("write_key")))
    return entry


def _claim_key(name: str, write_key: str | None, existing: list[Source]) -> tuple[str, Source | None]:
    """The write key for source ``name`` (``write_key`` checked for strength, else a generated
    one) and the source among ``existing`` that already holds it (None if none).
    :class:`~headwater.errors.ConflictError` if that is another source."""
    key = credentials.check_strength(write_key, "write_key") if write_key is not None else credentials.generate(credentials.WRITE_KEY_PREFIX)
    digest = credentials.digest(key)
    owner = next((s for s in existing if s.key_digest == digest), None)
    if owner is not None and owner.name != name:
        raise ConflictError(f"write_key: already used by source {owner.name!r}", field="write_key")
    return key, owner
