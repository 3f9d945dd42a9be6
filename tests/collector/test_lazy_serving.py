"""The query API and the dashboard are mounted lazily (:class:`headwater.serve.app.Lazy`): a
collector worker that has only collected has not loaded the read path's native libraries
(DuckDB, delta-rs, Polars), and ``/api`` and ``/dashboard`` work on their first request."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from starlette.responses import PlainTextResponse

from headwater.serve.app import Lazy
from tests.helpers import start_collector

from .conftest import HMAC_KEY, SOURCE, WRITE_KEY, basic

READ_PATH = ("_duckdb", "/deltalake/", "polars")  # in the paths of their shared objects


def mapped(pid: int) -> set[str]:
    """Which of :data:`READ_PATH` process ``pid`` has loaded (its memory maps)."""
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    return {lib for lib in READ_PATH if lib in maps}


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    # A fresh process of its own: no request before the test's.
    with start_collector(tmp_path_factory.mktemp("home"), write_key=WRITE_KEY, source=SOURCE,
                         env={"HEADWATER_HMAC_KEY": HMAC_KEY.hex()}) as c:
        yield c


def test_a_worker_that_only_collected_has_not_loaded_the_read_path_then_api_and_dashboard_work(collector):
    with httpx.Client(base_url=collector.url, timeout=30) as http:
        batch = {"batch": [{"type": "track", "event": "Viewed", "userId": "u1", "messageId": f"m{i}"} for i in range(10)]}
        assert http.post("/v1/batch", json=batch, headers=basic(WRITE_KEY)).json()["accepted"] == 10
        assert http.get("/health").status_code == 200 and http.get("/metrics").status_code == 200
        assert http.get("/openapi.json").status_code == 200
        pid = collector.proc.pid  # one worker: it serves in the `headwater collector` process
        assert mapped(pid) == set()

        assert http.get("/api/openapi.json").json()["info"]["title"]
        assert http.get("/api/metrics/active_users").status_code == 401  # the API's own auth, served
        assert http.get("/dashboard/login").status_code == 200
        assert http.get("/", follow_redirects=False).headers["location"] == "/dashboard/"
        assert {"_duckdb", "/deltalake/"} <= mapped(pid)
        # Collecting goes on beside it.
        assert http.post("/v1/batch", json=batch, headers=basic(WRITE_KEY)).json()["accepted"] == 10


def test_lazy_builds_once_for_concurrent_first_requests_and_retries_a_failed_build():
    builds, gate = [], threading.Event()

    def build():
        builds.append(1)
        gate.wait(5)
        if len(builds) == 1:
            raise RuntimeError("first build fails")
        return PlainTextResponse("built")

    lazy = Lazy(build)

    async def call() -> bytes:
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        await lazy({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
        return b"".join(m.get("body", b"") for m in sent)

    async def main():
        gate.set()
        with pytest.raises(RuntimeError):
            await call()
        return await asyncio.gather(*(call() for _ in range(5)))

    assert asyncio.run(main()) == [b"built"] * 5
    assert len(builds) == 2  # the failed one, then one for five concurrent requests
