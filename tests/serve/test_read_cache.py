"""The served read path (headwater.lake.sql.read: pooled connections, views re-registered per
Delta version) and the metric answers' cache (headwater.serve.cache): a commit is visible to
the next request, roles never share an answer, the cache is bounded and computes once for
concurrent requests. Over the API in-process (FastAPI's TestClient: the async handlers) and
through the route functions, on the hand-made lake of tests/serve/conftest.py."""

from __future__ import annotations

import datetime as dt
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from headwater.config import Home
from headwater.errors import ForbiddenError, NotFoundError
from headwater.lake import schemas as s
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.serve import cache, metrics_api
from headwater.serve.access import Principal, Role, TokenStore
from headwater.serve.api import create_api
from tests.serve.conftest import D1, D2, K, SETTINGS, write_lake

RANGE = {"start": D1.isoformat(), "end": D2.isoformat()}
VIEWER, ANALYST = Principal("v", Role.VIEWER), Principal("a", Role.ANALYST)


@pytest.fixture
def home(tmp_path) -> Home:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    (home.root / "headwater.toml").write_text(SETTINGS)
    write_lake(home)
    return home


@pytest.fixture
def client(home):
    tokens = {str(role): TokenStore(home).add(role)[1] for role in Role}
    with TestClient(create_api(home)) as c:
        c.tokens = tokens
        yield c


def get(client, role: str, path: str, **params) -> dict:
    r = client.get(path, params=params, headers={"Authorization": f"Bearer {client.tokens[role]}"})
    assert r.status_code == 200, r.text
    return r.json()


def set_dau(home: Home, dau: int) -> None:
    """A batch commit: web's DAU of D1 becomes ``dau`` in gold.active_users_by_platform."""
    rows = [{"ds": D1, "platform": "web", "dau": dau, "wau": 5, "mau": 6, "stickiness": 0.5}]
    Lake.of(home).overwrite_partitions("gold.active_users_by_platform",
                                      pa.Table.from_pylist(rows, schema=s.ACTIVE_USERS_BY_PLATFORM_SCHEMA), D1, D1)


def web_d1(body: dict) -> int:
    return next(r["dau"] for r in body["rows"] if (r["ds"], r["platform"]) in (("2024-03-01", "web"), (D1, "web")))


def test_a_commit_between_two_identical_requests_is_visible_in_the_second(home, client, monkeypatch):
    reads = []
    real = lake_sql.read
    monkeypatch.setattr(lake_sql, "read", lambda *a, **kw: reads.append(a[1]) or real(*a, **kw))
    first = get(client, "viewer", "/metrics/active_users", **RANGE)
    assert web_d1(first) == K
    n = len(reads)
    assert get(client, "viewer", "/metrics/active_users", **RANGE) == first and len(reads) == n  # answered from the cache
    set_dau(home, K + 7)
    assert web_d1(get(client, "viewer", "/metrics/active_users", **RANGE)) == K + 7  # the next request sees the commit
    assert len(reads) > n
    # the route function called in-process (the dashboard) answers from the same cache, with the commit
    assert web_d1(metrics_api.active_users(home, VIEWER, start=D1, end=D2)) == K + 7
    set_dau(home, K + 8)
    assert web_d1(metrics_api.active_users(home, VIEWER, start=D1, end=D2)) == K + 8


def test_a_cached_answer_still_needs_a_valid_token(home, client):
    first = get(client, "analyst", "/metrics/revenue", **RANGE)
    assert get(client, "analyst", "/metrics/revenue", **RANGE) == first
    store = TokenStore(home)
    store.revoke(next(t.name for t in store.tokens() if t.role == "analyst" and t.revoked is None))
    r = client.get("/metrics/revenue", params=RANGE, headers={"Authorization": f"Bearer {client.tokens['analyst']}"})
    assert r.status_code == 401 and r.json()["field"] == "token"
    assert client.get("/metrics/revenue", params=RANGE).status_code == 401


def test_a_table_deleted_and_recreated_is_read_anew(home):
    lake = Lake.of(home)
    sql = "SELECT dau FROM gold.active_users_by_platform WHERE ds = $d AND platform = 'web'"
    assert lake_sql.read(lake, sql, {"d": D1})["dau"].to_pylist() == [K]
    shutil.rmtree(lake.uri("gold.active_users_by_platform"))
    with pytest.raises(NotFoundError, match="active_users_by_platform"):
        lake_sql.read(lake, sql, {"d": D1})
    set_dau(home, 42)  # version 0 of a new table
    assert lake_sql.read(lake, sql, {"d": D1})["dau"].to_pylist() == [42]
    assert lake_sql.version(lake, "gold.active_users_by_platform")[0] == 0


