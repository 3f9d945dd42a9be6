"""Write keys: generated strong, stored as digests only, checked in constant time, shown once."""

import json
import stat

import pytest
from click.testing import CliRunner

from headwater import credentials
from headwater.cli.main import cli
from headwater.config import Home
from headwater.errors import ConflictError, InvalidInputError, NotFoundError


def test_generated_keys_carry_192_random_bits_and_a_prefix():
    keys = {credentials.generate(credentials.WRITE_KEY_PREFIX) for _ in range(1000)}
    assert len(keys) == 1000
    for k in keys:
        assert k.startswith("hw_wk_") and len(k) == 6 + 32  # 24 bytes → 32 URL-safe characters
    assert credentials.generate(credentials.READ_TOKEN_PREFIX).startswith("hw_rt_")


def test_digest_verify_and_fingerprint():
    key = credentials.generate(credentials.WRITE_KEY_PREFIX)
    stored = credentials.digest(key)
    assert credentials.is_digest(stored) and not credentials.is_digest(key)
    assert credentials.verify(key, stored)
    assert not credentials.verify(key + "x", stored) and not credentials.verify(key[:-1], stored)
    assert credentials.fingerprint(stored) == stored[7:19] and len(credentials.fingerprint(stored)) == 12
    # The same value as documented for the shell: printf %s "$KEY" | sha256sum | cut -c1-12
    import hashlib
    assert credentials.fingerprint(stored) == hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.mark.parametrize("key, rule", [
    ("short-key", "write_key: too short (9 characters); a key must have at least 16"),
    ("", "write_key: too short (0 characters)"),
    ("sixteen chars ok", "write_key: must be printable ASCII without spaces"),
    ("sixteen-chars-é-x", "write_key: must be printable ASCII without spaces"),
])
def test_supplied_keys_below_the_minimum_are_refused_naming_the_rule(tmp_path, key, rule):
    with pytest.raises(InvalidInputError, match=rule.replace("(", r"\(").replace(")", r"\)")) as e:
        Home(tmp_path).add_source("web", key)
    assert e.value.field == "write_key" and (not key or key not in str(e.value))
    assert not Home(tmp_path).sources_path.exists()


def test_plain_keys_in_an_existing_sources_json_are_migrated_on_first_load(tmp_path):
    home = Home(tmp_path)
    home.root.mkdir(exist_ok=True)
    home.sources_path.write_text(json.dumps([
        {"name": "web", "write_key": "legacy"},  # shorter than today's minimum: it keeps working
        {"name": "app", "write_key": "legacy-app-key-0123", "unregistered_events": "reject"},
    ]))
    sources = {s.name: s for s in home.sources()}
    text = home.sources_path.read_text()
    assert "legacy" not in text and "write_key" not in text
    assert credentials.verify("legacy", sources["web"].key_digest)
    assert credentials.verify("legacy-app-key-0123", sources["app"].key_digest) and sources["app"].unregistered_events == "reject"
    assert stat.S_IMODE(home.sources_path.stat().st_mode) == 0o600
    assert Home(tmp_path).sources() == list(sources.values())  # stable once migrated


def test_rotation_replaces_the_key(tmp_path):
    home = Home(tmp_path)
    old = home.add_source("web")
    new = home.rotate_key("web")
    [web] = home.sources()
    assert new != old and credentials.verify(new, web.key_digest) and not credentials.verify(old, web.key_digest)
    home.add_source("app", "app-key-0123456789")
    with pytest.raises(ConflictError, match="write_key: already used by source 'app'"):
        home.rotate_key("web", "app-key-0123456789")
    with pytest.raises(NotFoundError):
        home.rotate_key("nope")


def test_a_tampered_sources_json_is_refused_naming_the_field(tmp_path):
    home = Home(tmp_path)
    home.add_source("web")
    home.sources_path.write_text(json.dumps([{"name": "web", "key_digest": "sha256:xyz"}]))
    with pytest.raises(InvalidInputError, match="key_digest"):
        home.sources()


def test_cli_shows_a_key_once_and_lists_only_fingerprints(tmp_path):
    runner = CliRunner()
    env = {"HEADWATER_HOME": str(tmp_path)}
    added = runner.invoke(cli, ["source", "add", "web"], env=env)
    assert added.exit_code == 0, added.output
    key = added.output.strip()
    assert key.startswith("hw_wk_")
    listed = runner.invoke(cli, ["source", "list", "--format", "json"], env=env).output
    assert key not in listed
    assert json.loads(listed) == [{"name": "web", "key_fingerprint": credentials.fingerprint(credentials.digest(key)),
                                   "unregistered_events": "accept"}]
    policy = runner.invoke(cli, ["source", "policy", "web", "--format", "json"], env=env).output
    assert key not in policy and "key_digest" not in policy
    again = runner.invoke(cli, ["source", "add", "web"], env=env)
    assert again.exit_code == 4 and "headwater source rotate web" in again.output
    rotated = runner.invoke(cli, ["source", "rotate", "web"], env=env).output.strip()
    assert rotated.startswith("hw_wk_") and rotated != key
    short = runner.invoke(cli, ["source", "add", "app", "--write-key", "abc"], env=env)
    assert short.exit_code == 2 and "at least 16" in short.output and "abc" not in short.output
