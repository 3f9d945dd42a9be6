"""The settings object: resolution order, validation errors that name the key and the rule,
secrets masked, and README.md's settings table rendered from the code."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.settings import ENV_ALIASES, describe, load, settings_table

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture
def home(tmp_path, monkeypatch):
    for name in ["HEADWATER_HOME", *ENV_ALIASES]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path))
    return tmp_path


def toml(home: Path, text: str) -> None:
    (home / "headwater.toml").write_text(text)


def error(**overrides) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as e:
        load(**overrides)
    return e.value


def test_readme_holds_the_settings_table_rendered_from_the_code():
    table = settings_table()
    assert table in README.read_text(), "README.md's settings table is stale: paste `headwater config docs` into it"
    assert CliRunner().invoke(cli, ["config", "docs"]).stdout == table
    for key in ("log.partitions", "collector.port", "batch.first_ds", "dagster.port", "cdc.dsn", "registry.url"):
        assert f"| `{key}` |" in table
    for env in ENV_ALIASES:
        assert f"`{env}`" in table


def test_defaults_toml_env_and_overrides_in_that_order(home, monkeypatch):
    s = load()
    assert (s.home, s.collector.port, s.log.partitions, s.batch.engine) == (home, 8088, 4, "duckdb")
    assert s.log_url == f"sqlite:///{home / 'log' / 'log.db'}" and s.lake_root == str(home / "lake")
    toml(home, '[collector]\nport = 9000\n[log]\npartitions = 8\n[batch]\nfirst_ds = 2024-01-01\n')
    s = load()
    assert (s.collector.port, s.log.partitions, s.batch.first_ds) == (9000, 8, dt.date(2024, 1, 1))
    monkeypatch.setenv("HEADWATER_PORT", "9100")  # the short name documented since the first release
    assert load().collector.port == 9100
    monkeypatch.setenv("HEADWATER_COLLECTOR_PORT", "9200")  # the full name wins over the short one
    assert load().collector.port == 9200
    assert load(**{"collector.port": 9300, "log.partitions": None}).collector.port == 9300  # None: option not given
    monkeypatch.setenv("HEADWATER_DAGSTER_PORT", "")  # empty: unset
    assert load().dagster.port is None


@pytest.mark.parametrize("text,message", [
    ("[log]\npartitions = 0\n", "log.partitions: Input should be greater than or equal to 1 (got 0, from headwater.toml)"),
    ('[log]\npartitions = "four"\n', "log.partitions: Input should be a valid integer, unable to parse string as an integer (got 'four', from headwater.toml)"),
    ("[stream]\ntrigger_interval = 1\n", "stream.trigger_interval: unknown setting in [stream] (from headwater.toml); known: trigger_interval_s,"),
    ("[colector]\nport = 1\n", "colector: unknown section in"),
    ("log = 3\n", "log: Input should be a valid dictionary"),
    ('[batch]\nengine = "flink"\n', "batch.engine: Input should be 'duckdb' or 'spark' (got 'flink', from headwater.toml)"),
    ('home = "/elsewhere"\n', "home: cannot be set in"),
    ("[log\npartitions = 1\n", "headwater.toml: not valid TOML: Expected ']' at the end of a table declaration (at line 1, column 5)"),
])
def test_toml_errors_name_the_key_and_the_rule(home, text, message):
    toml(home, text)
    e = error()
    assert message in str(e)
    assert e.field and str(e).startswith(e.field)  # the key (or, for a syntax error, the file)


@pytest.mark.parametrize("env,value,message", [
    ("HEADWATER_LOG_PARTITIONS", "many", "log.partitions: Input should be a valid integer, unable to parse string as an integer (got 'many', from env HEADWATER_LOG_PARTITIONS)"),
    ("HEADWATER_PARTITIONS", "0", "log.partitions: Input should be greater than or equal to 1 (got '0', from env HEADWATER_PARTITIONS)"),
    ("HEADWATER_STREAM_TRIGGER_INTERVAL", "1", "stream.trigger_interval: unknown setting in [stream] (from env HEADWATER_STREAM_TRIGGER_INTERVAL)"),
    ("HEADWATER_FIRST_DS", "March", "batch.first_ds: Input should be a valid date or datetime"),
    ("HEADWATER_DAGSTER_PORT", "70000", "dagster.port: Input should be less than or equal to 65535"),
    ("HEADWATER_REGISTRY_URL", "mysql://u:pw@db/x", "registry.url: expected a postgresql:// URL, got 'mysql'://… (from env HEADWATER_REGISTRY_URL)"),
    ("HEADWATER_HMAC_KEY", "not-hex", "collector.hmac_key: expected an even number of hex digits (from env HEADWATER_HMAC_KEY)"),
])
def test_environment_errors_name_the_key_and_the_variable(home, monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    e = error()
    assert message in str(e) and e.field == message.split(":")[0]
    assert "pw@" not in str(e)  # secrets are never echoed


def test_override_errors_name_the_key(home):
    assert "stream.trigger_interval_s: Input should be greater than 0 (got -1, from option)" in str(error(**{"stream.trigger_interval_s": -1}))


def test_secrets_are_masked_and_origins_told(home, monkeypatch):
    toml(home, '[cdc]\ndsn = "host=db password=hunter2"\n[stream]\ncompact_every = 0\n')
    monkeypatch.setenv("HEADWATER_WRITE_KEY", "wk-secret")
    s = load()
    assert s.cdc.dsn.get_secret_value() == "host=db password=hunter2" and "hunter2" not in repr(s)
    rows = {r["key"]: r for r in describe(s)}
    assert rows["cdc.dsn"] == {"key": "cdc.dsn", "value": "**********", "origin": "headwater.toml", "env": "HEADWATER_CDC_DSN"}
    assert rows["collector.write_key"]["value"] == "**********" and rows["collector.write_key"]["origin"] == "env HEADWATER_WRITE_KEY"
    assert rows["stream.compact_every"]["value"] == 0 and rows["collector.hmac_key"] == {
        "key": "collector.hmac_key", "value": None, "origin": "default", "env": "HEADWATER_COLLECTOR_HMAC_KEY, HEADWATER_HMAC_KEY"}


def test_home_carries_the_settings(home, monkeypatch):
    monkeypatch.setenv("HEADWATER_HMAC_KEY", "00ff" * 8)
    h = Home.from_env(**{"stream.retain_batches": 7})
    assert h.settings.stream.retain_batches == 7 and h.hmac_key() == bytes.fromhex("00ff" * 8)
    assert Home(home).settings.stream.retain_batches == 100  # a bare Home resolves its own, without overrides
