"""One settings object for an installation: :class:`Settings`, loaded once at the edge.

Resolution order, highest first (pydantic-settings):

1. arguments given to :func:`load` (the CLI's explicit options, e.g. ``headwater stream
   --trigger-interval 0.2`` overrides ``stream.trigger_interval_s``);
2. environment variables ``HEADWATER_<SECTION>_<KEY>`` (``HEADWATER_LOG_URL``,
   ``HEADWATER_STREAM_TRIGGER_INTERVAL_S``), and the short names documented since the first
   release (:data:`ENV_ALIASES`: ``HEADWATER_PORT``, ``HEADWATER_WRITE_KEY``, …); an empty
   variable counts as unset;
3. ``$HEADWATER_HOME/headwater.toml``, one ``[section]`` per group below;
4. the defaults declared here.

``HEADWATER_HOME`` itself (default ``./.headwater``) is only read from the environment or
:func:`load`: the TOML file lives inside it. Every setting, its default and its variable are
listed in README.md's settings table, rendered from this module by :func:`settings_table`
(``python -m headwater.settings --markdown``; a test keeps the two in step). Invalid values
raise :class:`headwater.errors.InvalidInputError` naming the key (``log.partitions``), the
rule and where the value came from; an unknown section or key is refused the same way, so
a typo never passes silently. Secrets are ``SecretStr``: they print as ``**********``
(``headwater config show``) and never reach logs.

Settings are not data. The files an installation *accumulates* keep their own formats and
commands, and this object never holds them: ``sources.json`` (sources, write keys, PII
policies: ``headwater source``), ``models.toml`` (funnels, experiments, identity policy of
the batch models: :mod:`headwater.models.config`), pipeline TOML files (``headwater stream
--pipeline``) and the registry's contracts (``headwater schema``).
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from headwater.errors import InvalidInputError

SETTINGS_FILE = "headwater.toml"
ENV_PREFIX = "HEADWATER_"

# Variables documented before the settings object existed: short name -> dotted key.
ENV_ALIASES: dict[str, str] = {
    "HEADWATER_PORT": "collector.port",
    "HEADWATER_WRITE_KEY": "collector.write_key",
    "HEADWATER_HMAC_KEY": "collector.hmac_key",
    "HEADWATER_PARTITIONS": "log.partitions",
    "HEADWATER_ENGINE": "batch.engine",
    "HEADWATER_FIRST_DS": "batch.first_ds",
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogSettings(_Section):
    url: str = Field("", description="Event log backend URL; empty: `sqlite:///$HEADWATER_HOME/log/log.db`.")
    partitions: int = Field(4, ge=1, le=1024, description="Partitions of a new events topic (an existing topic keeps its own).")
    retention_ms: int = Field(7 * 86_400_000, ge=0, description="Consumed log records older than this are deleted (ms).")
    replication_factor: int | None = Field(None, ge=1, le=32767, description="Replication factor of the topics a `kafka://` log creates; empty: the broker's `default.replication.factor`.")
    kafka: dict[str, SecretStr] = Field({}, description="librdkafka client properties of a `kafka://` log, e.g. `security.protocol`, `sasl.mechanisms`, `sasl.username`, `sasl.password`, `ssl.ca.location` (TOML table `[log.kafka]`, or JSON in the variable); values are secret (docs/kafka.md).")


class LakeSettings(_Section):
    root: str = Field("", description="Lake root URI (a path or an object-store URI); empty: `$HEADWATER_HOME/lake`.")
    vacuum_retention_h: float = Field(168.0, ge=0, description="Delta files superseded longer ago than this are vacuumed; time travel works within it (hours).")
    vacuum_every_h: float = Field(24.0, gt=0, description="How often Dagster's `maintain` schedule vacuums every table (hours; `headwater maintain` runs it by hand).")
    compact_min_files: int = Field(50, ge=2, description="A partition (or unpartitioned table) holding this many small files (under half `target_file_mb`) is compacted: by the stream for the tables it appends to, by `headwater maintain` for every table.")
    target_file_mb: int = Field(128, ge=1, description="Size of the files compaction and clustering write (MiB).")
    realtime_retention_days: float = Field(7.0, gt=0, description="`headwater maintain` deletes the `realtime.*` windows that ended longer ago than this (days; gold keeps the history).")
    s3_endpoint: str = Field("", description="Endpoint of the S3-compatible store of an `s3://` root (`http://host:9000`: plain HTTP allowed); empty: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, else AWS S3 (docs/object-storage.md).")
    s3_region: str = Field("", description="Region of an `s3://` root's bucket; empty: `AWS_REGION` or the AWS profile.")
    s3_access_key_id: SecretStr | None = Field(None, description="Access key id for an `s3://` root; empty: the AWS credential chain (`AWS_ACCESS_KEY_ID`, profile, instance role).")
    s3_secret_access_key: SecretStr | None = Field(None, description="Secret access key of `lake.s3_access_key_id`.")
    s3_commit: Literal["conditional_put", "unsafe_rename"] = Field("conditional_put", description="How writers of an `s3://` lake keep concurrent commits apart: `conditional_put` (S3 conditional writes: AWS, MinIO, R2, …) or `unsafe_rename` (stores without them; one writer process only).")


class CollectorSettings(_Section):
    port: int = Field(8088, ge=1, le=65535, description="Collector / API port on 127.0.0.1.")
    workers: int | None = Field(None, ge=1, le=256, description="Collector processes serving `port` together (`headwater collector`, `headwater up`), a killed one restarted; `max_in_flight`, `max_queue`, `max_loop_delay_ms`, `rate_limit_per_key` and `auth_failures_per_minute` apply per process. Empty: the cores this process may run on.")
    write_key: SecretStr | None = Field(None, description="`headwater up` makes sure a source with this write key exists.")
    hmac_key: SecretStr | None = Field(None, description="Identifier HMAC key (hex); empty: `secrets/hmac.key`, generated on first use.")
    future_tolerance_h: float = Field(23.0, ge=0, description="An event time more than this ahead of the receive time is replaced by the receive time and flagged (hours; PostHog's rule).")
    max_in_flight: int = Field(256, ge=1, description="Ingestion requests handled at once; more are answered 429 with `Retry-After`.")
    max_loop_delay_ms: float = Field(250.0, ge=0, description="Event-loop delay (ms) above which ingestion is answered 429 with `Retry-After` (0: no limit).")
    max_queue: int = Field(1024, ge=1, description="Requests waiting for the log's group commit; more are answered 429 with `Retry-After`.")
    append_timeout_s: float = Field(10.0, gt=0, description="Deadline of a durable log append (s); past it the request is answered 503 with `Retry-After`.")
    max_lag_events: int = Field(5_000_000, ge=0, description="Log records the stream has not yet consumed before ingestion is answered 429 (0: no limit).")
    max_disk_used: float = Field(0.95, gt=0, le=1, description="Share of the home's filesystem in use above which ingestion is answered 503.")
    stream_stall_s: float = Field(120.0, gt=0, description="`/health` reports the stream down when it has lag and its consumer group committed nothing for this long (s).")
    max_events_per_request: int = Field(10_000, ge=1, description="Messages in one batch request; more → 413 naming the limit.")
    max_depth: int = Field(64, ge=2, description="JSON nesting depth of a message; deeper → that message is a bad row.")
    rate_limit_per_key: float = Field(2000.0, ge=0, description="Requests per second allowed per write key (moving window of 2 s: bursts up to 2×); over → 429 with `Retry-After` (0: no limit).")
    auth_failures_per_minute: int = Field(30, ge=0, description="Failed authentications (401) allowed per client address a minute; past it every request of that address → 429 (0: no limit).")
    tls_certfile: Path | None = Field(None, description="PEM certificate: serve HTTPS (production); empty: plain HTTP on 127.0.0.1.")
    tls_keyfile: Path | None = Field(None, description="PEM private key of `tls_certfile`.")

    @field_validator("hmac_key")
    @classmethod
    def _hex(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                bytes.fromhex(value.get_secret_value())
            except ValueError:
                raise ValueError("expected an even number of hex digits") from None
        return value

    @property
    def worker_count(self) -> int:
        """``workers``, or when empty the cores this process may run on (its CPU affinity, which
        a container's cpuset narrows; ``os.cpu_count()`` where the OS has no affinity call)."""
        if self.workers:
            return self.workers
        affinity = getattr(os, "sched_getaffinity", None)
        return len(affinity(0)) if affinity else os.cpu_count() or 1


class StreamSettings(_Section):
    trigger_interval_s: float = Field(0.5, gt=0, description="Processing-time trigger: seconds between micro-batches when idle.")
    max_records_per_partition: int = Field(50_000, ge=1, description="Micro-batch bound per log partition (events).")
    retain_batches: int = Field(100, ge=1, description="Offset / commit log entries kept.")
    compact_every: int = Field(1, ge=0, description="Every this many batches, the stream compacts each partition it appended to that holds `lake.compact_min_files` small files (0: never).")
    max_batch_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Micro-batch bound in bytes of log records read (with `max_records_per_partition`).")
    watermark_tolerance_s: float = Field(60.0, ge=0, description="The watermark never runs ahead of processing time plus this (s).")
    quarantine_after: int = Field(3, ge=1, description="A micro-batch that fails this many times in a row is quarantined (skipped only by `headwater quarantine skip`).")
    restart_backoff_max_s: float = Field(60.0, gt=0, description="Longest wait of the supervisor's exponential restart backoff (s).")
    engine: Literal["embedded", "spark"] = Field("embedded", description="Stream engine of `headwater stream` and `headwater up`: `embedded` (headwater's micro-batch engine) or `spark` (the same pipeline on Spark Structured Streaming at `spark.master`; docs/operations.md).")


class BatchSettings(_Section):
    engine: Literal["duckdb", "spark"] = Field("duckdb", description="Batch SQL engine: `duckdb` (embedded) or `spark` (Spark SQL, same models).")
    first_ds: dt.date | None = Field(None, description="First daily partition of the Dagster assets (YYYY-MM-DD); empty: the first ds in bronze.events.")


class SparkSettings(_Section):
    master: str = Field("local[2]", description="Spark master URL of the Spark engines (`local[N]`, `spark://host:port` of a standalone cluster, `yarn`, `k8s://…`); executors write the Delta files, the driver commits.")


class RegistrySettings(_Section):
    url: SecretStr | None = Field(None, description="`postgresql://` URL of the contract store; empty: files under `$HEADWATER_HOME/registry`.")

    @field_validator("url")
    @classmethod
    def _postgres(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            scheme = value.get_secret_value().partition("://")[0]
            raise ValueError(f"expected a postgresql:// URL, got {scheme!r}://…")
        return value


class DagsterSettings(_Section):
    port: int | None = Field(None, ge=1, le=65535, description="Dagster UI port of `headwater up`; empty: a free port.")
    ui: Literal["on_demand", "always"] = Field("on_demand", description="When `headwater up` starts the Dagster UI process: `on_demand` (when its port gets its first connection; until then it uses no memory) or `always` (at start).")


class CdcSettings(_Section):
    dsn: SecretStr | None = Field(None, description="libpq connection string of the Postgres CDC source (`headwater cdc --dsn`).")


class ServeSettings(_Section):
    k_anonymity: int = Field(10, ge=1, description="Privacy floor: a breakdown cell of a metric endpoint or `viewer` result with fewer distinct persons than this is suppressed (1: off).")
    sql_timeout_s: float = Field(30.0, gt=0, description="Statement timeout of `POST /api/sql`, in seconds: a statement still running is interrupted (504).")
    sql_max_rows: int = Field(100_000, ge=1, description="Most rows `POST /api/sql` returns (a request's `limit` may only lower it).")


class QualitySettings(_Section):
    realtime_max_delay_s: float = Field(60.0, gt=0, description="Freshness SLA of `realtime.*`: the newest accepted event may wait at most this long for the table's next commit (s).")
    gold_ready_by_utc: dt.time = Field(dt.time(6, 0), description="Freshness SLA of gold: yesterday's partitions are published by this time of day (UTC, HH:MM).")
    bad_row_rate_max: float = Field(0.01, ge=0, le=1, description="A day whose bad rows / (events + bad rows) exceeds this fails `bad_row_rate`.")
    anomaly_z: float = Field(3.0, gt=0, description="Volume and conversion anomalies: flag a day whose robust z-score (median / 1.4826·MAD over the same weekday of past weeks) reaches this in absolute value.")
    volume_weeks: int = Field(4, ge=1, description="Same-weekday history of a volume check (weeks; a short one follows a growing product).")
    conversion_weeks: int = Field(8, ge=1, description="Same-weekday history of a funnel-step conversion check (weeks; a long one keeps a multi-week incident out of the baseline).")
    min_weeks: int = Field(4, ge=1, description="Fewest weeks of history before an anomaly check judges a day.")
    volume_min_scale: float = Field(0.3, gt=0, description="Floor of a volume check's scale, in ln(1 + events) units (daily counts are clustered by session: 4 weeks of MAD understate their spread).")
    conversion_min_scale: float = Field(0.15, gt=0, description="Floor of a conversion check's scale (absolute conversion rate).")
    conversion_window_days: int = Field(7, ge=1, description="A conversion rate is taken over the trailing this many days (a day's few entries are too noisy to judge).")
    volume_min_count: int = Field(10, ge=1, description="A volume series whose baseline median is below this is not judged (events).")
    conversion_min_count: int = Field(10, ge=1, description="A conversion rate over fewer step entries than this is not judged nor used as history (events).")
    webhook_url: str = Field("", description="`headwater check` POSTs a JSON summary of its warnings and failures here; empty: no webhook.")
    webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of the webhook POST (s); a failed POST is reported, never fatal.")


class Settings(BaseSettings):
    """The effective configuration of one installation (frozen: pass it down, never mutate).

    ``home`` is the installation directory; the other fields are the sections of
    ``headwater.toml``. Derived locations (:attr:`log_url`, :attr:`lake_root`) fill in the
    defaults that depend on ``home``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="_",
        env_nested_max_split=1,
        env_ignore_empty=True,
        extra="ignore",  # other HEADWATER_* variables are not settings; sections refuse unknown keys
        frozen=True,
    )

    home: Path = Field(Path(".headwater"), description="Installation directory: all state lives under it (environment only).")
    log: LogSettings = LogSettings()
    lake: LakeSettings = LakeSettings()
    collector: CollectorSettings = CollectorSettings()
    stream: StreamSettings = StreamSettings()
    batch: BatchSettings = BatchSettings()
    spark: SparkSettings = SparkSettings()
    registry: RegistrySettings = RegistrySettings()
    dagster: DagsterSettings = DagsterSettings()
    cdc: CdcSettings = CdcSettings()
    serve: ServeSettings = ServeSettings()
    quality: QualitySettings = QualitySettings()

    @field_validator("home")
    @classmethod
    def _absolute(cls, home: Path) -> Path:
        # Derived locations (log_url, lake_root) and child processes need an absolute home.
        return home.expanduser().resolve()

    @property
    def log_url(self) -> str:
        """``log.url``, or ``sqlite:///<home>/log/log.db`` when it is empty. A ``kafka://`` URL
        gets ``log.replication_factor``, ``log.retention_ms`` and the ``log.kafka`` client
        properties as query parameters (then it holds secrets: never log it)."""
        url = self.log.url or f"sqlite:///{self.home / 'log' / 'log.db'}"
        if not url.startswith("kafka://"):
            return url
        extra = {"retention_ms": str(self.log.retention_ms), **{k: v.get_secret_value() for k, v in self.log.kafka.items()}}
        if self.log.replication_factor is not None:
            extra["replication_factor"] = str(self.log.replication_factor)
        return url + ("&" if "?" in url else ("?" if url.endswith("/") else "/?")) + urllib.parse.urlencode(extra)

    @property
    def lake_root(self) -> str:
        """``lake.root``, or ``<home>/lake`` when it is empty (a local path or an object-store URI)."""
        return self.lake.root or str(self.home / "lake")

    @property
    def lake_s3_endpoint(self) -> str:
        """``lake.s3_endpoint``, or when empty the AWS SDKs' ``AWS_ENDPOINT_URL_S3`` /
        ``AWS_ENDPOINT_URL`` (delta-rs reads them itself, pyarrow's ``S3FileSystem`` does not),
        or ``""``: AWS S3's own endpoint."""
        return self.lake.s3_endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _AliasSource(settings_cls), _TomlSource(settings_cls))


SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation for name, field in Settings.model_fields.items() if name != "home"
}


class _AliasSource(PydanticBaseSettingsSource):
    """The short environment names of :data:`ENV_ALIASES`, as nested values."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for env, key in ENV_ALIASES.items():
            value = os.environ.get(env)
            if value:
                section, name = key.split(".")
                out.setdefault(section, {})[name] = value
        return out


class _TomlSource(PydanticBaseSettingsSource):
    """``$HEADWATER_HOME/headwater.toml`` (absent: no values)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ does the work
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _read_toml(_home_from(self.current_state))


def _read_toml(home: Path) -> dict[str, Any]:
    """The sections of ``home``'s settings file, ``{}`` if there is none. Raises
    :class:`InvalidInputError` for invalid TOML or a key outside the known sections (the
    file's keys inside a section are checked by the section's model)."""
    path = home / SETTINGS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"{path}: not valid TOML: {e}", field=str(path)) from None
    for key in data:
        if key == "home":
            raise InvalidInputError(f"home: cannot be set in {path} (the file lives in the home); set HEADWATER_HOME", field="home")
        if key not in SECTIONS:
            raise InvalidInputError(f"{key}: unknown section in {path} (known: {', '.join(SECTIONS)})", field=key)
    return data


