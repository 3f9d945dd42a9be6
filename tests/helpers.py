"""Test helpers shared across test packages: a real collector process, reading the log back.

    from tests.helpers import start_collector, LogTail

    with start_collector(home_dir, write_key="wk-helpers-example") as c:   # uvicorn on 127.0.0.1:<free port>
        httpx.post(c.url + "/v1/batch", ...)
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from headwater.config import Home
from headwater.errors import NotFoundError, TransientError
from headwater.events import BAD_ROW_SCHEMA, BAD_ROWS_TOPIC, EVENT_SCHEMA, EVENTS_TOPIC, STREAM_GROUP
from headwater.log import EventLog, open_log
from headwater.log.base import Append
from headwater.log.sqlite import SqliteLog
from headwater.runtime import free_port, wait_http


def terminate(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (a graceful stop) if it still runs; SIGKILL it after ``timeout`` s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

@dataclass
class CollectorProcess:
    """A collector subprocess serving ``home`` on ``http://127.0.0.1:<port>``."""

    home: Home
    port: int
    proc: subprocess.Popen
    write_key: str | None = None
    source: str | None = None
    _log: EventLog | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> EventLog:
        """A reader of the collector's log (another connection)."""
        if self._log is None:
            self._log = open_log(self.home.settings.log_url)
        return self._log

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful: pending appends are committed), SIGKILL after ``timeout``."""
        if self._log is not None:
            self._log.close()
        terminate(self.proc, timeout)
        return self.proc.returncode


@contextmanager
def start_collector(
    home_dir: Path,
    *,
    write_key: str | None = "test-write-key-0001",
    source: str = "test",
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[CollectorProcess]:
    """Run ``headwater.collector.server.serve`` in a subprocess with ``HEADWATER_HOME=home_dir``.

    Adds source ``source`` with ``write_key`` first (unless ``write_key`` is None), waits
    for ``GET /health``, yields a :class:`CollectorProcess`, stops it on exit."""
    home = Home(Path(home_dir))
    home.root.mkdir(parents=True, exist_ok=True)
    if write_key is not None:
        home.add_source(source, write_key)
    port = port or free_port()
    penv = {**os.environ, "HEADWATER_HOME": str(home.root), **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "headwater", "collector", "--port", str(port)], env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    c = CollectorProcess(home, port, proc, write_key, source if write_key is not None else None)
    try:
        wait_http(c.url + "/health", timeout, proc)
        yield c
    finally:
        c.stop()


SCHEMAS = {EVENTS_TOPIC: EVENT_SCHEMA, BAD_ROWS_TOPIC: BAD_ROW_SCHEMA}


class PerTopicLog(SqliteLog):
    """The sqlite log declaring no ``atomic_multi_topic_append`` (as a Kafka log without
    cross-topic transactions would): it refuses an append mixing topics; appends to
    ``fail_topic`` raise :class:`TransientError`."""

    atomic_multi_topic_append = False
    fail_topic: str | None = None

    def _append(self, appends):
        if any(a.topic == self.fail_topic for a in appends):
            raise TransientError(f"{self.fail_topic}: broker unavailable")
        super()._append(appends)


def read_topic(log: EventLog, topic: str, start: dict[int, int] | None = None) -> pa.Table | None:
    """All rows of ``topic`` (``events`` or ``bad_rows``) from ``start`` offsets (default 0) to
    the end, every partition, with ``_partition`` / ``_offset`` / ``_appended_ms`` columns;
    None when there are none."""
    start = start or {}
    tables = []
    for p, end in log.end_offsets(topic).items():
        s = start.get(p, 0)
        if end > s:
            t, bad = log.read(topic, p, s, end, SCHEMAS[topic])
            assert not bad, bad
            tables.append(t)
    return pa.concat_tables(tables) if tables else None


class LogTail:
    """Rows appended to ``topic`` since the last :meth:`mark` (or construction)."""

    def __init__(self, log: EventLog, topic: str):
        self.log, self.topic = log, topic
        self.mark()

    def mark(self) -> None:
        try:
            self.start = self.log.end_offsets(self.topic)
        except NotFoundError:
            self.start = {}

    def rows(self) -> list[dict]:
        t = read_topic(self.log, self.topic, self.start)
        return t.to_pylist() if t is not None else []


def query(home: Home, sql: str, params: dict | list | None = None) -> pa.Table:
    """``sql`` over ``home``'s lake (:func:`headwater.lake.sql.query`)."""
    from headwater.lake import sql as catalog
    from headwater.lake.store import Lake

    return catalog.query(Lake.of(home), sql, params)


def run_stream(home: Home) -> None:
    """Run the real stream processor on ``home`` in this process (Spark's
    ``Trigger.AvailableNow``): what the log holds now reaches the bronze tables."""
    from headwater.stream.processor import BronzeStream

    stream = BronzeStream(home)
    try:
        stream.run(available_now=True)
    finally:
        stream.log.close()


def logged(home: Home, rows: list[dict], consumed: bool = True) -> None:
    """Append ``rows`` to the home's event log (one partition); the stream's group commits
    past them if ``consumed``."""
    log = open_log(home.settings.log_url)
    try:
        log.ensure_topic(EVENTS_TOPIC, 1)
        log.append([Append(EVENTS_TOPIC, 0, pa.Table.from_pylist(rows, schema=EVENT_SCHEMA))])
        if consumed:
            log.commit(STREAM_GROUP, EVENTS_TOPIC, log.end_offsets(EVENTS_TOPIC))
    finally:
        log.close()
