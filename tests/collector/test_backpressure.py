"""Backpressure against a real collector (uvicorn subprocess on 127.0.0.1, real SQLite log).

The log is made slow by holding its SQLite write lock from another connection: the
collector's group-commit writer then blocks inside its append, as behind a slow disk, and
requests pile up. Overload must be answered 429 with ``Retry-After`` (never 5xx), a late
append 503 with ``Retry-After``; and every request answered 200 must be in the log exactly
once, every refused one delivered by its retry.
"""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager

import httpx
import psutil
import pytest

from headwater.events import BAD_ROWS_TOPIC, EVENTS_TOPIC, STREAM_GROUP
from tests.helpers import read_topic, start_collector

from .conftest import WRITE_KEY, basic

SOURCE = "web-app"


@contextmanager
def collector_with(tmp_path, **collector_settings):
    """A collector subprocess with ``HEADWATER_COLLECTOR_<NAME>`` settings."""
    env = {f"HEADWATER_COLLECTOR_{k.upper()}": str(v) for k, v in collector_settings.items()}
    with start_collector(tmp_path / "home", write_key=WRITE_KEY, source=SOURCE, env=env) as c:
        yield c


@contextmanager
def write_locked(log):
    """Hold the log's SQLite write lock from another connection until the block ends."""
    conn = sqlite3.connect(log.path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def refused_before_its_body(port: int) -> bytes:
    """Send only the headers of a 400 KB request; the collector's answer (the status line on)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        auth = basic(WRITE_KEY)["Authorization"]
        s.sendall(f"POST /v1/batch HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 400000\r\n\r\n".encode())
        return s.recv(4096)


def body(name: str, n: int = 5, pad: int = 0) -> bytes:
    """A Segment batch of ``n`` events with ids ``<name>-<i>`` (``pad`` bytes of properties each)."""
    props = {"pad": "x" * pad} if pad else {}
    return json.dumps({"batch": [{"type": "track", "event": "Clicked", "userId": f"u{i}", "messageId": f"{name}-{i}",
                                  "timestamp": "2024-03-01T10:00:00Z", "properties": props} for i in range(n)]}).encode()


async def post(client: httpx.AsyncClient, name: str, **kw) -> httpx.Response:
    return await client.post("/v1/batch", content=body(name, **kw), headers=basic(WRITE_KEY))


async def deliver(client: httpx.AsyncClient, name: str, statuses: collections.Counter, attempts: int = 60, **kw) -> None:
    """Post batch ``name`` until it is answered 200, waiting ``Retry-After`` after a 429/503
    (as the SDKs do); every answer is counted in ``statuses``."""
    for _ in range(attempts):
        r = await post(client, name, **kw)
        statuses[r.status_code] += 1
        if r.status_code == 200:
            return
        assert r.status_code in (429, 503), r.text
        await asyncio.sleep(float(r.headers["retry-after"]))
    raise AssertionError(f"{name}: not accepted after {attempts} attempts")


def event_ids(c) -> collections.Counter:
    t = read_topic(c.log, EVENTS_TOPIC)
    return collections.Counter(t.column("event_id").to_pylist() if t is not None else [])


def expected(names, n: int = 5) -> set[str]:
    return {f"{name}-{i}" for name in names for i in range(n)}


def assert_refusal(r: httpx.Response, status: int, code: str, limit: str, retry_after: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["retry-after"] == retry_after
    assert r.json()["code"] == code and r.json()["limit"] == limit and r.json()["success"] is False


def test_requests_over_max_in_flight_are_answered_429_and_their_retries_all_land_once(tmp_path):
    with collector_with(tmp_path, max_in_flight=4) as c:

        async def main():
            async with httpx.AsyncClient(base_url=c.url, timeout=30, limits=httpx.Limits(max_connections=100)) as client:
                with write_locked(c.log):
                    first = [asyncio.create_task(post(client, f"r{i}")) for i in range(40)]
                    await asyncio.sleep(1.5)
                    # Refused at once, without waiting for the log; the 4 admitted wait for it.
                    done = [t for t in first if t.done()]
                    assert len(done) == 36
                    assert refused_before_its_body(c.port).startswith(b"HTTP/1.1 429 ")
                refused = [i for i, t in enumerate(first) if (await t).status_code != 200]
                for i in refused:
                    assert_refusal(first[i].result(), 429, "overloaded", "collector.max_in_flight", "1")
                assert len(refused) == 36
                statuses = collections.Counter()
                await asyncio.gather(*(deliver(client, f"r{i}", statuses) for i in refused))
                return statuses

        statuses = asyncio.run(main())
        assert statuses[200] == 36 and not any(s >= 500 for s in statuses)
        ids = event_ids(c)
        assert set(ids) == expected(f"r{i}" for i in range(40)) and set(ids.values()) == {1}


def test_a_full_commit_queue_is_answered_429_and_nothing_accepted_is_lost(tmp_path):
    with collector_with(tmp_path, max_in_flight=64, max_queue=2) as c:

        async def main():
            async with httpx.AsyncClient(base_url=c.url, timeout=30, limits=httpx.Limits(max_connections=100)) as client:
                with write_locked(c.log):
                    first = [asyncio.create_task(post(client, f"q{i}")) for i in range(30)]
                    await asyncio.sleep(1.5)
                answers = await asyncio.gather(*first)
                refused = [i for i, r in enumerate(answers) if r.status_code != 200]
                for i in refused:
                    assert_refusal(answers[i], 429, "overloaded", "collector.max_queue", "1")
                assert 0 < len(refused) < 30
                statuses = collections.Counter()
                await asyncio.gather(*(deliver(client, f"q{i}", statuses) for i in refused))
                return statuses

        statuses = asyncio.run(main())
        assert not any(s >= 500 for s in statuses)
        ids = event_ids(c)
        assert set(ids) == expected(f"q{i}" for i in range(30)) and set(ids.values()) == {1}


def test_an_append_past_its_deadline_is_503_with_retry_after_and_the_writer_goes_on(tmp_path):
    with collector_with(tmp_path, append_timeout_s=0.5) as c:

        async def main():
            async with httpx.AsyncClient(base_url=c.url, timeout=30) as client:
                with write_locked(c.log):
                    late = await asyncio.gather(*(post(client, f"t{i}") for i in range(5)))
                for r in late:
                    assert_refusal(r, 503, "unavailable", "collector.append_timeout_s", "1")
                health = await client.get("/health")
                assert health.status_code == 200 and health.json()["writer"]["alive"] is True
                statuses = collections.Counter()
                await asyncio.gather(*(deliver(client, f"t{i}", statuses) for i in range(5)))
                return statuses

        statuses = asyncio.run(main())
        assert statuses == {200: 5}
        ids = event_ids(c)
        # Every batch is in the log; those the writer had taken before their waiters gave up
        # were committed late and again by the retry (deduplicated by event_id downstream).
        assert set(ids) == expected(f"t{i}" for i in range(5)) and set(ids.values()) <= {1, 2}


def test_a_stream_behind_max_lag_sheds_ingestion_with_429_until_it_catches_up(tmp_path):
    with collector_with(tmp_path, max_lag_events=10) as c, httpx.Client(base_url=c.url, timeout=10) as http:
        ok = http.post("/v1/batch", content=body("lag-0", n=20), headers=basic(WRITE_KEY))
        assert ok.status_code == 200
        deadline, k = time.monotonic() + 10, 0
        while (r := http.post("/v1/batch", content=body(f"lag-1-{k}"), headers=basic(WRITE_KEY))).status_code == 200:
            assert time.monotonic() < deadline, "never shed"
            time.sleep(0.2)
            k += 1
        assert_refusal(r, 429, "stream_behind", "collector.max_lag_events", "5")
        assert "records behind" in r.json()["message"]
        health, ready = http.get("/health"), http.get("/ready")
        assert health.status_code == 200 and health.json()["stream"]["status"] == "behind"
        assert health.json()["stream"]["lag"] > 10
        assert ready.status_code == 503 and ready.json()["limit"] == "collector.max_lag_events"
        # The stream catches up: its consumer group commits the end of both topics.
        for topic in (EVENTS_TOPIC, BAD_ROWS_TOPIC):
            c.log.commit(STREAM_GROUP, topic, c.log.end_offsets(topic))
        deadline = time.monotonic() + 10
        while (r := http.post("/v1/batch", content=body("lag-2"), headers=basic(WRITE_KEY))).status_code != 200:
            assert r.status_code == 429 and time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert http.get("/ready").status_code == 200
        ids = event_ids(c)
        assert set(ids) >= expected(["lag-0", "lag-2"]) and set(ids.values()) == {1}


@contextmanager
def lock_toggling(log, held_s: float, free_s: float):
    """Hold the log's write lock ``held_s`` of every ``held_s + free_s`` seconds on a thread."""
    stop = threading.Event()

    def run():
        while not stop.is_set():
            with write_locked(log):
                stop.wait(held_s)
            stop.wait(free_s)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


@contextmanager
def rss_sampled(pid: int, every_s: float = 0.05):
    """RSS (bytes) of process ``pid``, sampled on a thread while the block runs."""
    proc, samples, stop = psutil.Process(pid), [], threading.Event()

    def run():
        while not stop.wait(every_s):
            samples.append(proc.memory_info().rss)

    samples.append(proc.memory_info().rss)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield samples
    finally:
        stop.set()
        t.join()


MAX_IN_FLIGHT = 8


@pytest.mark.timeout(300)
def test_overload_is_shed_with_flat_memory_no_5xx_and_nothing_lost(tmp_path):
    """100 clients each deliver a 360 KB batch through a slowed log, twice: the collector's
    peak RSS stays within 90 MB of its idle RSS (measured: +31 MB with 8 in flight; +196 MB
    with 120 clients and no bound, which holds every body and its decoded events at once),
    every 429 is retried after its Retry-After, and every batch lands in the log exactly once."""
    clients, waves, n, pad = 100, 2, 40, 9_000  # 40 events × 9 KB = 360 KB per request
    with collector_with(tmp_path, max_in_flight=MAX_IN_FLIGHT) as c:
        statuses = collections.Counter()

        async def main():
            limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
            async with httpx.AsyncClient(base_url=c.url, timeout=60, limits=limits) as client:
                for wave in range(waves):
                    await asyncio.gather(*(deliver(client, f"w{wave}-{i}", statuses, n=n, pad=pad) for i in range(clients)))

        with rss_sampled(c.proc.pid) as rss, lock_toggling(c.log, held_s=0.2, free_s=0.2):
            asyncio.run(main())
        assert statuses[429] > 0 and not any(s >= 500 for s in statuses), statuses
        assert statuses[200] == waves * clients
        assert max(rss) - rss[0] < 90 * 2**20, (rss[0] // 2**20, max(rss) // 2**20)
        ids = event_ids(c)
        assert set(ids) == expected((f"w{w}-{i}" for w in range(waves) for i in range(clients)), n)
        assert set(ids.values()) == {1}
