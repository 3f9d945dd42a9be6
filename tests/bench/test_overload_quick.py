"""``bench/overload.py --quick``: a real collector and stream driven past capacity by locust.

Nothing answered 200 may be missing from ``bronze.events`` and no answer may be a 5xx; the
last stdout line must be the bench's JSON object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "overload.py"


@pytest.mark.timeout(180)
def test_overload_quick_loses_nothing_and_never_answers_5xx():
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["bench"] == "overload" and result["quick"] is True
    for key in ("capacity_eps", "offered_eps", "tried", "attempts", "accepted", "accepted_events", "persisted",
                "5xx", "lost", "duplicates", "peak_rss_mb", "rss_growth_after_10s"):
        assert isinstance(result[key], (int, float)), key
    assert isinstance(result["rejected"], dict)
    assert result["capacity_eps"] > 0
    assert result["offered_eps"] >= 1.5 * result["capacity_eps"]
    assert result["tried"] > 0 and result["accepted"] > 0
    assert result["lost"] == 0, proc.stderr[-3000:]
    assert result["5xx"] == 0, result["rejected"]
    assert result["capacity_phase"]["5xx"] == 0
    # Every accepted event is in bronze, exactly once (stream dedup by event id).
    assert result["persisted"] >= result["accepted_events"]
    assert result["duplicates"] == 0
