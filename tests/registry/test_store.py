"""Registry stores: files under the home and a real PostgreSQL server (tests/postgres.py),
the same contract for both: versions, modes, change stamps, compare-and-set, concurrent
registrations from several processes."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from pathlib import Path

import pytest

from headwater.config import Home
from headwater.errors import InvalidInputError, TransientError
from headwater.registry.registry import Registry
from headwater.runtime import free_port
from headwater.registry.store import ConflictError, FileStore, PostgresStore, open_store
from tests.registry.conftest import CLOSED_ORDER


def pg_url(server, db: str) -> str:
    return f"postgresql://postgres@127.0.0.1:{server.port}/{db}"


@pytest.fixture(params=["files", "postgres"])
def store_url(request, tmp_path):
    """``(home, HEADWATER_REGISTRY_URL value)``: "" for files, a fresh database for PostgreSQL."""
    if request.param == "files":
        return Home(tmp_path), ""
    server = request.getfixturevalue("postgres")
    db = f"reg_{uuid.uuid4().hex[:10]}"
    server.create_database(db)
    return Home(tmp_path), pg_url(server, db)


@pytest.fixture
def store(store_url, monkeypatch):
    home, url = store_url
    monkeypatch.setenv("HEADWATER_REGISTRY_URL", url)
    s = open_store(home)
    assert isinstance(s, PostgresStore if url else FileStore)
    yield s
    s.close()


def test_versions_modes_and_stamp(store):
    assert store.subjects() == [] and store.versions("Order Completed") == [] and store.mode("Order Completed") is None
    s0 = store.stamp()
    v1 = store.append("Order Completed", CLOSED_ORDER, 0)
    s1 = store.stamp()
    assert s1 != s0 and v1.version == 1 and v1.registered_at.tzinfo is not None
    store.set_mode("Order Completed", "FULL")
    assert store.stamp() != s1 and store.mode("Order Completed") == "FULL"
    v2 = store.append("Order Completed", {**CLOSED_ORDER, "title": "v2"}, 1)
    store.append("Signed Up", {"type": "object"}, 0)
    assert store.subjects() == ["Order Completed", "Signed Up"]
    assert [(v.version, v.schema) for v in store.versions("Order Completed")] == [(1, CLOSED_ORDER), (2, v2.schema)]
    assert {s: v.version for s, v in store.latest_all().items()} == {"Order Completed": 2, "Signed Up": 1}
    assert store.stamp() == store.stamp()  # stable while nothing changes


def test_append_is_compare_and_set(store):
    store.append("Order Completed", CLOSED_ORDER, 0)
    with pytest.raises(ConflictError, match="latest version is 1, expected 0"):
        store.append("Order Completed", {**CLOSED_ORDER, "title": "late"}, 0)
    assert len(store.versions("Order Completed")) == 1


def _register_worker(args) -> int:
    root, url, title = args
    os.environ["HEADWATER_REGISTRY_URL"] = url
    registry = Registry.from_home(Home(Path(root)))
    try:
        return registry.register("Order Completed", {**CLOSED_ORDER, "title": title})[0].version
    finally:
        registry.close()


def test_concurrent_registrations_from_processes(store_url):
    home, url = store_url
    titles = [f"writer {i}" for i in range(6)]
    pool = multiprocessing.get_context("spawn").Pool(3)
    try:
        got = pool.map(_register_worker, [(str(home.root), url, t) for t in titles], chunksize=1)
    finally:
        # close + join lets the workers exit on their own; the with-statement's terminate()
        # SIGTERMs them, and one caught at interpreter shutdown hung join() (seen once, loaded)
        pool.close()
        pool.join()
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # each its own version, none lost or doubled
    os.environ["HEADWATER_REGISTRY_URL"] = url
    try:
        versions = Registry.from_home(home).versions("Order Completed")
    finally:
        del os.environ["HEADWATER_REGISTRY_URL"]
    assert sorted(v.schema["title"] for v in versions) == titles
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]


def test_file_store_layout(tmp_path):
    registry = Registry(FileStore.of(Home(tmp_path)))
    registry.register("a/b: odd name", CLOSED_ORDER)
    files = sorted(p.name for p in (tmp_path / "registry" / "subjects").iterdir())
    assert len(files) == 1 and files[0].startswith("a_b__odd_name.") and files[0].endswith(".json")  # no temp files left


def test_unknown_url_scheme(tmp_path, monkeypatch):
    monkeypatch.setenv("HEADWATER_REGISTRY_URL", "mysql://x")
    with pytest.raises(InvalidInputError, match=r"registry.url: expected a postgresql:// URL, got 'mysql'://… \(from env HEADWATER_REGISTRY_URL\)"):
        open_store(Home(tmp_path))


def test_database_errors_are_headwater_errors(store_url, tmp_path):
    _, url = store_url
    if not url:
        pytest.skip("PostgreSQL only")
    store = PostgresStore(url)
    try:
        with pytest.raises(InvalidInputError, match="schema registry database refused a value"):
            store.append("Order Completed", {**CLOSED_ORDER, "title": "nul \u0000 inside"}, 0)
        assert store.versions("Order Completed") == []  # nothing half-written; the connection still works
    finally:
        store.close()
    with pytest.raises(TransientError, match="schema registry database: ") as e:
        PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x?connect_timeout=2").subjects()
    assert e.value.field == "registry.url"
    with pytest.raises(InvalidInputError, match="registry.url: invalid URI query parameter"):
        PostgresStore(url + "?bogus=1").subjects()
