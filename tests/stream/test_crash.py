"""Exactly-once under crashes: `headwater stream` is SIGKILLed again and again while a producer
appends out-of-order, duplicated, late and invalid data; afterwards every table equals a
crash-free run over the same batches.

Batch boundaries depend on timing, and lateness depends on batch boundaries (Spark's rule:
batch N decides with the watermark of batch N-1), so "a crash-free run over the same input"
means the same batches: the reference query re-runs the crashed query's offset log
(``offsets/N`` ranges and batch timestamps) without crashes, via ``run_once(plan, ts)``.
"""

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.log import Append, EventLog, open_log
from headwater.stream.checkpoint import Checkpoint
from headwater.stream.pipeline import DEFAULT_PIPELINE
from headwater.stream.processor import QUERY, BronzeStream, StreamConfig

from .conftest import T0, table_rows

KILLS = 21
KILL_AFTER_COMMIT = Path(__file__).with_name("kill_after_commit.py")  # launcher: SIGKILL after the N-th sink commit


class Producer(threading.Thread):
    """Appends batches of events to random partitions: event time advancing ~3 s per append,
    5 % late (up to 15 min behind), 3 % re-sent ids, a hot user with 30 % of the events,
    and now and then an undecodable or schema-invalid record."""

    def __init__(self, log: EventLog, seed: int):
        super().__init__()
        self.log, self.rng, self.stop = log, random.Random(seed), threading.Event()
        self.sent: list[str] = []

    def batch(self, clock: dt.datetime, n: int) -> pa.Table:
        rng, rows = self.rng, []
        for _ in range(n):
            if self.sent and rng.random() < 0.03:
                event_id = rng.choice(self.sent)  # SDK retry: same id
            else:
                event_id = f"e{len(self.sent)}"
                self.sent.append(event_id)
            late = rng.random() < 0.05
            ts = clock - dt.timedelta(seconds=rng.uniform(0, 900) if late else rng.uniform(0, 5))
            user = "hot" if rng.random() < 0.3 else f"u{rng.randrange(40)}"
            rows.append(
                {
                    "event_id": event_id,
                    "event_type": "track",
                    "event_name": rng.choice(["Product Viewed", "Order Completed", "Signed Up"]),
                    "user_id": user if rng.random() < 0.8 else None,
                    "anonymous_id": f"anon-{user}",
                    "event_ts": ts,
                    "received_at": clock,
                    "source": "test",
                    "platform": rng.choice(["web", "ios", "android"]),
                    "ds": ts.date(),
                }
            )
        return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)

    def run(self):
        clock = T0
        while not self.stop.is_set():
            clock += dt.timedelta(seconds=self.rng.uniform(0, 6))
            p, r = self.rng.randrange(4), self.rng.random()
            if r < 0.01:
                self.log._insert([("events", p, 3, b"garbage")])  # the sqlite backend's raw records
            elif r < 0.02:
                self.log.append([Append("events", p, pa.table({"event_id": ["x", "y"]}))])
            else:
                n = self.rng.randrange(10, 60)
                self.log.append([Append("events", p, self.batch(clock, n))])
            time.sleep(0.02)


def snapshot(home: Home) -> dict[str, list[dict]]:
    names = ["bronze.events", "bronze.late_events", "bronze.dead_letter", *(a.table for a in DEFAULT_PIPELINE.aggregates)]
    return {n: table_rows(home, n) for n in names}


def test_sigkill_during_batches_and_sink_commits_gives_the_crash_free_result(tmp_path):
    home = Home(tmp_path / "crashed")
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 4)
    log.ensure_topic("bad_rows", 1)
    rng = random.Random(3)
    producer = Producer(log, seed=11)
    producer.start()
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    args = ["stream", "--trigger-interval", "0.2", "--retain-batches", "100000"]
    cmd = [sys.executable, "-m", "headwater", *args]
    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    self_kills = 0
    try:
        for i in range(KILLS):
            if i % 3 == 0:  # dies right after its k-th Delta commit: between the sink commits of a batch
                proc = subprocess.Popen([sys.executable, str(KILL_AFTER_COMMIT), str(rng.randint(1, 8)), *args], env=env)
                try:
                    proc.wait(timeout=30)
                    self_kills += proc.returncode == -signal.SIGKILL
                except subprocess.TimeoutExpired:
                    pass
            elif i % 3 == 1:  # a random moment of a running batch
                before = checkpoint.latest_committed()
                proc = subprocess.Popen(cmd, env=env)
                deadline = time.monotonic() + 30
                while checkpoint.latest_committed() == before and time.monotonic() < deadline:
                    time.sleep(0.02)
                time.sleep(rng.uniform(0, 0.3))
            else:  # any moment: start-up, recovery (re-running a batch) or a batch
                proc = subprocess.Popen(cmd, env=env)
                time.sleep(rng.uniform(0.5, 3.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    finally:
        producer.stop.set()
        producer.join()
    subprocess.run([*cmd, "--available-now"], env=env, check=True, timeout=120)
    assert self_kills >= 6, "too few kills landed between sink commits"

    # The reference: the same batches, run once each, without crashes.
    crashed = Checkpoint(home.checkpoint_dir(QUERY))
    last = crashed.latest_committed()
    assert last >= 10
    ref_home = Home(tmp_path / "reference")
    ref = BronzeStream(ref_home, StreamConfig(compact_every=0), event_log=log)
    for n in range(last + 1):
        ref.run_once(crashed.read_offsets(n), crashed.read_metadata(n)["batch_timestamp_ms"])
    assert ref.run_once() is None

    got, want = snapshot(home), snapshot(ref_home)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the crash-free run"
    ids = [r["event_id"] for r in got["bronze.events"]]
    assert len(ids) == len(set(ids)) and set(ids) == set(producer.sent)
    assert got["bronze.late_events"] and got["bronze.dead_letter"] and got["realtime.sessions"]
    for name in ["bronze.events", "realtime.events_per_minute"]:
        assert Lake.of(home).committed_batch(name, QUERY) <= last
    log.close()
