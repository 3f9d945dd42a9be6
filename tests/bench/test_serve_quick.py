"""``bench/serve.py --quick``: a generated lake built by the product, served by ``headwater up``
(collector + query API + stream) and measured over HTTP on loopback.

Every request must answer 200, the ad-hoc queries must be computed on read from
``silver.events``, every freshness event must reach ``/api/live``, and the last stdout line
must be the bench's JSON object with its figures, targets and peers. The latency targets
themselves are not asserted (they depend on the machine); the bench reports them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "serve.py"
METRICS = ("active_users", "retention", "funnels", "experiments", "sessions", "revenue", "top_events",
           "monthly_active_users", "live")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_quick_measures_every_endpoint_and_freshness():
    proc = subprocess.run([sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=290)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])

    assert result["bench"] == "serve" and result["quick"] is True
    assert result["events"] >= result["days"] * result["events_per_day"]
    endpoints = result["endpoints"]
    for name in METRICS:
        e = endpoints[name]
        assert e["errors"] == 0 and e["requests"] > 0, (name, e)
        assert e["answer_rows"] > 0, (name, e)  # every metric has data (revenue: priced purchases)
        for key in ("p50_ms", "p95_ms", "serial_p95_ms", "duckdb_direct_p95_ms", "ratio"):
            assert e[key] > 0, (name, key)
    for name in ("adhoc_funnel", "adhoc_retention"):
        assert endpoints[name]["source"] == "silver.events", name
        assert endpoints[name]["answer_rows"] > 0 and endpoints[name]["p95_ms"] > 0, name
    assert result["freshness_missed"] == 0 and result["freshness_p95_ms"] > 0
    for key in ("metric", "live", "adhoc_funnel", "freshness"):
        assert isinstance(result[f"{key}_p95_ms"], float) and result[f"{key}_target_ms"] > 0, key
        assert isinstance(result["meets_targets"][f"{key}_p95"], bool), key
