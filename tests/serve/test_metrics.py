"""``GET /metrics`` on a real collector process, ``headwater status``, and the rate arithmetic."""

from __future__ import annotations

import base64
import datetime as dt
import json

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from headwater.cli.main import cli
from headwater.config import Home
from headwater.serve.progress import RATE_WINDOW_S, query_metrics
from headwater.stream.checkpoint import Checkpoint
from headwater.stream.pipeline import DEFAULT_PIPELINE
from headwater.stream.processor import QUERY, BronzeStream
from tests.helpers import read_topic, start_collector

WRITE_KEY = "wk-metrics-test-key"
T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """``{family: {sorted label items: value}}`` parsed by prometheus_client's own parser."""
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def post(url: str, messages: list[dict]) -> None:
    auth = {"Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    # sentAt = now: event time keeps the 2024 timestamps (no skew to correct).
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    r = httpx.post(url + "/v1/batch", json={"batch": messages, "sentAt": now}, headers=auth, timeout=10)
    assert r.status_code == 200, r.text


def track(i: int, minutes: int) -> dict:
    ts = (T0 + dt.timedelta(minutes=minutes)).isoformat()
    return {"type": "track", "event": "Viewed", "userId": f"user-{i % 13}", "messageId": f"m-{i}", "timestamp": ts}


@pytest.fixture(scope="module")
def collector(tmp_path_factory):
    with start_collector(tmp_path_factory.mktemp("home"), write_key=WRITE_KEY) as c:
        yield c


def test_metrics_follow_the_log_and_the_stream(collector):
    url, home = collector.url, collector.home
    post(url, [track(i, i % 30) for i in range(120)])

    before = scrape(url)
    ends = collector.log.end_offsets("events")
    assert sum(ends.values()) == 120
    for p, end in ends.items():
        labels = (("group", QUERY), ("partition", str(p)), ("topic", "events"))
        assert before["headwater_log_end_offset"][(("partition", str(p)), ("topic", "events"))] == end
        assert before["headwater_log_lag_events"][labels] == end
        assert before["headwater_log_committed_offset"][labels] == 0
    assert "headwater_stream_last_batch_id" not in before  # no batch committed yet

    stream = BronzeStream(home)
    stream.run(available_now=True)
    post(url, [track(1000 + i, 0) for i in range(10)])  # arrives after the batch: lag again

    after = scrape(url)
    ends = collector.log.end_offsets("events")
    committed = collector.log.committed(QUERY, "events")
    for p, end in ends.items():
        labels = (("group", QUERY), ("partition", str(p)), ("topic", "events"))
        assert after["headwater_log_committed_offset"][labels] == committed[p]
        assert after["headwater_log_lag_events"][labels] == end - committed[p]
    assert sum(after["headwater_log_lag_events"][k] for k in after["headwater_log_lag_events"] if ("topic", "events") in k) == 10

    q = (("query", QUERY),)
    last = stream.checkpoint.latest_committed()
    info = stream.checkpoint.read_commit(last)["metrics"]
    assert after["headwater_stream_last_batch_id"][q] == last
    assert after["headwater_stream_batch_duration_seconds"][q] == pytest.approx(info["duration_ms"] / 1000)
    # Global watermark = min over partitions of (newest event time − the 10-minute delay); the
    # events are from 2024 (the late 10 sit at minute 0 and move no maximum).
    wm = after["headwater_stream_watermark_seconds"][q]
    rows = read_topic(collector.log, "events")
    newest = pa.TableGroupBy(rows, "_partition").aggregate([("event_ts", "max")])["event_ts_max"]
    assert wm == pytest.approx((pc.min(newest).as_py() - DEFAULT_PIPELINE.watermark.delay).timestamp(), abs=0.001)
    assert after["headwater_stream_watermark_delay_seconds"][q] >= DEFAULT_PIPELINE.watermark.delay.total_seconds()
    assert after["headwater_stream_records_in_per_second"][q] > 0  # 120 records within the last minute
    assert after["headwater_stream_records_out_per_second"][q] > 0
    parts = {dict(k)["partition"] for k in after["headwater_stream_partition_idle"]}
    assert {f"events/{p}" for p in ends} <= parts


def test_status_reports_the_same_figures(collector):
    env = {"HEADWATER_HOME": str(collector.home.root)}
    r = CliRunner().invoke(cli, ["status", "--format", "json"], env=env)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    m = doc["metrics"][QUERY]
    assert m == query_metrics(collector.home)[QUERY] | {
        k: m[k] for k in ("records_in_per_s", "records_out_per_s", "watermark_delay_s")  # wall-clock dependent
    }
    assert doc["log"]["events"]["lag"] == 10
    text = CliRunner().invoke(cli, ["status"], env=env)
    assert text.exit_code == 0, text.output
    assert f"query {QUERY}  batch {m['last_batch_id']}" in text.output and "watermark delay" in text.output


def _commit(ck: Checkpoint, batch_id: int, started_ms: int, duration_ms: int, n_in: int, n_out: int, wm: int | None) -> None:
    ck.write_commit(batch_id, {"metrics": {
        "started_ms": started_ms, "duration_ms": duration_ms, "records_in": n_in, "records_out": n_out,
        "watermark_ms": wm, "partitions": {"events/0": {"start": 0, "end": n_in, "max_event_ms": None, "watermark_ms": wm, "idle": False}},
    }})


def test_rates_count_the_batches_of_the_last_window_only(tmp_path):
    home = Home(tmp_path)
    ck = Checkpoint(home.checkpoint_dir("q"))
    now = 1_700_000_000_000
    _commit(ck, 0, now - 200_000, 1_000, 10_000, 9_000, None)  # ended long before the window: not counted
    _commit(ck, 1, now - 30_000, 1_000, 600, 500, now - 90_000)
    _commit(ck, 2, now - 10_000, 2_000, 300, 100, now - 60_000)
    m = query_metrics(home, now_ms=now)["q"]
    # 900 records in / 600 out over the 30 s since the first counted batch started.
    assert m["records_in_per_s"] == pytest.approx(900 / 30)
    assert m["records_out_per_s"] == pytest.approx(600 / 30)
    assert (m["last_batch_id"], m["batch_duration_s"], m["watermark_delay_s"]) == (2, 2.0, 60.0)
    # An idle query's rates decay to zero once its batches leave the window.
    idle = query_metrics(home, now_ms=now + int(RATE_WINDOW_S * 1000) + 10_000)["q"]
    assert (idle["records_in_per_s"], idle["records_out_per_s"]) == (0.0, 0.0)


def test_foreign_and_unfinished_checkpoints_are_skipped(tmp_path):
    home = Home(tmp_path)
    spark_commits = home.checkpoint_dir("spark-default-bronze") / "commits"
    spark_commits.mkdir(parents=True)
    (spark_commits / "0").write_text('v1\n{"nextBatchWatermarkMs":0}')  # Spark's commit-log format
    Checkpoint(home.checkpoint_dir("fresh"))  # a query that never committed
    assert query_metrics(home) == {}
