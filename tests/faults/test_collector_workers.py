"""Killing the collector's worker processes (``collector.workers = 2``): a worker killed with
SIGKILL while SDKs send is replaced and the other serves meanwhile; bronze then holds every
acknowledged event exactly once. SIGTERM to ``headwater collector`` stops every worker; a
SIGKILL of it ends them too (they exit with their supervisor), freeing the port."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import httpx
import psutil
import pytest

from headwater.config import Home
from headwater.runtime import free_port, wait_http
from tests.faults.test_kill import HEADWATER, WRITE_KEY, Sdk, bronze_ids, env_of
from tests.helpers import run_stream

KILLS = 3


def start(home: Home, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*HEADWATER, "collector", "--port", str(port)], env=env_of(home, HEADWATER_COLLECTOR_WORKERS="2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
    return proc


def workers(proc: subprocess.Popen, n: int = 2, timeout_s: float = 60) -> list[psutil.Process]:
    """The supervisor's ``n`` worker processes once each answers ``/health`` (fresh connections
    reach both: the kernel hashes each to a worker)."""
    deadline = time.monotonic() + timeout_s
    port = next(a for a in proc.args if a.isdigit())
    while True:
        children = psutil.Process(proc.pid).children()
        pids = set()
        if len(children) == n:
            for _ in range(12 * n):
                try:
                    pids.add(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["writer"]["pid"])
                except httpx.TransportError:
                    pass
        if pids == {c.pid for c in children} and len(pids) == n:
            return children
        assert time.monotonic() < deadline, f"workers {[c.pid for c in children]} answering {pids}"
        time.sleep(0.3)


@pytest.fixture
def home(tmp_path) -> Home:
    home = Home(tmp_path / "home")
    home.root.mkdir()
    home.add_source("server", WRITE_KEY)
    return home


@pytest.mark.slow
def test_a_killed_worker_is_replaced_while_the_other_serves_and_nothing_acknowledged_is_lost(home):
    port = free_port()
    proc = start(home, port)
    sdks = [Sdk(f"http://127.0.0.1:{port}", seed=s) for s in range(3)]
    for sdk in sdks:
        sdk.start()
    try:
        for k in range(KILLS):
            victim = workers(proc)[k % 2]
            time.sleep(0.5)
            acknowledged = sum(len(s.acknowledged) for s in sdks)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            replaced = workers(proc)  # restarted after the supervisor's backoff (1 s, 2 s, ...)
            assert victim.pid not in {w.pid for w in replaced}
            assert sum(len(s.acknowledged) for s in sdks) > acknowledged  # served meanwhile
    finally:
        for sdk in sdks:
            sdk.stop.set()
        for sdk in sdks:
            sdk.join(30)
    children = psutil.Process(proc.pid).children()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive  # SIGTERM stopped every worker
    run_stream(home)
    got = bronze_ids(home)
    assert len(got) == len(set(got))  # a retry of a request that did commit before its kill is dropped by dedup
    assert set(got) == {i for s in sdks for i in s.acknowledged}


def test_sigkill_of_the_supervisor_ends_its_workers_and_frees_the_port(home):
    port = free_port()
    proc = start(home, port)
    children = workers(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=20)
    assert not alive
    with socket.socket() as s:  # nothing listens on the port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
