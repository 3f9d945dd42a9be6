"""The platform as real processes on 127.0.0.1: the real Segment SDK sends while the stream
processor is killed with SIGKILL again and again."""

import logging
import signal
import subprocess
import sys
import threading
import time

from click.testing import CliRunner
from deltalake import DeltaTable
import pyarrow as pa
from segment.analytics import Client

from headwater.cli.main import cli
from headwater.config import Home
from headwater.lake.store import Lake
from headwater.runtime import Backoff, Platform, child_env, free_port, use_allocator
from headwater.serve.status import status


def test_sigkill_of_the_processor_mid_stream_loses_and_duplicates_nothing(tmp_path):
    home = Home(tmp_path / "home")
    write_key = home.add_source("web")
    platform = Platform(home, free_port()).start()
    try:
        client = Client(write_key, host=platform.url, gzip=True, upload_size=100, max_queue_size=100_000, thread=2)
        n = 20_000

        def send():
            for i in range(n):
                client.track(user_id=f"user-{i % 300}", event="Product Viewed", properties={"i": i})
                if i % 1000 == 0:
                    time.sleep(0.2)  # keep sending while the processor dies and restarts
            client.flush()

        sender = threading.Thread(target=send)
        sender.start()
        kills = 0
        while sender.is_alive() or kills < 5:
            time.sleep(1.2)
            platform.procs["stream"].send_signal(signal.SIGKILL)
            platform.procs["stream"].wait()
            kills += 1
            platform.start_component("stream")
        sender.join()
        client.join()
        platform.wait_caught_up(timeout_s=120)
    finally:
        platform.stop()

    info = status(home)
    accepted = sum(p["end_offset"] for p in info["log"]["events"]["partitions"].values())
    assert accepted == n
    ids = DeltaTable(Lake.of(home).uri("bronze.events")).to_pyarrow_table(columns=["event_id"]).column("event_id")
    assert len(ids) == accepted
    assert len(set(ids.to_pylist())) == accepted
    assert kills >= 5


def test_sigkill_of_the_collector_loses_no_acknowledged_event(tmp_path):
    """The SDK retries what was not acknowledged; a retry of a batch that did commit before
    the kill is a duplicate, which the stream drops: bronze ends up with every event once."""
    home = Home(tmp_path / "home")
    write_key = home.add_source("server")
    platform = Platform(home, free_port()).start()
    failed = []
    try:
        client = Client(
            write_key, host=platform.url, upload_size=100, max_queue_size=100_000, max_retries=20,
            on_error=lambda e, batch: failed.extend(batch),
        )
        n = 6_000
        ids = [f"msg-{i}" for i in range(n)]

        def send():
            for i, mid in enumerate(ids):
                client.track(user_id=f"user-{i % 50}", event="Order Completed", message_id=mid)
                if i % 300 == 0:
                    time.sleep(0.5)  # ~10 s of sending
            client.flush()

        sender = threading.Thread(target=send)
        sender.start()
        kills_while_sending = 0
        for _ in range(3):  # spaced out: the SDK's backoff grows with consecutive failures
            time.sleep(2.5)
            if not sender.is_alive():
                break
            kills_while_sending += 1
            platform.procs["collector"].send_signal(signal.SIGKILL)
            platform.procs["collector"].wait()
            platform.start_component("collector")
        sender.join()
        client.join()
        platform.wait_caught_up(timeout_s=120)
    finally:
        platform.stop()

    assert kills_while_sending >= 3
    assert failed == []
    got = DeltaTable(Lake.of(home).uri("bronze.events")).to_pyarrow_table(columns=["event_id"]).column("event_id").to_pylist()
    assert len(got) == len(set(got))
    assert set(got) == set(ids)


def test_restart_backoff_doubles_up_to_the_cap_and_resets_after_a_healthy_run():
    backoff = Backoff(max_s=10)
    assert [backoff.delay(ran_s=0.5) for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    assert backoff.delay(ran_s=10) == 1  # it ran as long as the longest wait: healthy
    assert backoff.delay(ran_s=0.1) == 2


def test_children_run_on_the_allocator_defaults_unless_the_environment_sets_them(tmp_path, monkeypatch):
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")  # the user's choice wins
    env = child_env(Home(tmp_path))
    assert (env["MALLOC_ARENA_MAX"], env["HEADWATER_HOME"]) == ("4", str(tmp_path))
    pool = subprocess.run([sys.executable, "-c", "import pyarrow; print(pyarrow.default_memory_pool().backend_name)"],
                          env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert pool == "system"  # ARROW_DEFAULT_MEMORY_POOL is the name pyarrow reads


def test_the_cli_process_takes_the_childrens_arrow_pool_unless_the_environment_names_one(tmp_path, monkeypatch):
    before = pa.default_memory_pool()
    try:
        monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "mimalloc")  # the user's choice wins
        pa.set_memory_pool(pa.mimalloc_memory_pool())
        use_allocator()
        assert pa.default_memory_pool().backend_name == "mimalloc"
        monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL")
        monkeypatch.setenv("HEADWATER_HOME", str(tmp_path))
        result = CliRunner().invoke(cli, ["query", "SELECT 1 AS one", "--format", "json"])
        assert result.exit_code == 0, result.output
        assert pa.default_memory_pool().backend_name == "system"  # what child_env gives the children
    finally:
        pa.set_memory_pool(before)


def test_supervise_restarts_a_crashing_child_with_backoff_and_logs_its_exit_code(tmp_path, caplog):
    home = Home(tmp_path / "home")
    platform = Platform(home, free_port())
    starts = []

    def start_component(name):  # a component that fails at once, as on a full disk
        starts.append(time.monotonic())
        platform.procs[name] = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(75)"])

    platform.start_component = start_component
    platform._start("stream")
    stop = threading.Event()
    supervisor = threading.Thread(target=platform.supervise, args=(stop,))
    with caplog.at_level(logging.WARNING, logger="headwater.runtime"):
        supervisor.start()
        time.sleep(2.6)  # exits at ~0 s and ~1 s: restarts after 1 s, then waits 2 s
        stop.set()
        supervisor.join()
    platform.procs["stream"].wait()
    assert len(starts) == 2  # without backoff: a restart every poll
    assert starts[1] - starts[0] >= 1.0
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("stream exited with code 75; restarting in 1 s")
    assert messages[1].startswith("stream exited with code 75; restarting in 2 s")
