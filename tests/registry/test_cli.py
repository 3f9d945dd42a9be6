"""`headwater schema register|check|list|mode|show` as a script runs them: exit codes (2 invalid,
3 not found, 4 incompatible, 75 database unreachable) and messages naming the field and the rule."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
import sys

import pyarrow as pa
import pytest
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.runtime import free_port
from tests.registry.conftest import CLOSED_ORDER


def hw(env, *args, input=None, group="schema"):
    """The command in-process (click's runner: exit code, stdout, stderr as a script sees them)."""
    r = CliRunner().invoke(cli, [group, *args], env=env, input=input)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return subprocess.CompletedProcess(args, r.exit_code, r.stdout, r.stderr)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADWATER_REGISTRY_URL", raising=False)
    return {**os.environ, "HEADWATER_HOME": str(tmp_path / "home")}


def write(tmp_path, name, doc) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return str(p)


def test_register_check_list_mode_show(tmp_path, env):
    v1 = write(tmp_path, "v1.json", CLOSED_ORDER)
    r = hw(env, "register", "Order Completed", v1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "'Order Completed' registered version 1 (BACKWARD); typed table silver.evt_order_completed"

    v2 = write(tmp_path, "v2.json", {**CLOSED_ORDER, "properties": {**CLOSED_ORDER["properties"], "coupon": {"type": "string"}}})
    r = hw(env, "check", "Order Completed", v2)
    assert (r.returncode, r.stdout.strip()) == (0, "'Order Completed': compatible under BACKWARD, would be version 2")

    broken = write(tmp_path, "broken.json", {**CLOSED_ORDER, "properties": {"order_id": {"type": "integer"}, "revenue": {"type": "number"}}})
    r = subprocess.run([sys.executable, "-m", "headwater", "schema", "check", "Order Completed", broken], env=env,
                       capture_output=True, text=True, timeout=120)  # once as a real process
    assert r.returncode == 4
    assert "incompatible under BACKWARD" in r.stderr
    assert "field `order_id`: TYPE_CHANGED (writer string, reader integer)" in r.stderr
    assert "field `items`: PROPERTY_REMOVED_FROM_CLOSED_CONTENT_MODEL" in r.stderr
    r = hw(env, "register", "Order Completed", broken)
    assert r.returncode == 4 and "field `order_id`: TYPE_CHANGED" in r.stderr

    r = hw(env, "register", "Order Completed", "-", input=open(v2).read())  # from stdin
    assert r.returncode == 0 and "registered version 2" in r.stdout
    assert "unchanged: identical to version 2" in hw(env, "register", "Order Completed", v2).stdout

    assert hw(env, "mode", "Order Completed").stdout.strip() == "BACKWARD"
    assert hw(env, "mode", "Order Completed", "full_transitive").stdout.strip() == "FULL_TRANSITIVE"
    assert json.loads(hw(env, "show", "Order Completed", "--version", "1", "--format", "json").stdout) == CLOSED_ORDER
    assert hw(env, "show", "Order Completed").stdout.startswith("'Order Completed' version 2, registered 20")

    # Events in bronze without a schema version: counted per name, registered or not.
    home = Home(tmp_path / "home")
    ts = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    rows = [{"event_id": f"e{i}", "event_type": "track", "event_name": name, "event_ts": ts, "received_at": ts, "source": "s",
             "properties": "{}", "schema_version": version, "ds": ts.date()}
            for i, (name, version) in enumerate([("Order Completed", "1"), ("Order Completed", None), ("Page Scrolled", None), ("Page Scrolled", None)])]
    Lake.of(home).append_once("bronze.events", pa.Table.from_pylist(rows, schema=EVENT_SCHEMA), app_id="t", batch_id=0)
    listed = json.loads(hw(env, "list", "--format", "json").stdout)
    assert [(e["subject"], e["registered"], e["version"], e["versions"], e["compatibility"], e["table"], e["unvalidated_events"]) for e in listed] == [
        ("Order Completed", True, 2, [1, 2], "FULL_TRANSITIVE", "silver.evt_order_completed", 1),
        ("Page Scrolled", False, None, [], None, None, 2),
    ]
    table = hw(env, "list").stdout
    assert "Order Completed" in table and "FULL_TRANSITIVE" in table and "silver.evt_order_completed" in table and "Page Scrolled" in table
    assert hw(env, "list", "--format", "csv").stdout.splitlines()[0].startswith('"subject","registered","version"')


@pytest.mark.parametrize("doc,message", [
    ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    ([1, 2], "schema: expected a JSON object"),
    ({"type": "array"}, 'the top level must be `"type": "object"`'),
    ({"type": "object", "properties": {"n": {"type": "integer", "minimum": "0"}}}, "invalid JSON Schema at #/properties/n/minimum: '0' is not of type 'number' (meta-schema rule `type`)"),
    ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}, "headwater contracts are JSON Schema Draft 2020-12"),
])
def test_invalid_documents_are_refused(tmp_path, env, doc, message):
    r = hw(env, "register", "Order Completed", write(tmp_path, "doc.json", doc))
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_usage_errors(tmp_path, env):
    r = hw(env, "register", "Order Completed", str(tmp_path / "missing.json"))
    assert r.returncode != 0 and "missing.json" in r.stderr
    r = hw(env, "mode", "Order Completed", "SIDEWAYS")
    assert r.returncode == 2 and "'SIDEWAYS' is not one of" in r.stderr
    r = hw(env, "show", "Nope")
    assert r.returncode == 3 and "'Nope': not registered" in r.stderr
    r = hw(env, "register", "!!!", write(tmp_path, "v.json", CLOSED_ORDER))
    assert r.returncode == 2 and "has no letters or digits" in r.stderr
    write(tmp_path, "w.json", CLOSED_ORDER)
    assert hw(env, "register", "Order Completed", str(tmp_path / "w.json")).returncode == 0
    r = hw(env, "register", "order.completed", str(tmp_path / "w.json"))
    assert r.returncode == 2 and "would share the typed table silver.evt_order_completed with 'Order Completed'" in r.stderr


