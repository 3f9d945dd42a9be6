"""SIGKILL of each component at random moments, 20+ times each, then a clean finish: nothing
accepted is lost, nothing is doubled, and the tables equal a run without kills.

Kill moments come from a seeded RNG over the time since the component started (start-up,
recovery and work alike); the stream's suite also kills right after a random Delta commit
(tests/stream/kill_after_commit.py: between the commits of one batch)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.log import Append, open_log
from headwater.runtime import free_port, wait_http
from headwater.stream.checkpoint import Checkpoint
from headwater.stream.processor import QUERY
from tests.helpers import query, run_stream

KILLS = 20
HEADWATER = [sys.executable, "-m", "headwater"]
KILL_AFTER_COMMIT = Path(__file__).parents[1] / "stream" / "kill_after_commit.py"
WRITE_KEY = "wk-kill-suite-0123456789"


def env_of(home: Home, **extra: str) -> dict[str, str]:
    return {**os.environ, "HEADWATER_HOME": str(home.root), **extra}


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def bronze_ids(home: Home) -> list[str]:
    return query(home, "SELECT event_id FROM bronze.events").column("event_id").to_pylist()


# -- the collector ---------------------------------------------------------------------------
class Sdk(threading.Thread):
    """An SDK: sends batches of tracks with fresh message ids, one request at a time, and
    retries a request until it is answered 200 (a refused connection, a reset, a 5xx: the
    collector is down or dying). ``acknowledged``: the ids of every request answered 200."""

    def __init__(self, url: str, seed: int):
        super().__init__()
        self.url, self.rng, self.stop = url, random.Random(seed), threading.Event()
        self.acknowledged: list[str] = []
        self.retries = 0

    def run(self) -> None:
        with httpx.Client(base_url=self.url, auth=(WRITE_KEY, ""), timeout=5) as http:
            while not self.stop.is_set():
                ids = [f"m-{uuid.uuid4().hex}" for _ in range(self.rng.randint(1, 40))]
                body = {"batch": [{"type": "track", "event": "Order Completed", "userId": f"u{self.rng.randrange(30)}",
                                   "messageId": m, "properties": {"n": i}} for i, m in enumerate(ids)]}
                while True:
                    try:
                        if http.post("/v1/batch", json=body).status_code == 200:
                            self.acknowledged += ids
                            break
                    except httpx.TransportError:
                        pass
                    self.retries += 1
                    time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_of_the_collector_loses_no_acknowledged_event(tmp_path):
    home = Home(tmp_path / "home")
    home.root.mkdir()
    home.add_source("server", WRITE_KEY)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rng = random.Random(5)
    sdk = Sdk(url, seed=6)
    sdk.start()
    acknowledged_at_kill = []
    try:
        for _ in range(KILLS):
            proc = subprocess.Popen([*HEADWATER, "collector", "--port", str(port)], env=env_of(home),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_http(url + "/health", 30, proc)
            time.sleep(rng.uniform(0.0, 0.6))
            kill(proc)
            acknowledged_at_kill.append(len(sdk.acknowledged))
        proc = subprocess.Popen([*HEADWATER, "collector", "--port", str(port)], env=env_of(home),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(url + "/health", 30, proc)
        time.sleep(0.5)
    finally:
        sdk.stop.set()
        sdk.join(30)
    proc.terminate()
    proc.wait(15)
    assert len(set(acknowledged_at_kill)) >= KILLS // 2, "the SDK was not sending while most kills landed"
    assert sdk.retries >= KILLS // 2
    run_stream(home)
    got = bronze_ids(home)
    assert len(got) == len(set(got))  # a retried request whose first try did commit is dropped by dedup
    assert set(got) == set(sdk.acknowledged)


# -- the stream processor ---------------------------------------------------------------------
def event_rows(ids: list[str], clock: float) -> pa.Table:
    ts = pa.scalar(int(clock * 1e6), pa.timestamp("us", "UTC")).as_py()
    rows = [{"event_id": i, "event_type": "track", "event_name": "Product Viewed", "user_id": f"u{n % 13}", "event_ts": ts,
             "received_at": ts, "source": "test", "ds": ts.date()} for n, i in enumerate(ids)]
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


@pytest.mark.slow
def test_sigkill_of_the_stream_processor_gives_bronze_exactly_once(tmp_path):
    home = Home(tmp_path / "home")
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 4)
    rng = random.Random(7)
    sent: list[str] = []
    stop = threading.Event()

    def produce():  # appends with SDK re-sends (3 %) while the processor dies and restarts
        clock = 1_709_294_400.0
        while not stop.is_set():
            ids = [rng_p.choice(sent) if sent and rng_p.random() < 0.03 else f"e{len(sent) + k}" for k in range(rng_p.randint(5, 50))]
            sent.extend(i for i in ids if i not in seen and not seen.add(i))
            clock += rng_p.uniform(0, 5)
            log.append([Append("events", rng_p.randrange(4), event_rows(ids, clock))])
            time.sleep(0.02)

    rng_p, seen = random.Random(8), set()
    producer = threading.Thread(target=produce)
    producer.start()
    args = ["stream", "--trigger-interval", "0.1", "--max-records-per-partition", "200"]
    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    between_commits = 0
    try:
        for i in range(KILLS):
            if i % 4 == 3:  # right after a random Delta commit: between the sink commits of one batch
                proc = subprocess.Popen([sys.executable, str(KILL_AFTER_COMMIT), str(rng.randint(1, 6)), *args], env=env_of(home))
                try:
                    proc.wait(timeout=30)
                    between_commits += proc.returncode == -signal.SIGKILL
                except subprocess.TimeoutExpired:
                    kill(proc)
            elif i % 4 == 0:  # a random moment from the start: start-up, recovery or a batch
                proc = subprocess.Popen([*HEADWATER, *args], env=env_of(home))
                time.sleep(rng.uniform(0.2, 4.0))
                kill(proc)
            else:  # a random moment once it runs batches
                before = checkpoint.latest_committed()
                proc = subprocess.Popen([*HEADWATER, *args], env=env_of(home))
                deadline = time.monotonic() + 60
                while checkpoint.latest_committed() == before and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 1.0))
                kill(proc)
    finally:
        stop.set()
        producer.join()
    assert between_commits >= 3
    subprocess.run([*HEADWATER, "stream", "--available-now"], env=env_of(home), check=True, timeout=180)
    assert checkpoint.latest_committed() >= KILLS // 2  # the kills landed among batches
    got = bronze_ids(home)
    assert len(got) == len(set(got)) and set(got) == set(sent)
    log.close()


# -- a batch run ------------------------------------------------------------------------------
@pytest.fixture
def bronze_window(tmp_path):
    """A home with 5 days of the ecom dataset in bronze.events."""
    import datetime as dt

    from tests.models.ecom_bronze import canonical, read_csv_rows
    from headwater.lake.store import Lake

    first, last = dt.date(2024, 2, 28), dt.date(2024, 3, 3)
    rows = [r for r in read_csv_rows() if first.isoformat() <= r["timestamp"][:10] <= last.isoformat()]
    home = Home(tmp_path / "clean")
    Lake.of(home).append_once("bronze.events", pa.Table.from_pylist(canonical(rows), schema=EVENT_SCHEMA), app_id="test", batch_id=0)
    return home


def total_commits(home: Home) -> int:
    """Delta commits over every table of ``home`` (grows as a batch run writes): the commit
    files in the tables' ``_delta_log`` (``<root>/<layer>/<table>``). A directory listing, as
    it is polled while the run works: reading each table's version through Delta took ~65 ms
    of CPU per poll, most of a core of two taken from the run under test."""
    from headwater.lake.store import Lake

    return sum(1 for _ in Path(Lake.of(home).root.removeprefix("file://")).glob("*/*/_delta_log/[0-9]*.json"))


@pytest.mark.slow
def test_sigkill_of_a_batch_run_then_a_rerun_equals_a_clean_run(bronze_window, tmp_path):
    from tests.orchestrate.conftest import checksums

    crashed, pristine = Home(tmp_path / "crashed"), tmp_path / "pristine"
    shutil.copytree(bronze_window.root, crashed.root)
    shutil.copytree(bronze_window.root, pristine)
    # The clean run, timed: start-up (imports) and then the phase that writes tables.
    started, base = time.monotonic(), total_commits(bronze_window)
    proc = subprocess.Popen([*HEADWATER, "batch"], env=env_of(bronze_window), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_write = None
    while proc.poll() is None:
        if first_write is None and total_commits(bronze_window) > base:
            first_write = time.monotonic()
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read().decode()
    took, writing = time.monotonic() - started, time.monotonic() - (first_write or started)
    rng = random.Random(9)
    kills = mid_write = attempts = 0
    while kills < KILLS:  # a run that finished before its kill moment does not count
        attempts += 1
        assert attempts <= 2 * KILLS, "most runs finished before their kill"
        commits = total_commits(crashed)
        proc = subprocess.Popen([*HEADWATER, "batch"], env=env_of(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempts % 3:  # a random moment of the writing phase
            while total_commits(crashed) == commits and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, writing))
        else:  # a random moment from the start
            time.sleep(rng.uniform(0.3, took))
        if proc.poll() is None:
            kills += 1
            kill(proc)
            mid_write += total_commits(crashed) > commits
        else:  # it finished first: start again from bronze alone, or every later run has nothing to write
            shutil.rmtree(crashed.root)
            shutil.copytree(pristine, crashed.root)
        assert proc.returncode in (0, -signal.SIGKILL)
    assert mid_write >= KILLS // 2, "too few kills landed while the run was writing tables"
    subprocess.run([*HEADWATER, "batch"], env=env_of(crashed), check=True, timeout=300, capture_output=True)
    assert checksums(crashed) == checksums(bronze_window)
