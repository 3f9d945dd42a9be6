import stat

import pytest

from headwater import credentials
from headwater.config import Home
from headwater.errors import ConflictError, NotFoundError


def test_hmac_key_is_generated_once_with_owner_only_permissions(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADWATER_HMAC_KEY", raising=False)
    home = Home(tmp_path)
    key = home.hmac_key()
    path = tmp_path / "secrets" / "hmac.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Home(tmp_path).hmac_key() == key
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_hmac_key_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_HMAC_KEY", "00ff" * 8)
    assert Home(tmp_path).hmac_key() == bytes.fromhex("00ff" * 8)
    assert not (tmp_path / "secrets").exists()


def test_sources_keep_only_digests_of_their_write_keys(tmp_path):
    home = Home(tmp_path)
    web = home.add_source("web")
    assert home.add_source("web", web) == web  # idempotent with its own key
    home.add_source("server", "k-server-0123456789")
    assert web not in home.sources_path.read_text() and "k-server-0123456789" not in home.sources_path.read_text()
    digests = {s.name: s.key_digest for s in Home(tmp_path).sources()}
    assert credentials.verify(web, digests["web"]) and credentials.verify("k-server-0123456789", digests["server"])
    assert stat.S_IMODE(home.sources_path.stat().st_mode) == 0o600
    with pytest.raises(ConflictError, match="write_key: already used by source 'server'"):
        home.add_source("mobile", "k-server-0123456789")
    with pytest.raises(ConflictError, match="source 'web' exists; its write key was shown when it was created"):
        home.add_source("web")
    with pytest.raises(NotFoundError, match="source 'mobile': no such source"):
        home.update_source("mobile", unregistered_events="reject")


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path / "h"))
    home = Home.from_env()
    assert home.root == tmp_path / "h" and home.root.is_dir()
    assert home.settings.lake_root == str(tmp_path / "h" / "lake")
