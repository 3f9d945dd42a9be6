"""The collector as two worker processes on one port (``collector.workers = 2``): both serve,
every acknowledged event is in the log once with unique, dense offsets, and a subset of the
HTTP tests runs unchanged against them (each request on a fresh connection, so the kernel
spreads them over both workers). Killing workers: ``tests/faults/test_collector_workers.py``."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import socket
import subprocess
import sys

import httpx
import psutil
import pytest

from headwater.collector.server import bind
from headwater.errors import TransientError
from tests.helpers import read_topic, start_collector

from .conftest import HMAC_KEY, SOURCE, WRITE_KEY, basic
from .test_http import (  # noqa: F401  (collected here again, with the fixtures below)
    test_answer_only_after_durable,
    test_batch_lands_in_the_log_partitioned_by_identity,
    test_body_over_500kb_is_413_and_a_1kb_bad_row,
    test_every_single_event_endpoint,
    test_gzip_body_is_accepted,
    test_health,
    test_malformed_json_is_400_and_a_bad_row,
    test_missing_or_unknown_write_key_is_401_and_an_auth_failure_row,
    test_mixed_batch_counts_errors_and_bad_rows,
    test_source_added_while_running_is_seen,
)

WORKERS = 2


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    """``headwater collector`` supervising two workers (overrides the package's fixture)."""
    env = {"HEADWATER_HMAC_KEY": HMAC_KEY.hex(), "HEADWATER_COLLECTOR_WORKERS": str(WORKERS)}
    with start_collector(tmp_path_factory.mktemp("home"), write_key=WRITE_KEY, source=SOURCE, env=env) as c:
        yield c


@pytest.fixture
def http(collector):
    """A client opening a connection per request: the requests of one test reach both workers."""
    with httpx.Client(base_url=collector.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        yield client


def workers(collector) -> list[psutil.Process]:
    return psutil.Process(collector.proc.pid).children()


def test_two_workers_serve_the_port_and_each_answers_health_for_itself(collector, http):
    procs = workers(collector)
    assert len(procs) == WORKERS
    seen = collections.Counter(http.get("/health").json()["writer"]["pid"] for _ in range(40))
    assert set(seen) == {p.pid for p in procs}, seen  # 40 connections: both (1 in 2^39 to miss one)


def test_concurrent_load_on_both_workers_stores_each_acknowledged_event_once_with_unique_offsets(collector):
    before = {p.pid: p.cpu_times() for p in workers(collector)}
    acknowledged: list[str] = []

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for r in range(25):
            ids = [f"load-{k}-{r}-{i}" for i in range(40)]
            body = {"batch": [{"type": "track", "event": "Clicked", "userId": f"u{i % 17}", "messageId": m,
                               "properties": {"pad": "x" * 200}} for i, m in enumerate(ids)]}
            got = await http.post("/v1/batch", content=json.dumps(body), headers=basic(WRITE_KEY))
            assert got.status_code == 200, got.text
            acknowledged.extend(ids)

    async def main() -> None:
        # 16 keep-alive connections: the kernel hashes each to a worker.
        async with httpx.AsyncClient(base_url=collector.url, timeout=30, limits=httpx.Limits(max_connections=16)) as http:
            await asyncio.gather(*(client(k, http) for k in range(16)))

    asyncio.run(main())
    busy = {p.pid: sum(p.cpu_times()[:2]) - sum(before[p.pid][:2]) for p in workers(collector)}
    assert all(s > 0.1 * sum(busy.values()) for s in busy.values()), busy  # both did a share of the work
    events = read_topic(collector.log, "events")
    ids = collections.Counter(i for i in events.column("event_id").to_pylist() if i.startswith("load-"))
    assert set(ids) == set(acknowledged) and set(ids.values()) == {1}  # each acknowledged event once
    for p, end in collector.log.end_offsets("events").items():  # dense and unique per partition, whoever appended
        offsets = events.filter(events.column("_partition").to_numpy() == p).column("_offset").to_pylist()
        assert sorted(offsets) == list(range(end))


def test_workers_share_the_port_only_with_each_other():
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen()
        port = plain.getsockname()[1]
        with pytest.raises(TransientError, match=f"collector cannot listen on 127.0.0.1:{port}") as e:
            bind("127.0.0.1", port, reuse_port=True)  # a listener outside the group keeps the port
        assert e.value.field == "collector.port"
    first, second = bind("127.0.0.1", port, reuse_port=True), bind("127.0.0.1", port, reuse_port=True)
    try:
        first.listen()
        with pytest.raises(TransientError):
            bind("127.0.0.1", port)  # nor does a collector without workers join them
    finally:
        first.close()
        second.close()


def test_a_second_collector_on_a_served_port_exits_with_a_message(collector):
    env = {**os.environ, "HEADWATER_HOME": str(collector.home.root), "HEADWATER_COLLECTOR_WORKERS": str(WORKERS)}
    done = subprocess.run([sys.executable, "-m", "headwater", "collector", "--port", str(collector.port)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 75, done.stderr  # TransientError
    assert f"collector cannot listen on http://127.0.0.1:{collector.port}" in done.stderr