def _home_from(state: dict[str, Any]) -> Path:
    home = state.get("home") or os.environ.get("HEADWATER_HOME") or ".headwater"
    return Path(home)


def env_names(key: str) -> list[str]:
    """The environment variables of setting ``key`` (dotted), highest precedence first:
    ``env_names("log.partitions") == ["HEADWATER_LOG_PARTITIONS", "HEADWATER_PARTITIONS"]``."""
    return [ENV_PREFIX + key.replace(".", "_").upper(), *(env for env, k in ENV_ALIASES.items() if k == key)]


def origin(key: str, home: Path, overrides: dict[str, Any] | None = None) -> str:
    """Where setting ``key`` (dotted) gets its value: ``"option"`` (an override given to
    :func:`load`), ``"env HEADWATER_…"``, ``"headwater.toml"`` or ``"default"``."""
    if key in (overrides or {}):
        return "option"
    for env in env_names(key):
        if os.environ.get(env):
            return f"env {env}"
    section, _, name = key.partition(".")
    toml = _read_toml(home)
    if (name in toml.get(section, {})) if name else (section in toml):
        return SETTINGS_FILE
    return "default"


def load(**overrides: Any) -> Settings:
    """Resolve the settings (see the module docstring) with ``overrides`` on top, as dotted
    keys or nested dicts (``load(home=path, **{"collector.port": 9000})``; ``None`` values
    are ignored, so unset CLI options can be passed as they are).

    ``home`` is made absolute and created. Raises :class:`InvalidInputError` naming the first
    bad key, its rule and the value's origin, e.g. ``log.partitions: Input should be greater
    than or equal to 1 (got 0, from env HEADWATER_PARTITIONS)``."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if name:
            nested.setdefault(section, {})[name] = value
        else:
            nested[section] = value
    try:
        settings = Settings(**nested)
    except ValidationError as e:
        raise _invalid(e, _home_from(nested), overrides) from None
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings


def _invalid(e: ValidationError, home: Path, overrides: dict[str, Any]) -> InvalidInputError:
    """The first error of ``e`` as one line: key, rule, value (unless secret), origin."""
    err = e.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    section, _, name = key.partition(".")
    unknown = err["type"] == "extra_forbidden"
    rule = f"unknown setting in [{section}]" if unknown else err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    secret = name.endswith(("key", "key_id", "dsn", "url"))
    shown = [] if isinstance(got, dict) or secret or unknown else [f"got {got!r}"]
    message = f"{key}: {rule} ({', '.join([*shown, 'from ' + origin(key, home, overrides)])})"
    if unknown:
        message += f"; known: {', '.join(SECTIONS[section].model_fields)}"
    return InvalidInputError(message, field=key)


# -- documentation and display ----------------------------------------------------------------
def _fields() -> list[tuple[str, Any]]:
    """``(dotted key, pydantic FieldInfo)`` of every setting, in declaration order."""
    out = [("home", Settings.model_fields["home"])]
    for section, model in SECTIONS.items():
        out += [(f"{section}.{name}", f) for name, f in model.model_fields.items()]
    return out


def field_info(key: str):
    """The pydantic ``FieldInfo`` of setting ``key`` (dotted): its ``description``,
    ``default`` and ``annotation``. Raises ``KeyError`` for an unknown key."""
    return dict(_fields())[key]


def _plain(value: Any) -> Any:
    """A JSON-native form of a setting's value; secrets masked."""
    if isinstance(value, SecretStr):
        return "**********"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (Path, dt.date)):
        return str(value)
    return value


def describe(settings: Settings, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per setting: ``key``, ``value`` (JSON-native, secrets as ``**********``,
    ``None`` when unset), ``origin`` (see :func:`origin`) and ``env`` (its variables).
    An empty ``log.url`` / ``lake.root`` shows the location it resolves to."""
    derived = {"log.url": settings.log_url, "lake.root": settings.lake_root}
    rows = []
    for key, _ in _fields():
        value: Any = settings
        for part in key.split("."):
            value = getattr(value, part)
        value = value or derived.get(key, value)
        where = "env HEADWATER_HOME" if key == "home" and os.environ.get("HEADWATER_HOME") else origin(key, settings.home, overrides)
        rows.append({"key": key, "value": _plain(value), "origin": where, "env": ", ".join(env_names(key))})
    return rows


def settings_table() -> str:
    """README.md's settings table (Markdown), rendered from the field declarations."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for key, f in _fields():
        default = "" if f.default in (None, "") else f"`{_plain(f.default)}`"
        env = ", ".join(f"`{e}`" for e in env_names(key))
        lines.append(f"| `{key}` | {env} | {default} | {cell(f.description)} |")
    return "\n".join(lines) + "\n"
