"""The command line's shared rules, in-process: help everywhere, one output option on every
command that prints data, JSON-native values, shared date and engine options, and errors
mapped to exit codes in one place (one line, no traceback; --debug shows it)."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.cli.output import FORMATS, human_duration
from headwater.errors import NotFoundError

# Commands that print no data set: services and jobs (they log), and one-line answers
# meant for people or for $(...) capture.
NO_DATA = {
    "up", "collector", "stream", "demo",  # services / the demo job
    "source add", "source rotate",  # print the write key alone: KEY=$(headwater source add web)
    "token add",  # prints the read token alone: TOKEN=$(headwater token add --role viewer)
    "schema register", "schema check", "schema mode",  # one status line
    "config docs",  # Markdown for README.md
}


def commands(cmd: click.Command = cli, path: tuple[str, ...] = ()):
    yield " ".join(path), cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from commands(sub, (*path, name))


def run(tmp_path, *args, env=None):
    return CliRunner().invoke(cli, list(args), env={"HEADWATER_HOME": str(tmp_path / "home"), **(env or {})})


def test_every_command_and_option_has_help():
    for path, cmd in commands():
        assert (cmd.help or "").strip(), f"`headwater {path}` has no help text"
        for param in cmd.params:
            if isinstance(param, click.Option):
                assert (param.help or "").strip(), f"`headwater {path}` option {param.opts[0]} has no help text"


def test_every_command_that_prints_data_has_the_same_format_option():
    for path, cmd in commands():
        if isinstance(cmd, click.Group) and not cmd.invoke_without_command or path in NO_DATA or not path:
            continue
        (option,) = [p for p in cmd.params if "--format" in getattr(p, "opts", ())] or [None]
        assert option is not None, f"`headwater {path}` prints data but has no --format"
        assert (option.name, tuple(option.type.choices), option.default) == ("fmt", FORMATS, "table"), path
    for path, cmd in commands():  # input formats have their own name
        for param in cmd.params:
            if "--format" in getattr(param, "opts", ()):
                assert tuple(param.type.choices) == FORMATS, f"`headwater {path} --format` is not the output option"


def test_one_policy_command(tmp_path):
    assert run(tmp_path, "schema", "policy", "web").exit_code == 2
    assert "policy" in cli.commands["source"].commands


def test_json_output_is_json_native_and_tables_state_units(tmp_path):
    sql = "SELECT INTERVAL 5 MINUTE AS wait, INTERVAL 1 DAY + INTERVAL 90 SECOND AS longer, 2.50::DECIMAL(4, 2) AS price, " \
          "TIMESTAMPTZ '2024-05-01 10:00:00+00' AS at, DATE '2024-05-01' AS ds, [INTERVAL 2 SECOND] AS waits"
    r = run(tmp_path, "query", sql, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == [{"wait": 300.0, "longer": 86490.0, "price": 2.5, "at": "2024-05-01T10:00:00+00:00",
                                     "ds": "2024-05-01", "waits": [2.0]}]
    csv = run(tmp_path, "query", "SELECT INTERVAL 5 MINUTE AS wait, [1, 2] AS l", "--format", "csv").stdout.splitlines()
    assert csv == ['"wait","l"', '300,"[1, 2]"']
    assert "5 min 0 s" in run(tmp_path, "query", "SELECT INTERVAL 5 MINUTE AS wait").stdout


@pytest.mark.parametrize("seconds,text", [
    (None, "-"), (0.25, "0.25 s"), (42.04, "42.0 s"), (303, "5 min 3 s"), (7500, "2 h 5 min"), (897380063.1, "10386 d 8 h"),
])
def test_human_durations_state_their_unit(seconds, text):
    assert human_duration(seconds) == text


def test_documents_in_every_format(tmp_path):
    assert run(tmp_path, "source", "add", "web", "--write-key", "wk-cli-test-key-1").exit_code == 0
    doc = json.loads(run(tmp_path, "source", "policy", "web", "--format", "json").stdout)
    assert doc["name"] == "web" and "write_key" not in doc and doc["unregistered_events"] == "accept"
    csv = run(tmp_path, "source", "policy", "web", "--unregistered", "reject", "--format", "csv").stdout.splitlines()
    assert csv[0] == '"key","value"' and '"unregistered_events","reject"' in csv and '"pii.detect_values","true"' in csv
    assert "unregistered_events" in run(tmp_path, "source", "policy", "web").stdout


def test_batch_on_an_empty_home_is_one_line_and_debug_shows_the_traceback(tmp_path):
    r = run(tmp_path, "batch")
    assert r.exit_code == NotFoundError.exit_code, r.output
    assert r.stderr.startswith("Error: ") and "bronze.events" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not isinstance(r.exception, NotFoundError)  # mapped, not raised
    debug = run(tmp_path, "--debug", "batch")
    assert isinstance(debug.exception, NotFoundError)  # raised with its traceback


@pytest.mark.parametrize("command", ["batch", "backfill"])
def test_batch_and_backfill_share_date_and_engine_options(tmp_path, command):
    bad = run(tmp_path, command, "--start", "2024-13-01")
    assert bad.exit_code == 2 and "'2024-13-01' is not a date in YYYY-MM-DD form" in bad.stderr
    compact = run(tmp_path, command, "--end", "20240101")
    assert compact.exit_code == 2 and "'20240101' is not a date in YYYY-MM-DD form" in compact.stderr
    reversed_ = run(tmp_path, command, "--start", "2024-03-02", "--end", "2024-03-01")
    assert reversed_.exit_code == 2 and "--start 2024-03-02 is after --end 2024-03-01" in reversed_.stderr
    engine = run(tmp_path, command, "--engine", "flink")
    assert engine.exit_code == 2 and "'flink' is not one of 'duckdb', 'spark'" in engine.stderr
    from_env = run(tmp_path, command, env={"HEADWATER_ENGINE": "flink"})
    assert from_env.exit_code == 2 and "batch.engine: Input should be 'duckdb' or 'spark'" in from_env.stderr
    assert "from env HEADWATER_ENGINE" in from_env.stderr


def test_options_override_settings_and_say_so_in_their_help(tmp_path):
    r = run(tmp_path, "stream", "--trigger-interval", "0", "--available-now")
    assert r.exit_code == 2 and "stream.trigger_interval_s: Input should be greater than 0" in r.stderr
    assert "Overrides setting stream.trigger_interval_s (default 0.5)" in " ".join(run(tmp_path, "stream", "--help").stdout.split())


def test_config_show_masks_secrets_and_tells_where_values_come_from(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "headwater.toml").write_text('[stream]\ntrigger_interval_s = 2.5\n[cdc]\ndsn = "host=db password=hunter2"\n')
    r = run(tmp_path, "config", "show", "--format", "json", env={"HEADWATER_WRITE_KEY": "wk-secret", "HEADWATER_LOG_PARTITIONS": "8"})
    assert r.exit_code == 0, r.output
    rows = {row["key"]: row for row in json.loads(r.stdout)}
    assert (rows["stream.trigger_interval_s"]["value"], rows["stream.trigger_interval_s"]["origin"]) == (2.5, "headwater.toml")
    assert (rows["log.partitions"]["value"], rows["log.partitions"]["origin"]) == (8, "env HEADWATER_LOG_PARTITIONS")
    assert (rows["collector.write_key"]["value"], rows["collector.write_key"]["origin"]) == ("**********", "env HEADWATER_WRITE_KEY")
    assert rows["cdc.dsn"]["value"] == "**********" and rows["collector.port"]["origin"] == "default"
    assert rows["home"]["value"] == str(home)
    for fmt in FORMATS:
        out = run(tmp_path, "config", "show", "--format", fmt, env={"HEADWATER_WRITE_KEY": "wk-secret"}).stdout
        assert "wk-secret" not in out and "hunter2" not in out


def test_bad_settings_are_one_line_errors_naming_the_key(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "headwater.toml").write_text("[colector]\nport = 1\n")
    r = run(tmp_path, "status")
    assert r.exit_code == 2 and "colector: unknown section" in r.stderr and "Traceback" not in r.stderr
    (home / "headwater.toml").write_text("")
    r = run(tmp_path, "status", env={"HEADWATER_PORT": "http"})
    assert r.exit_code == 2 and "collector.port: Input should be a valid integer" in r.stderr and "HEADWATER_PORT" in r.stderr