def test_roles_never_share_an_answer(home):
    """An analyst's answer may hold what a viewer must not see; each role computes its own."""
    computed = []

    @cache.cached()
    def with_ids(home: Home, principal: Principal) -> dict:
        computed.append(principal.role)
        rows = lake_sql.read(Lake.of(home), "SELECT person_id, count(*) OVER (PARTITION BY platform) AS persons FROM gold.sessions")
        return metrics_api._answer(home, principal, "ids", rows)

    assert with_ids(home, ANALYST)["rows"] and with_ids(home, ANALYST)["rows"]
    with pytest.raises(ForbiddenError, match="person_id"):
        with_ids(home, VIEWER)  # not the analyst's cached rows
    with pytest.raises(ForbiddenError):
        with_ids(home, VIEWER)  # errors are not cached either
    assert computed == [Role.ANALYST, Role.VIEWER, Role.VIEWER]


def test_the_cache_is_bounded_least_recently_used_first(home):
    small = cache.Cache(max_entries=3)
    for i in range(3):
        small.compute(("k", i), lambda i=i: {"i": i}, 60)
    assert small.get(("k", 0)) is not None  # now the most recently used
    small.compute(("k", 3), lambda: {"i": 3}, 60)
    assert len(small) == 3 and small.get(("k", 1)) is None and small.get(("k", 0)).body == {"i": 0}
    expired = small.compute(("old",), dict, 0)
    assert not expired.valid() and small.get(("old",)) is None


def test_concurrent_requests_compute_an_answer_once(home):
    calls, gate = [], threading.Event()

    @cache.cached()
    def slow(home: Home, principal: Principal, n: int = 1) -> dict:
        calls.append(n)
        gate.wait(5)
        return {"rows": [{"n": n, "v": lake_sql.read(Lake.of(home), "SELECT count(*) AS c FROM gold.sessions")["c"][0].as_py()}]}

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(slow, home, VIEWER, n=7) for _ in range(8)]
        time.sleep(0.3)
        gate.set()
        answers = [f.result() for f in futures]
    assert calls == [7] and all(a == answers[0] for a in answers)


def test_reads_from_many_threads_while_the_table_changes(home):
    lake, errors, seen = Lake.of(home), [], []

    def reader() -> None:
        for _ in range(30):
            try:
                seen.append(lake_sql.read(lake, "SELECT max(dau) AS d FROM gold.active_users_by_platform")["d"][0].as_py())
            except Exception as e:  # noqa: BLE001 - collected for the assertion
                errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for dau in range(100, 105):
        set_dau(home, dau)
    for t in threads:
        t.join()
    assert not errors and len(seen) == 120
    assert lake_sql.read(lake, "SELECT max(dau) AS d FROM gold.active_users_by_platform")["d"][0].as_py() == 104


def test_live_answers_expire_within_half_a_second(home, client):
    first = get(client, "viewer", "/live")
    assert get(client, "viewer", "/live")["now"] == first["now"]  # cached, no commit
    time.sleep(cache.LIVE_MAX_AGE_S + 0.1)
    later = get(client, "viewer", "/live")
    assert dt.datetime.fromisoformat(later["now"]) > dt.datetime.fromisoformat(first["now"])
    assert later["per_minute"] == first["per_minute"]


def test_the_http_answer_is_the_route_functions_answer(home, client):
    for role, principal in (("viewer", VIEWER), ("analyst", ANALYST)):
        body = get(client, role, "/metrics/sessions", **RANGE)
        direct = metrics_api.sessions(home, principal, start=D1, end=D2)
        assert body["rows"] == [{**r, "ds": r["ds"].isoformat()} for r in direct["rows"]]
        assert body["source"] == "gold.sessions_daily" and body["suppressed"] == direct["suppressed"] == 1


def test_an_answer_computed_on_read_depends_on_silver_events(home):
    """A filtered request reads silver.events (absent here: no rows); its answer is recorded
    as depending on it, so it ends when silver.events is written."""
    with lake_sql.reads() as reads:
        body = metrics_api.sessions.__wrapped__(home, VIEWER, start=D1, end=D2, where=["properties.plan:pro"])
    assert body["rows"] == [] and body["source"] == "silver.events"
    assert [v for (_, table), v in reads.items() if table == "silver.events"] == [None]
