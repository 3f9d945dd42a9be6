"""SIGKILL of an incremental ``headwater batch`` at random moments, then a clean finish: the
tables equal those of a build that was never killed.

The build is the daily one of a new day while late rows wait for an earlier day: it builds
the new day from the states of the day before, then restates the late day, the silver days
re-stitched to persons since, and the states and gold after them. Kills land between and
during the model runs (after a random number of the progress lines it prints, one per model
run); each model run is one atomic Delta commit, and the build's bronze cursor moves only
once it completes, so the next run finds the late day again."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from headwater.config import Home
from headwater.models.run import build
from tests.faults.test_kill import HEADWATER, env_of, kill
from tests.models.test_incremental import DAYS, add_late_and_next_day, checksums, daily, day  # noqa: F401 (daily: a fixture)

KILLS = 6


@pytest.mark.slow
def test_sigkill_of_an_incremental_build_then_a_rerun_equals_a_clean_build(daily, tmp_path):
    start = Home(tmp_path / "start")
    shutil.copytree(daily.root, start.root)
    add_late_and_next_day(start)
    clean = Home(tmp_path / "clean")
    shutil.copytree(start.root, clean.root)
    lines: list[str] = []
    build(clean, day(DAYS), day(DAYS), progress=lines.append)
    want = checksums(clean)

    home = Home(tmp_path / "killed")
    shutil.copytree(start.root, home.root)
    args = [*HEADWATER, "batch", "--start", str(day(DAYS)), "--end", str(day(DAYS))]
    rng = random.Random(13)
    for _ in range(KILLS):
        after = rng.randint(1, len(lines) - 1)  # progress lines: model runs done
        proc = subprocess.Popen(args, env=env_of(home), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen = 0
        for _line in proc.stderr:
            seen += 1
            if seen == after:
                break
        assert proc.poll() is None, f"the build ended by itself after {seen} lines"
        kill(proc)
    done = subprocess.run(args, env=env_of(home), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert checksums(home) == want
