"""SIGKILL of a bulk import (``headwater import --bulk``) mid-way, 20 times, then a clean
finish: bronze holds every event and bad row of the file once, and bronze and silver equal
those of an import that was never killed.

Half the kills land right after a random Delta commit (tests/faults/kill_import.py: between
the bad-rows and the events commit of a chunk, or between chunks), half at a random moment
from the start (start-up, reading the file, canonicalising, committing)."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headwater.config import Home
from headwater.lake.store import Lake
from tests.faults.test_kill import HEADWATER, KILLS, env_of, kill
from tests.helpers import query
from tests.sources.test_bulk import history_csv, new_home

KILL_AFTER_COMMIT = Path(__file__).with_name("kill_import.py")
CHUNK_ROWS = 150


def import_args(path: Path) -> list[str]:
    return ["import", str(path), "--bulk", "--no-restate", "--chunk-rows", str(CHUNK_ROWS), "--user-id", "user", "--anonymous-id", "anon",
            "--event", "event", "--event-type", "kind", "--timestamp", "ts", "--format", "json"]


def commits(home: Home) -> int:
    lake = Lake.of(home)
    return sum(lake.version(t) + 1 for t in ("bronze.events", "bronze.bad_rows") if lake.exists(t))


def tables(home: Home) -> dict[str, list[str]]:
    return {
        "bronze.events": sorted(map(str, query(home, "SELECT * EXCLUDE (received_at) FROM bronze.events").to_pylist())),
        "bronze.bad_rows": sorted(map(str, query(home, "SELECT * EXCLUDE (received_at, ds) FROM bronze.bad_rows").to_pylist())),
        "silver.events": sorted(map(str, query(home, "SELECT * EXCLUDE (received_at) FROM silver.events").to_pylist())),
    }


@pytest.mark.slow
def test_sigkill_of_a_bulk_import_then_a_rerun_equals_a_clean_import(tmp_path):
    path = tmp_path / "history.csv"
    history_csv(path, users=8_000)  # ~20,000 rows: 130-odd chunks, 200-odd commits
    clean, crashed = new_home(tmp_path / "clean"), new_home(tmp_path / "crashed")
    started = time.monotonic()
    done = subprocess.run([*HEADWATER, *import_args(path)], env=env_of(clean), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    took, total = time.monotonic() - started, commits(clean)
    assert total >= 150
    rng = random.Random(13)
    kills = mid_import = attempts = 0
    while kills < KILLS:
        attempts += 1
        assert attempts <= 3 * KILLS, "most runs finished before their kill"
        before = commits(crashed)
        if attempts % 2:  # right after a random commit of this run
            proc = subprocess.Popen([sys.executable, str(KILL_AFTER_COMMIT), str(rng.randint(1, 4)), *import_args(path)],
                                    env=env_of(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            proc.wait(timeout=300)
            kills += proc.returncode == -signal.SIGKILL
        else:  # a random moment from the start (start-up, reading the file, the first commits)
            proc = subprocess.Popen([*HEADWATER, *import_args(path)], env=env_of(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 0.6 * took))
            if proc.poll() is None:
                kills += 1
                kill(proc)
        assert proc.returncode in (0, -signal.SIGKILL)
        mid_import += proc.returncode == -signal.SIGKILL and before < commits(crashed) < total
        if proc.returncode == 0:  # the resumed import got to its end: kill a new one from the start
            crashed = new_home(tmp_path / f"crashed-{attempts}")
    assert mid_import >= KILLS // 3, "too few kills landed while the import was committing"
    done = subprocess.run([*HEADWATER, *import_args(path)], env=env_of(crashed), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for home in (clean, crashed):  # the restatement the import runs after its chunks
        subprocess.run([*HEADWATER, "batch"], env=env_of(home), check=True, capture_output=True, timeout=300)
    ids = query(crashed, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids FROM bronze.events").to_pylist()[0]
    assert ids["n"] == ids["ids"]
    assert tables(crashed) == tables(clean)
