"""``/health`` and ``/ready`` of a real collector (uvicorn on 127.0.0.1, real SQLite log), and
the load monitor's disk and stream rules.

The collector runs in this process (uvicorn on a thread) so a test can stop its writer or
fake the filesystem's fill level (``shutil.disk_usage``; real full-disk runs on a small
tmpfs are in the fault tests)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import uvicorn

from headwater.collector import health as health_module
from headwater.collector.app import create_app
from headwater.collector.collector import Collector
from headwater.collector.health import LoadMonitor
from headwater.config import Home
from headwater.events import BAD_ROWS_TOPIC, EVENTS_TOPIC, STREAM_GROUP
from headwater.errors import TransientError
from headwater.log import Append, open_log
from headwater.log.sqlite import SqliteLog
from headwater.runtime import free_port
from headwater.settings import load as load_settings

from .conftest import WRITE_KEY, basic


class FakeDisk:
    """Stands in for ``shutil.disk_usage``: ``used`` share of a 100 GB filesystem."""

    def __init__(self, used: float):
        self.used = used

    def __call__(self, path):
        total = 100 * 2**30
        return shutil._ntuple_diskusage(total, int(total * self.used), total - int(total * self.used))


class FailingLog(SqliteLog):
    """The SQLite log whose appends raise ``error`` while it is set."""

    error: Exception | None = None

    def _append(self, appends):
        if self.error is not None:
            raise self.error
        super()._append(appends)


@contextmanager
def serving(tmp_path: Path, **collector_settings):
    """A collector of a fresh home (``collector.<name>`` settings) writing to a
    :class:`FailingLog`, on uvicorn in a thread; yields ``(collector, http client)``."""
    root = tmp_path / "home"
    home = Home(root, load_settings(home=root, **{f"collector.{k}": v for k, v in collector_settings.items()}))
    home.add_source("web-app", WRITE_KEY)
    log = FailingLog.from_url(home.settings.log_url)
    collector = Collector.from_home(home, log)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(collector), host="127.0.0.1", port=port, lifespan="on", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "collector did not start"
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            yield collector, http
    finally:
        server.should_exit = True
        thread.join(30)
        log.close()


def post(http: httpx.Client, name: str) -> httpx.Response:
    batch = [{"type": "track", "event": "Clicked", "userId": "u", "messageId": name, "timestamp": "2024-03-01T10:00:00Z"}]
    return http.post("/v1/batch", content=json.dumps({"batch": batch}), headers=basic(WRITE_KEY))


def wait_for(http: httpx.Client, path: str, status: int, timeout: float = 5.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while (r := http.get(path)).status_code != status:
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)
    return r


def test_health_and_ready_need_no_credential_and_report_every_component(tmp_path):
    with serving(tmp_path) as (collector, http):
        r = http.get("/health")  # no Authorization header, no write key
        assert r.status_code == 200, r.text
        h = r.json()
        assert h["status"] == "ok"
        assert 0 <= h["writer"].pop("loop_delay_ms") < 250
        assert h["writer"].pop("pid") == os.getpid()  # in-process here; each worker process answers for itself
        assert h["writer"] == {"status": "ok", "alive": True, "queued": 0, "max_queue": 1024, "in_flight": 0, "max_in_flight": 256}
        assert h["stream"]["status"] == "ok" and h["stream"]["group"] == STREAM_GROUP and h["stream"]["progressing"] is True
        assert h["disk"]["status"] == "ok" and 0 < h["disk"]["used"] < 1 and h["disk"]["max_used"] == 0.95
        assert h["log"] == {"status": "ok", "problems": []}
        assert http.get("/ready").json() == {"status": "ready"}
        assert post(http, "e1").status_code == 200
        assert wait_for(http, "/health", 200).json()["stream"]["lag"] >= 0


def test_a_full_disk_answers_ingestion_503_with_retry_after_and_health_503(tmp_path, monkeypatch):
    disk = FakeDisk(0.5)
    monkeypatch.setattr(health_module.shutil, "disk_usage", disk)
    with serving(tmp_path, max_disk_used=0.9) as (collector, http):
        assert post(http, "before").status_code == 200
        disk.used = 0.93
        h = wait_for(http, "/health", 503).json()
        assert h["status"] == "down" and h["disk"] == {"status": "down", "used": 0.93, "max_used": 0.9}
        r = post(http, "during")
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        assert r.json()["code"] == "disk_full" and r.json()["limit"] == "collector.max_disk_used" and "93.0% full" in r.json()["message"]
        assert http.get("/ready").json() == {"status": "not_ready", "reason": r.json()["message"], "limit": "collector.max_disk_used"}
        disk.used = 0.6  # space returns
        wait_for(http, "/health", 200)
        assert post(http, "during").status_code == 200  # the client's retry
        assert http.get("/ready").status_code == 200


def test_a_failed_append_is_503_with_retry_after_and_the_retry_lands(tmp_path):
    with serving(tmp_path) as (collector, http):
        collector.log.error = TransientError("disk I/O error", retry_after_s=2.5)
        r = post(http, "failed")
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and "disk I/O error" in r.json()["message"]
        collector.log.error = OSError(28, "No space left on device")  # no hint: 1 s
        r = post(http, "failed")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert http.get("/health").json()["writer"]["alive"] is True
        collector.log.error = None
        assert post(http, "failed").status_code == 200
        assert collector.log.end_offsets(EVENTS_TOPIC) and sum(collector.log.end_offsets(EVENTS_TOPIC).values()) == 1


def test_a_stopped_writer_is_health_503_and_ingestion_503(tmp_path):
    with serving(tmp_path) as (collector, http):
        collector._writer.close()  # as if the writer thread had died
        h = http.get("/health")
        assert h.status_code == 503 and h.json()["writer"]["status"] == "down" and h.json()["writer"]["alive"] is False
        r = post(http, "no-writer")
        assert r.status_code == 503 and r.headers["retry-after"] == "30" and r.json()["limit"] == "writer"
        assert http.get("/ready").status_code == 503


def test_a_stream_with_lag_that_commits_nothing_is_down_until_it_commits(tmp_path):
    with serving(tmp_path, stream_stall_s=1.0, max_lag_events=0) as (collector, http):
        assert post(http, "lagging").status_code == 200
        h = wait_for(http, "/health", 503).json()
        assert h["stream"]["status"] == "down" and h["stream"]["progressing"] is False and h["stream"]["lag"] == 1
        assert post(http, "still-taken").status_code == 200  # a stalled stream alone does not shed
        log = collector.log
        for topic in (EVENTS_TOPIC, BAD_ROWS_TOPIC):
            log.commit(STREAM_GROUP, topic, log.end_offsets(topic))
        h = wait_for(http, "/health", 200).json()
        assert h["stream"] == {**h["stream"], "status": "ok", "lag": 0, "progressing": True}


@pytest.fixture
def monitor(tmp_path):
    home = Home(tmp_path, load_settings(home=tmp_path, **{"collector.max_disk_used": 0.9, "collector.max_lag_events": 10}))
    log = open_log(home.settings.log_url)
    log.ensure_topic(EVENTS_TOPIC, 2), log.ensure_topic(BAD_ROWS_TOPIC, 1)
    yield log, LoadMonitor(log, home.root, home.settings.collector)
    log.close()


def test_disk_share_counts_root_reserved_blocks_as_used_and_the_limit_is_exclusive(monitor, monkeypatch):
    log, m = monitor
    usage = {"v": shutil._ntuple_diskusage(100, 85, 10)}  # 5 blocks reserved for root: 85 / 95 used
    monkeypatch.setattr(health_module.shutil, "disk_usage", lambda path: usage["v"])
    assert m.refresh().disk_used == pytest.approx(85 / 95) and m.refusal() is None
    usage["v"] = shutil._ntuple_diskusage(100, 90, 10)  # exactly 90%: at the limit, still taken
    assert m.refresh().disk_used == 0.9 and m.refusal() is None
    usage["v"] = shutil._ntuple_diskusage(100, 91, 4)
    m.refresh()
    r = m.refusal()
    assert (r.status, r.code, r.limit, r.retry_after_s) == (503, "disk_full", "collector.max_disk_used", 30)
    monkeypatch.setattr(health_module.shutil, "disk_usage", lambda path: (_ for _ in ()).throw(OSError(5, "I/O error")))
    s = m.refresh()
    assert s.disk_used is None and "disk usage unreadable" in s.errors[0] and m.report()["disk"]["status"] == "down"


def test_lag_is_end_minus_the_stream_groups_committed_offsets_over_both_topics(monitor):
    log, m = monitor
    one = pa.table({"v": [1]})
    log.append([Append(EVENTS_TOPIC, 0, pa.concat_tables([one] * 6)), Append(EVENTS_TOPIC, 1, one),
                Append(BAD_ROWS_TOPIC, 0, pa.concat_tables([one] * 4))])
    assert m.refresh().lag == 11
    r = m.refusal()
    assert (r.status, r.code, r.limit, r.retry_after_s) == (429, "stream_behind", "collector.max_lag_events", 5)
    log.commit("someone-else", EVENTS_TOPIC, {0: 6, 1: 1})  # another group's commits do not count
    assert m.refresh().lag == 11
    log.commit(STREAM_GROUP, EVENTS_TOPIC, {0: 6})
    assert m.refresh().lag == 5 and m.refusal() is None


def test_a_blocked_event_loop_sheds_new_requests_with_429_until_it_catches_up():
    """LoopDelay: a loop running late past collector.max_loop_delay_ms refuses new requests
    (429, Retry-After growing with the delay); on time again, it takes them."""
    import asyncio
    import time as _time

    from headwater.collector.health import LoopDelay
    from headwater.settings import CollectorSettings

    async def scenario():
        probe = LoopDelay(CollectorSettings(max_loop_delay_ms=100)).start(asyncio.get_running_loop())
        await asyncio.sleep(0.12)
        assert probe.refusal() is None
        _time.sleep(0.6)  # a request hogging the loop
        await asyncio.sleep(0)  # the probe's timer fires, late
        await asyncio.sleep(0.001)
        refused = probe.refusal()
        assert refused is not None and refused.status == 429 and refused.limit == "collector.max_loop_delay_ms"
        assert refused.retry_after_s >= 1 and "ms behind" in refused.message
        await asyncio.sleep(0.15)  # on time again
        assert probe.refusal() is None
        probe.close()

    asyncio.run(scenario())
