"""SIGKILL of the producer (collector) and the consumer (stream processor) on the Kafka log, and
a restart of the broker keeping its log in S3: every acknowledged event reaches bronze exactly
once (the patterns and helpers of tests/faults/test_kill.py, on a Tansu broker)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from headwater.config import Home
from headwater.errors import TransientError
from headwater.log import Append, open_log
from headwater.runtime import free_port, wait_http
from headwater.stream.checkpoint import Checkpoint
from headwater.stream.processor import QUERY
from tests.faults.test_kill import HEADWATER, KILL_AFTER_COMMIT, WRITE_KEY, Sdk, bronze_ids, env_of, event_rows, kill
from tests.kafka import kafka_home, start_kafka
from tests.helpers import run_stream

KILLS = 8  # each kill costs a collector or processor start-up (~2-4 s here)
RESTARTS = 3


def collector(home: Home, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([*HEADWATER, "collector", "--port", str(port)], env=env_of(home, HEADWATER_COLLECTOR_WORKERS="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
    return proc


@pytest.mark.slow
def test_sigkill_of_the_collector_on_kafka_loses_no_acknowledged_event(tmp_path, broker):
    home = kafka_home(tmp_path / "home", broker, timeout_s=5)
    home.add_source("server", WRITE_KEY)
    port = free_port()
    rng = random.Random(15)
    sdk = Sdk(f"http://127.0.0.1:{port}", seed=16)
    sdk.start()
    at_kill = []
    try:
        for _ in range(KILLS):
            proc = collector(home, port)
            time.sleep(rng.uniform(0.1, 0.8))  # mid-batch: the SDK sends back to back
            kill(proc)
            at_kill.append(len(sdk.acknowledged))
        proc = collector(home, port)
        time.sleep(0.5)
    finally:
        sdk.stop.set()
        sdk.join(30)
    proc.terminate()
    proc.wait(15)
    assert len(set(at_kill)) >= KILLS // 2, "the SDK was not sending while most kills landed"
    run_stream(home)
    got = bronze_ids(home)
    assert len(got) == len(set(got))
    assert set(got) == set(sdk.acknowledged)


@pytest.mark.slow
def test_sigkill_of_the_stream_processor_on_kafka_gives_bronze_exactly_once(tmp_path, broker):
    home = kafka_home(tmp_path / "home", broker, partitions=4, timeout_s=5)
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 4), log.ensure_topic("bad_rows", 1)
    rng, rng_p = random.Random(17), random.Random(18)
    sent: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def produce():  # acknowledged appends with SDK re-sends (3 %) while the processor dies and restarts
        clock = 1_709_294_400.0
        while not stop.is_set():
            ids = [rng_p.choice(sent) if sent and rng_p.random() < 0.03 else f"e{len(sent) + k}" for k in range(rng_p.randint(5, 50))]
            clock += rng_p.uniform(0, 5)
            log.append([Append("events", rng_p.randrange(4), event_rows(ids, clock))])
            sent.extend(i for i in ids if i not in seen and not seen.add(i))
            time.sleep(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    args = ["stream", "--trigger-interval", "0.1", "--max-records-per-partition", "200"]
    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    between_commits = 0
    try:
        for i in range(KILLS):
            if i % 3 == 2:  # right after a random Delta commit: between the sink commits of one batch
                proc = subprocess.Popen([sys.executable, str(KILL_AFTER_COMMIT), str(rng.randint(1, 6)), *args], env=env_of(home))
                try:
                    proc.wait(timeout=60)
                    between_commits += proc.returncode == -signal.SIGKILL
                except subprocess.TimeoutExpired:
                    kill(proc)
            else:  # a random moment once it runs batches (mid-batch: reads, sinks, offset commits)
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
    assert between_commits >= 1
    subprocess.run([*HEADWATER, "stream", "--available-now"], env=env_of(home), check=True, timeout=300)
    assert checkpoint.latest_committed() >= KILLS // 2
    got = bronze_ids(home)
    assert len(got) == len(set(got)) and set(got) == set(sent)
    assert log.committed(QUERY, "events") == log.end_offsets("events")  # the group caught up, as lag tools see it
    log.close()


@pytest.mark.slow
def test_broker_restarts_on_s3_storage_lose_no_acknowledged_event(tmp_path, s3):
    """Restarts while the collector appends: a batch the broker lost between recording its
    producer sequence and writing it is answered DUPLICATE_SEQUENCE_NUMBER on retry, which
    must fail the request (8 of 10 restarts hit it in a trial; headwater.log.kafka.log._produce)."""
    broker = start_kafka(s3)
    # Without transactions: Tansu 0.6 on S3 does not keep transaction state across a restart
    # (in 1 of 2 runs read_committed fetches then stayed empty). fetch.wait.max.ms 500: a
    # restarted Tansu reads from S3 and answers a 20 ms fetch with nothing, again and again.
    # timeout_s 30: a restarted Tansu answers slowly at first.
    home = kafka_home(tmp_path / "home", broker, transactional="false", **{"fetch.wait.max.ms": "500"})
    home.add_source("server", WRITE_KEY)
    port = free_port()
    proc = None
    sdk = Sdk(f"http://127.0.0.1:{port}", seed=19)
    try:
        proc = collector(home, port)
        sdk.start()
        for _ in range(RESTARTS):
            before = len(sdk.acknowledged)
            deadline = time.monotonic() + 120
            while len(sdk.acknowledged) < before + 300 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(sdk.acknowledged) >= before + 300, "the collector did not recover from a broker restart"
            broker.restart()  # the SDK's requests fail (503) while it is down, then succeed again
        sdk.stop.set()
        sdk.join(30)
        proc.terminate()
        proc.wait(60)  # an append in flight finishes first: up to timeout_s
        broker.restart()  # and once more with everything acknowledged: all of it is still there
        t0 = time.monotonic()
        while True:  # a restarted Tansu may not serve fetches for a while: the stream retries
            try:
                run_stream(home)
                break
            except TransientError:
                assert time.monotonic() - t0 < 120, "the stream could not read the restarted broker"
        got = bronze_ids(home)
        assert len(got) == len(set(got))
        assert set(got) == set(sdk.acknowledged)
    finally:
        sdk.stop.set()
        if proc is not None and proc.poll() is None:
            kill(proc)
        broker.stop()