def test_unreachable_registry_database(env):
    env = {**env, "HEADWATER_REGISTRY_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/nope?connect_timeout=2"}
    r = hw(env, "list")
    assert r.returncode == 75 and r.stderr.startswith("Error: schema registry database:") and "Traceback" not in r.stderr
    r = hw({**env, "HEADWATER_REGISTRY_URL": "mysql://u@h/d"}, "list")
    assert r.returncode == 2 and "registry.url: expected a postgresql:// URL" in r.stderr


@pytest.mark.parametrize("doc,message", [
    ({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}, "contracts must be self-contained"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "$ref '#/$defs/missing' at #/properties/a/$ref does not resolve"),
])
def test_refs_must_be_local(tmp_path, env, doc, message):
    r = hw(env, "register", "Order Completed", write(tmp_path, "doc.json", doc))
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_local_refs_are_accepted(tmp_path, env):
    doc = {"type": "object", "$defs": {"sku": {"type": "string"}}, "properties": {"a": {"$ref": "#/$defs/sku"}, "b": {"items": {"$ref": "#"}}}}
    assert hw(env, "register", "Order Completed", write(tmp_path, "doc.json", doc)).returncode == 0


def test_corrupt_registry_file(tmp_path, env):
    assert hw(env, "register", "Order Completed", write(tmp_path, "v.json", CLOSED_ORDER)).returncode == 0
    (path,) = (tmp_path / "home" / "registry" / "subjects").glob("*.json")
    path.write_text('{"subject": "Order Completed", "versions": [')
    r = hw(env, "list")
    assert r.returncode == 2 and f"schema registry file {path}: not valid JSON" in r.stderr


def test_unregistered_policy_per_source(env):
    """One policy command: `headwater source policy` (not `schema policy`)."""
    home = Home(Path(env["HEADWATER_HOME"]))
    home.add_source("web", "wk-web-registry-test")

    def policy(*args):
        return hw(env, "policy", *args, "--format", "json", group="source")

    assert json.loads(policy("web").stdout)["unregistered_events"] == "accept"
    assert json.loads(policy("web", "--unregistered", "reject").stdout)["unregistered_events"] == "reject"
    assert {s.name: s.unregistered_events for s in home.sources()} == {"web": "reject"}
    r = policy("mobile", "--unregistered", "reject")
    assert r.returncode == 3 and "source 'mobile': no such source" in r.stderr
    assert policy("web", "--unregistered", "drop").returncode == 2
    assert hw(env, "policy", "web").returncode == 2  # no such command any more
