"""`headwater token add|list|revoke` and `headwater identity token`."""

from __future__ import annotations

import json

from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.serve.access import ROLE_NAMES, Principal, Role, TokenStore, identity_token


def run(tmp_path, *args):
    return CliRunner().invoke(cli, list(args), env={"HEADWATER_HOME": str(tmp_path / "home")})


def test_add_prints_the_token_once_and_list_never_shows_it(tmp_path):
    r = run(tmp_path, "token", "add", "--role", "analyst", "--name", "notebook")
    assert r.exit_code == 0, r.output
    token = r.stdout.strip()
    assert token.startswith("hw_rt_") and "shown once" in r.stderr and token not in r.stderr
    assert TokenStore(Home(tmp_path / "home")).authenticate(token) == Principal("notebook", Role.ANALYST)
    for fmt in ("table", "csv", "json"):
        out = run(tmp_path, "token", "list", "--format", fmt).stdout
        assert token not in out and "sha256:" not in out and "notebook" in out
    [row] = json.loads(run(tmp_path, "token", "list", "--format", "json").stdout)
    assert (row["name"], row["role"], row["revoked"]) == ("notebook", "analyst", None)
    assert row["fingerprint"] and row["created"]


def test_revoke_and_the_error_exit_codes(tmp_path):
    assert run(tmp_path, "token", "add", "--role", "viewer", "--name", "tv").exit_code == 0
    assert run(tmp_path, "token", "add", "--role", "viewer", "--name", "tv").exit_code == 4  # conflict
    assert run(tmp_path, "token", "add", "--role", "owner").exit_code == 2
    revoked = json.loads(run(tmp_path, "token", "revoke", "tv", "--format", "json").stdout)
    assert revoked["name"] == "tv" and revoked["revoked"]
    missing = run(tmp_path, "token", "revoke", "tv")
    assert missing.exit_code == 3 and "no such active token" in missing.stderr


def test_role_choices_are_the_roles():
    option = next(p for p in cli.commands["token"].commands["add"].params if p.name == "role")
    assert tuple(option.type.choices) == ROLE_NAMES


def test_identity_token_prints_the_stored_token_of_a_raw_id(tmp_path):
    r = run(tmp_path, "identity", "token", "u1")
    assert r.exit_code == 0, r.output
    expected = identity_token(Home(tmp_path / "home"), "u1")
    assert r.stdout == expected + "\n" and len(expected) == 32
    assert json.loads(run(tmp_path, "identity", "token", "u1", "--format", "json").stdout) == {"token": expected}


def test_the_cli_query_has_hw_token_to_join_local_files(tmp_path):
    (tmp_path / "customers.csv").write_text("customer_id,plan\nu1,pro\n")
    r = run(tmp_path, "query", f"SELECT plan, hw_token(customer_id) AS token FROM read_csv('{tmp_path / 'customers.csv'}')",
            "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == [{"plan": "pro", "token": identity_token(Home(tmp_path / "home"), "u1")}]
