"""``headwater stream --engine spark`` (setting ``stream.engine``): the same pipeline on Spark
Structured Streaming, chosen by configuration.

Over one generated SQLite log (out of order, 3 % re-sent duplicates, several partitions):

- ``--available-now`` on Spark writes the same ``bronze.events`` and ``bronze.bad_rows`` as the
  embedded engine, and commits the stream's consumer group of both topics, so ``headwater
  status`` reports no lag;
- switching an installation from the embedded engine to Spark mid-log: Spark starts where the
  group stands, and bronze is again the same (nothing read twice);
- a continuous run (processing-time trigger) stopped by SIGTERM exits 0, and bronze is exact
  after it (the run that ends the log is the next one: nothing twice, nothing lost);
- a pipeline Spark cannot run is one error line naming the aggregate, exit 2, before any JVM.

In-process runs use the ``spark`` fixture's session (``headwater.spark.session`` returns the
process's active one); the SIGTERM test is a subprocess with its own JVM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.events import STREAM_GROUP
from headwater.ingest.badrows import BadRow, bad_rows_table
from headwater.ingest.partitioning import event_appends
from headwater.lake.store import Lake
from headwater.log import Append, open_log
from tests.stream.conftest import table_rows
from tests.stream.test_spark_parity import events_table, stream

PARTITIONS = 3
BRONZE_ONLY = 'name = "bronze_only"\n'  # a pipeline TOML without aggregates: one Spark query


def token(user: str) -> str:
    return hashlib.blake2b(user.encode(), digest_size=16).hexdigest()


def generated(n: int) -> pa.Table:
    """``n`` events (plus re-sent duplicates), user ids as the collector stores them (hex
    tokens, which the log partitions by)."""
    evs = stream(random.Random(5), n, late_every=0.0, late_min=0, late_max=0)
    return events_table([dataclasses.replace(e, user=token(e.user)) for e in evs])


def bad_rows(n: int) -> pa.Table:
    """``n`` bad rows as the collector appends them (``bad_rows`` topic)."""
    at = 1_709_294_400_000_000  # 2024-03-01 12:00 UTC, µs
    return bad_rows_table([BadRow("envelope_violation", f"missing messageId (request {i})", "web", at + i, f'{{"n": {i}}}', "segment")
                           for i in range(n)])


def home_with_log(path: Path, events: pa.Table, engine: str | None = None, bad: pa.Table | None = None) -> Home:
    """A home whose SQLite log holds ``events`` (and ``bad`` rows)."""
    path.mkdir(parents=True)
    if engine:
        (path / "headwater.toml").write_text(f'[stream]\nengine = "{engine}"\n')
    home = Home(path)
    append(home, events, bad)
    return home


def append(home: Home, events: pa.Table, bad: pa.Table | None = None) -> None:
    """Append ``events`` to ``home``'s log in requests of 40, split by identity key, each
    request with its share of ``bad`` rows."""
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", PARTITIONS)
    log.ensure_topic("bad_rows", 1)
    requests = range(0, events.num_rows, 40)
    for r, i in enumerate(requests):
        appends = event_appends(events.slice(i, 40), PARTITIONS)
        if bad is not None and r < bad.num_rows:
            appends.append(Append("bad_rows", 0, bad.slice(r, 1)))
        log.append(appends)
    log.close()


def split(events: pa.Table) -> int:
    """A row near the middle with no event id on both sides (a re-sent duplicate across an
    engine switch would be written twice: the engines do not share their dedup state)."""
    ids = events["event_id"].to_pylist()
    k = len(ids) // 2
    while set(ids[:k]) & set(ids[k:]):
        k += 1
    return k


def run(home: Home, *args: str):
    return CliRunner().invoke(cli, list(args), env={"HEADWATER_HOME": str(home.root)})


def bronze(home: Home) -> list[dict]:
    return table_rows(home, "bronze.events", ["source", "event_id"])


@pytest.mark.slow
def test_available_now_on_spark_writes_the_embedded_engines_bronze(spark, tmp_path):
    events, bad = generated(600), bad_rows(8)
    embedded, on_spark = home_with_log(tmp_path / "embedded", events, bad=bad), home_with_log(tmp_path / "spark", events, bad=bad)
    k = split(events)
    switched = home_with_log(tmp_path / "switched", events.slice(0, k), bad=bad.slice(0, 3))

    assert run(embedded, "stream", "--available-now").exit_code == 0
    result = run(on_spark, "stream", "--engine", "spark", "--available-now", "--max-records-per-partition", "100")
    assert result.exit_code == 0, result.output

    expected = bronze(embedded)
    assert len(expected) == len(set(events["event_id"].to_pylist())) == 600
    assert bronze(on_spark) == expected

    # Switching engines: the embedded engine consumed the first part, then Spark takes over.
    assert run(switched, "stream", "--available-now").exit_code == 0
    append(switched, events.slice(k), bad.slice(3))
    result = run(switched, "stream", "--engine", "spark", "--available-now")
    assert result.exit_code == 0, result.output
    assert bronze(switched) == expected
    # The bad_rows topic too: bronze.bad_rows as the embedded engine writes it, each row once.
    expected_bad = table_rows(embedded, "bronze.bad_rows", ["reason"])
    assert len(expected_bad) == 8
    assert table_rows(on_spark, "bronze.bad_rows", ["reason"]) == table_rows(switched, "bronze.bad_rows", ["reason"]) == expected_bad
    # The default pipeline ran on Spark too (its session windows in append mode).
    tables = Lake.of(on_spark).tables()
    assert {"realtime.events_per_minute", "realtime.users_per_minute", "realtime.users_per_hour"} <= set(tables)
    # The bronze sink committed the consumer group after each epoch: status sees no lag.
    status = json.loads(run(on_spark, "status", "--format", "json").output)
    assert status["log"]["events"]["lag"] == status["log"]["bad_rows"]["lag"] == 0
    assert status["log"]["bad_rows"]["partitions"]["0"]["committed_offset"] == 8
    assert sum(p["committed_offset"] for p in status["log"]["events"]["partitions"].values()) == events.num_rows
    assert len(list((on_spark.checkpoint_dir("spark-default-bronze") / "commits").iterdir())) >= 2  # several epochs


@pytest.mark.slow
def test_continuous_spark_stream_stops_on_sigterm_with_exit_0(tmp_path):
    """The subprocess's own JVM on local[2]: it runs on the processing-time trigger until its
    first epochs are in bronze, then SIGTERM stops it (exit 0); a second run takes the rest."""
    events = generated(2_000)
    home = home_with_log(tmp_path / "home", events, engine="spark")
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(BRONZE_ONLY)
    env = {**os.environ, "HEADWATER_HOME": str(home.root), "HEADWATER_STREAM_MAX_RECORDS_PER_PARTITION": "50"}
    args = [sys.executable, "-m", "headwater", "stream", "--pipeline", str(pipeline), "--trigger-interval", "0.2"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not Lake.of(home).exists("bronze.events"):
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "no bronze epoch within 240 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    stopped_at = len(bronze(home))
    assert 0 < stopped_at < events.num_rows  # stopped mid-log (50 events per partition and epoch)
    rows = bronze(home)
    assert len({(r["source"], r["event_id"]) for r in rows}) == len(rows)

    # The next run resumes from Spark's checkpoint: bronze ends exact.
    again = subprocess.run([*args, "--available-now"], env=env, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stdout.decode(errors="replace")[-3000:] + again.stderr.decode(errors="replace")[-3000:]
    assert sorted(r["event_id"] for r in bronze(home)) == sorted(set(events["event_id"].to_pylist()))
    log = open_log(home.settings.log_url)
    try:
        assert log.committed(STREAM_GROUP, "events") == log.end_offsets("events")
    finally:
        log.close()


@pytest.mark.parametrize(
    "aggregate, refusal",
    [
        ('window = { type = "session", gap = "30m" }\noutput_mode = "update"', "Spark supports session windows only in append output mode"),
        ('window = { type = "tumbling", size = "1m" }\nallowed_lateness = "5m"', "allowed_lateness has no Spark Structured Streaming equivalent"),
    ],
)
def test_a_pipeline_spark_cannot_run_is_one_line_exit_2(tmp_path, monkeypatch, aggregate, refusal):
    import headwater.spark

    monkeypatch.setattr(headwater.spark, "session", lambda *a, **k: pytest.fail("no JVM for a refused pipeline"))
    pipeline = tmp_path / "pipeline.toml"
    pipeline.write_text(f'name = "p"\n[[aggregates]]\nname = "per_user"\ngroup_by = ["user_id"]\n{aggregate}\n'
                        '[[aggregates.measures]]\nname = "events"\nkind = "count"\n')
    home = Home(tmp_path / "home")
    result = run(home, "stream", "--engine", "spark", "--available-now", "--pipeline", str(pipeline))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: aggregate per_user: {refusal}")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
