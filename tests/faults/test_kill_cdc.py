"""SIGKILL of the Postgres CDC reader at random moments, 20 times, while the source table
changes: afterwards ``bronze.cdc_accounts`` holds every change once and
``silver.dim_account`` equals the table's history (the oracle of tests/sources/test_cdc.py:
an audit trigger, independent of logical decoding). A real PostgreSQL server (tests/postgres.py)."""

from __future__ import annotations

import random
import subprocess
import time

import pytest

from headwater.config import Home
from headwater.lake.store import Lake
from tests.faults.test_kill import HEADWATER, KILLS, env_of, kill
from tests.sources.test_cdc import TRACKED, assert_bronze_exact, config, dim_rows, dsn, expected_history, slot_of, workload  # noqa: F401 (dsn: a fixture)


BRONZE = "bronze.cdc_accounts"


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path / "home")


@pytest.mark.slow
def test_sigkill_of_the_cdc_reader_leaves_the_dimension_exact(home, dsn):
    from headwater.ingest.tokens import Tokenizer
    from headwater.sources.cdc.reader import CdcReader

    reader = CdcReader(home, config(dsn))
    reader.setup()
    reader.close()
    args = [*HEADWATER, "cdc", "run", "--dsn", dsn, "--table", "accounts", "--track", ",".join(TRACKED),
            "--slot", slot_of(dsn), "--interval", "0.05"]
    rng = random.Random(10)
    lake = Lake.of(home)

    def progress() -> int:  # Delta commits of the reader so far
        return lake.version(BRONZE) if lake.exists(BRONZE) else -1

    mid_stream = 0
    for i in range(KILLS):
        workload(dsn, 6, seed=100 + i)  # changes arrive between the kills and while it reads
        before = progress()
        proc = subprocess.Popen(args + ["--max-changes", "3"], env=env_of(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i % 2:  # a random moment once it commits
            deadline = time.monotonic() + 60
            while progress() == before and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # a random moment from the start
            time.sleep(rng.uniform(0.2, 4.0))
        assert proc.poll() is None, "the reader exited by itself"
        kill(proc)
        mid_stream += progress() > before
    assert mid_stream >= KILLS // 3, "too few kills landed while the reader was committing"
    workload(dsn, 10, seed=999)
    done = subprocess.run(args + ["--available-now"], env=env_of(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_bronze_exact(home, dsn)
    assert dim_rows(home) == expected_history(dsn, Tokenizer(home.hmac_key()))
