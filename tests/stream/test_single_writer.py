"""One stream processor per checkpoint: a second one on the same home refuses to start,
naming the lock and the holder's pid; the OS drops the lock when the holder is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from headwater.stream.checkpoint import Checkpoint
from headwater.stream.processor import QUERY

from .conftest import append_events


def test_a_second_processor_refuses_to_start_and_a_killed_one_frees_the_lock(home, event_log):
    append_events(event_log, 0, ["a"])
    env = {**os.environ, "HEADWATER_HOME": str(home.root)}
    cmd = [sys.executable, "-m", "headwater", "stream", "--trigger-interval", "0.2"]
    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    first = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 60
        while checkpoint.latest_committed() is None and time.monotonic() < deadline:  # it holds the lock and runs
            time.sleep(0.05)
        assert checkpoint.latest_committed() == 0

        second = subprocess.run([*cmd, "--available-now"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 4  # ConflictError
        assert str(home.checkpoint_dir(QUERY) / "writer.lock") in second.stderr.replace("\n", "")
        assert f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    append_events(event_log, 1, ["b"])
    again = subprocess.run([*cmd, "--available-now"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert checkpoint.latest_committed() == 1
