"""One settings object for an installation: :class:`Settings`, loaded once at the edge.

Resolution order, highest first (pydantic-settings):

1. arguments given to :func:`load` (the CLI's explicit options);
2. environment variables ``HEADWATER_<SECTION>_<KEY>`` (``HEADWATER_LOG_URL``,
   ``HEADWATER_STREAM_TRIGGER_INTERVAL_S``), and the short names documented since the first
   release (:data:`ENV_ALIASES`: ``HEADWATER_PORT``, ``HEADWATER_WRITE_KEY``, …);
3. ``$HEADWATER_HOME/headwater.toml``, one ``[section]`` per group below;
4. the defaults declared here.

``HEADWATER_HOME`` itself (default ``./.headwater``) is only read from the environment or
:func:`load`: the TOML file lives inside it. Every setting, its default and its variable are
listed in README.md's settings table (a test keeps the two in step, see
:func:`settings_table`). Invalid values raise :class:`headwater.errors.InvalidInputError`
naming the key (``log.partitions``) and the rule. Secrets are ``SecretStr``: they print as
``**********`` (``headwater config show``) and never reach logs.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from headwater.errors import InvalidInputError

SETTINGS_FILE = "headwater.toml"

# Variables documented before the settings object existed: short name -> dotted key.
ENV_ALIASES: dict[str, str] = {
    "HEADWATER_PORT": "collector.port",
    "HEADWATER_WRITE_KEY": "collector.write_key",
    "HEADWATER_HMAC_KEY": "collector.hmac_key",
    "HEADWATER_PARTITIONS": "log.partitions",
    "HEADWATER_ENGINE": "batch.engine",
    "HEADWATER_FIRST_DS": "batch.first_ds",
    "HEADWATER_REGISTRY_URL": "registry.url",
    "HEADWATER_DAGSTER_PORT": "dagster.port",
    "HEADWATER_CDC_DSN": "cdc.dsn",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogSettings(_Section):
    url: str = Field("", description="Event log backend URL; empty: sqlite:///$HEADWATER_HOME/log/log.db.")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of a new events topic (an existing topic keeps its own).")
    retention_ms: int = Field(7 * 86_400_000, ge=0, description="Consumed log records older than this are deleted (ms).")


class LakeSettings(_Section):
    root: str = Field("", description="Lake root URI (a path or an object-store URI); empty: $HEADWATER_HOME/lake.")


class CollectorSettings(_Section):
    port: int = Field(8088, ge=1, le=65535, description="Collector / API port on 127.0.0.1.")
    write_key: SecretStr | None = Field(None, description="`headwater up` makes sure a source with this write key exists.")
    hmac_key: SecretStr | None = Field(None, description="Identifier HMAC key (hex); empty: secrets/hmac.key, generated on first use.")


class StreamSettings(_Section):
    trigger_interval_s: float = Field(0.5, gt=0, description="Processing-time trigger: seconds between micro-batches when idle.")
    max_records_per_partition: int = Field(50_000, ge=1, description="Micro-batch bound per log partition (events).")
    retain_batches: int = Field(100, ge=1, description="Offset / commit log entries kept.")
    compact_every: int = Field(50, ge=0, description="Compact the bronze partitions written every this many batches (0: never).")


class BatchSettings(_Section):
    engine: Literal["duckdb", "spark"] = Field("duckdb", description="Batch SQL engine.")
    first_ds: dt.date | None = Field(None, description="First daily partition of the Dagster assets; empty: the first ds in bronze.events.")


class RegistrySettings(_Section):
    url: SecretStr | None = Field(None, description="postgresql:// URL of the contract store; empty: $HEADWATER_HOME/registry.")


class DagsterSettings(_Section):
    port: int | None = Field(None, ge=1, le=65535, description="Dagster UI port of `headwater up`; empty: a free port.")


class CdcSettings(_Section):
    dsn: SecretStr | None = Field(None, description="libpq connection string of the Postgres CDC source.")


class Settings(BaseSettings):
    """The effective configuration of one installation (frozen: pass it down, never mutate).

    ``home`` is the installation directory; the other fields are the sections of
    ``headwater.toml``. Derived locations (:attr:`log_url`, :attr:`lake_root`) fill in the
    defaults that depend on ``home``."""

    model_config = SettingsConfigDict(
        env_prefix="HEADWATER_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
        frozen=True,
    )

    home: Path = Field(Path(".headwater"), description="Installation directory: all state lives under it.")
    log: LogSettings = LogSettings()
    lake: LakeSettings = LakeSettings()
    collector: CollectorSettings = CollectorSettings()
    stream: StreamSettings = StreamSettings()
    batch: BatchSettings = BatchSettings()
    registry: RegistrySettings = RegistrySettings()
    dagster: DagsterSettings = DagsterSettings()
    cdc: CdcSettings = CdcSettings()

    @property
    def log_url(self) -> str:
        """``log.url``, or ``sqlite:///<home>/log/log.db`` when it is empty."""
        return self.log.url or f"sqlite:///{self.home / 'log' / 'log.db'}"

    @property
    def lake_root(self) -> str:
        """``lake.root``, or ``<home>/lake`` when it is empty (a local path or an object-store URI)."""
        return self.lake.root or str(self.home / "lake")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _AliasSource(settings_cls), _TomlSource(settings_cls))


class _AliasSource(PydanticBaseSettingsSource):
    """The short environment names of :data:`ENV_ALIASES`, as nested values."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for env, key in ENV_ALIASES.items():
            value = os.environ.get(env)
            if value is None or value == "":
                continue
            section, name = key.split(".")
            out.setdefault(section, {})[name] = value
        return out


class _TomlSource(PydanticBaseSettingsSource):
    """``$HEADWATER_HOME/headwater.toml`` (absent: no values)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _home_from(self.current_state) / SETTINGS_FILE
        if not path.exists():
            return {}
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise InvalidInputError(f"{path}: not valid TOML: {e}", field=str(path)) from None
        data.pop("home", None)  # the file lives in the home: it cannot move it
        return data


def _home_from(state: dict[str, Any]) -> Path:
    home = state.get("home") or os.environ.get("HEADWATER_HOME") or ".headwater"
    return Path(home)


def load(**overrides: Any) -> Settings:
    """Resolve the settings (see the module docstring) with ``overrides`` on top, as nested
    dicts or dotted keys (``load(home=path, **{"collector.port": 9000})``).

    ``home`` is made absolute and created. Raises :class:`InvalidInputError` naming the first
    bad key and its rule, e.g. ``log.partitions: Input should be greater than or equal to 1
    (got 0)``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if name:
            nested.setdefault(section, {})[name] = value
        else:
            nested[section] = value
    try:
        settings = Settings(**nested)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        got = err.get("input")
        shown = "" if isinstance(got, dict) or key.endswith(("key", "dsn", "url")) else f" (got {got!r})"
        raise InvalidInputError(f"{key}: {err['msg']}{shown}", field=key) from None
    home = settings.home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(update={"home": home})
