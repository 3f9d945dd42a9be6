"""The ``headwater up`` heartbeat: its figures from a real log and lake, ``-`` for what cannot be
read, and the line appearing under a real ``headwater up`` once per interval."""

from __future__ import annotations

import base64
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.events import EVENT_SCHEMA, EVENTS_TOPIC, STREAM_GROUP
from headwater.lake.store import Lake
from headwater.log import open_log
from headwater.log.base import Append
from headwater.quality import alerts
from headwater.runtime import free_port, wait_http
from headwater.serve.heartbeat import HEARTBEAT_S, Figures, Heartbeat, line
from headwater.settings import load as load_settings
from tests.models.bronze import event

LINE = re.compile(r"^heartbeat \d\d:\d\d:\d\dZ  in (?P<in>[\d.]+) ev/s  out (?P<out>[\d.]+) ev/s  lag (?P<lag>\d+) ev  "
                  r"freshness [\d.]+ s  watermark delay ([\d.-]+ s|-)( {2}quality FAILING: .*)?$")


def append(home: Home, n: int, commit: int) -> None:
    """``n`` more events into the log; the stream's group commits up to offset ``commit``."""
    log = open_log(home.settings.log_url)
    try:
        log.ensure_topic(EVENTS_TOPIC, 1)
        start = log.end_offsets(EVENTS_TOPIC)[0]
        now = dt.datetime.now(dt.timezone.utc)
        log.append([Append(EVENTS_TOPIC, 0, pa.Table.from_pylist([event(f"e{start + i}", now) for i in range(n)], schema=EVENT_SCHEMA))])
        log.commit(STREAM_GROUP, EVENTS_TOPIC, {0: commit})
    finally:
        log.close()


def test_figures_and_line(tmp_path):
    home = Home(tmp_path, load_settings(home=tmp_path, **{"quality.realtime_max_delay_s": 0.001}))
    beat = Heartbeat(home)
    empty = beat.read()  # nothing yet: no rates, no wait, no stream
    assert (empty.in_per_s, empty.lag, empty.freshness_s, empty.watermark_delay_s, empty.failing) == (None, 0, None, None, {})
    assert line(empty).endswith("in -  out -  lag 0 ev  freshness -  watermark delay -")

    append(home, 10, commit=4)
    time.sleep(0.05)
    got = beat.read()
    assert got.lag == 6 and got.in_per_s / got.out_per_s == pytest.approx(2.5)  # in and out over the same span
    assert got.freshness_s >= 0.05 and got.failing == {"freshness_realtime": 1}  # judged live, over 1 ms
    alerts.record(Lake.of(home), [alerts.Result("completeness_bronze", "bronze.events", "fail", "lost")], got.at)
    append(home, 0, commit=10)  # caught up
    later = beat.read()
    assert (later.lag, later.freshness_s, later.failing) == (0, 0.0, {"completeness_bronze": 1})
    assert later.in_per_s == 0 and later.out_per_s > 0
    assert LINE.match(line(later)) and line(later).endswith("quality FAILING: completeness_bronze (1)")


def test_failing_checks_are_read_by_a_child_only_when_the_results_changed(tmp_path, monkeypatch):
    home = Home(tmp_path)
    beat, reads = Heartbeat(home), []
    child = Heartbeat._read_failing
    monkeypatch.setattr(Heartbeat, "_read_failing", lambda self: reads.append(1) or child(self))
    assert beat.failing() == {} and reads == []  # no table yet: nothing to read
    at = dt.datetime.now(dt.timezone.utc)
    alerts.record(Lake.of(home), [alerts.Result("volume", "bronze.events", "fail", "low")], at)
    assert beat.failing() == beat.failing() == {"volume": 1} and len(reads) == 1
    alerts.record(Lake.of(home), [alerts.Result("volume", "bronze.events", "pass", "ok")], at + dt.timedelta(seconds=1))
    assert beat.failing() == {} and len(reads) == 2


def test_the_supervisor_reads_its_figures_without_loading_delta_rs(tmp_path):
    home = Home(tmp_path)
    alerts.record(Lake.of(home), [alerts.Result("volume", "bronze.events", "fail", "low")], dt.datetime.now(dt.timezone.utc))
    code = ("import sys; import headwater.cli.main, headwater.runtime; from headwater.config import Home; "
            "from headwater.serve.heartbeat import Heartbeat; f = Heartbeat(Home(sys.argv[1])).read(); "
            "print(f.failing, 'deltalake' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "{'volume': 1} False"  # delta-rs only in its short-lived children (module doc)


def test_an_unreadable_figure_prints_a_dash(tmp_path):
    (tmp_path / "not-a-dir").write_text("")
    home = Home(tmp_path, load_settings(home=tmp_path, **{"log.url": f"sqlite:///{tmp_path / 'not-a-dir' / 'log.db'}"}))
    Lake.of(home).append("quality.results", pa.table({"garbage": [1]}))  # not the results schema
    got = Heartbeat(home).read()
    assert got == Figures(got.at)  # every figure unavailable, no exception
    assert "in -  out -  lag -  freshness -  watermark delay -" in line(got)


def test_up_prints_a_heartbeat_line_per_interval(tmp_path):
    port, key = free_port(), "hw_wk_Heartbeat0Test0Write0Key0"
    env = {**os.environ, "HEADWATER_HOME": str(tmp_path / "home"), "HEADWATER_PORT": str(port), "HEADWATER_WRITE_KEY": key,
           "PYTHONUNBUFFERED": "1"}
    out = tmp_path / "up.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "headwater", "up", "--no-dagster"], env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc, timeout_s=60)
        started = time.monotonic()
        auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
        batch = {"batch": [{"type": "track", "event": "Viewed", "userId": "u1", "messageId": f"m{i}"} for i in range(20)]}

        def beats_after(n: int) -> list[str]:
            while True:
                assert proc.poll() is None, out.read_text()
                assert time.monotonic() - started < 4 * HEARTBEAT_S + 30, out.read_text()
                got = [s for s in out.read_text().splitlines() if s.startswith("heartbeat ")]
                if len(got) >= n:
                    return got
                time.sleep(0.5)

        beats_after(1)  # the heartbeat has taken its readings: the events fall in the next interval
        assert httpx.post(f"http://127.0.0.1:{port}/v1/batch", headers=auth, json=batch, timeout=10).status_code == 200
        beats = beats_after(2)
        elapsed = time.monotonic() - started
        maps = open(f"/proc/{proc.pid}/maps").read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert all(LINE.match(b) for b in beats), beats
    assert "_duckdb" not in maps  # the supervisor stays small: no query engine (module doc)
    assert len(beats) <= elapsed / HEARTBEAT_S + 1  # one line per interval, no more
    assert float(LINE.match(beats[1])["in"]) > 0  # the 20 events, accepted after the first line
