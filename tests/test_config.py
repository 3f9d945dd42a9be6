import stat

import pytest

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


def test_sources_keep_their_write_keys(tmp_path):
    home = Home(tmp_path)
    web = home.add_source("web")
    assert home.add_source("web") == web
    home.add_source("server", "k-server")
    assert {s.name: s.write_key for s in Home(tmp_path).sources()} == {"web": web.write_key, "server": "k-server"}
    assert stat.S_IMODE(home.sources_path.stat().st_mode) == 0o600
    with pytest.raises(ConflictError, match="write_key: already used by source 'server'"):
        home.add_source("mobile", "k-server")
    with pytest.raises(NotFoundError, match="source 'mobile': no such source"):
        home.update_source("mobile", unregistered_events="reject")


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_HOME", str(tmp_path / "h"))
    home = Home.from_env()
    assert home.root == tmp_path / "h" and home.root.is_dir()
    assert home.settings.lake_root == str(tmp_path / "h" / "lake")
