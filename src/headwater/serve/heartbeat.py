"""The heartbeat ``headwater up`` prints: one line every :data:`HEARTBEAT_S` seconds, e.g.::

    heartbeat 12:00:10Z  in 118.0 ev/s  out 117.5 ev/s  lag 35 ev  freshness 0.4 s  watermark delay 61.0 s
    heartbeat 12:00:20Z  in 0.0 ev/s  out 0.0 ev/s  lag 0 ev  freshness 0.0 s  watermark delay -  quality FAILING: completeness_bronze (2)

Every figure is one that :mod:`headwater.serve.progress` and :mod:`headwater.quality` already
define, read from durable state, so ``headwater status``, ``/metrics`` and ``headwater check``
agree with it:

* ``in`` / ``out``: records appended to the log (what the collector accepted, bad rows
  included) / committed by the stream's consumer group, per second since the previous line —
  the change of the end and committed offsets of :func:`~headwater.serve.progress.log_offsets`
  (so ``in − out`` is the change of ``lag``);
* ``lag``: records in the log not yet committed (``headwater status``'s ``lag``);
* ``freshness``: how long the oldest uncommitted event has waited (0: caught up), the measure
  of the realtime SLA (:func:`headwater.log.base.oldest_unconsumed_ms`, as the quality check
  ``freshness_realtime`` reads it);
* ``watermark delay``: the bronze query's event-time watermark behind the wall clock
  (:func:`~headwater.serve.progress.query_metrics`; it includes the pipeline's allowed lateness);
* ``quality FAILING``: the checks whose latest stored run failed
  (:func:`headwater.quality.alerts.failing`), with the realtime freshness SLA judged live from
  ``freshness`` (the stored result may be minutes old).

A figure that cannot be read (no log yet, a table being rewritten) prints ``-``; nothing here
may stop ``up``.

The heartbeat runs in ``up``'s supervisor, which should stay a small process: every figure but
the failing checks comes from files and the log's own bookkeeping (no event is decoded). The
failing checks need a query over the Delta table ``quality.results``, so they are read by a
short-lived child process, and only when that table changed (a new commit file in its Delta
log): a few times an hour (the realtime freshness check stores a passing result every 10
minutes). The child imports delta-rs alone and runs :data:`FAILING_SQL` on its DataFusion
engine (``deltalake.QueryBuilder``): measured 86 MB resident for 0.1 s, where
:func:`headwater.quality.alerts.failing` (DuckDB, headwater's settings and Arrow) took 247 MB
for 3.2 s; run in this process, the query would add ~45 MB for good (the engine's threads and
buffers). Where the table lives (its URI, and the pyarrow filesystem its Delta log is listed
with) comes from :class:`headwater.lake.location.Location`, which does not import delta-rs,
so this process never holds it: that import alone held 24 MB of its ~115 MB (resident set
before and after).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow.fs as pafs

from headwater.config import Home
from headwater.events import EVENTS_TOPIC, STREAM_GROUP as QUERY
from headwater.lake.location import Location
from headwater.log import open_log
from headwater.log.base import oldest_unconsumed_ms
from headwater.serve.progress import log_offsets, query_metrics

log = logging.getLogger("headwater.heartbeat")

HEARTBEAT_S = 10.0
RESULTS = "quality.results"  # headwater.quality.alerts.TABLE (not imported: it loads DuckDB)
# headwater.quality.alerts.failing in DataFusion's dialect: {check: failed rows} of the latest
# run of each check (its newest checked_at; runs of different checks interleave).
FAILING_SQL = """
SELECT check_name, count(*) AS failed FROM (
    SELECT check_name, status, checked_at = max(checked_at) OVER (PARTITION BY check_name) AS latest FROM results
) WHERE latest AND status = 'fail' GROUP BY check_name
"""
# The child that runs it: the table's URI and delta-rs storage options (credentials: on stdin,
# never in the command line) in, the failing checks out as JSON.
FAILING = ("import json, sys; from deltalake import DeltaTable, QueryBuilder; a = json.load(sys.stdin); "
           "t = QueryBuilder().register('results', DeltaTable(a['uri'], storage_options=a['options'])).execute(a['sql']).read_all(); "
           "print(json.dumps(dict(zip(t['check_name'].to_pylist(), t['failed'].to_pylist()))))")
FAILING_TIMEOUT_S = 120.0
T = TypeVar("T")


def _or_none(what: str, read: Callable[[], T]) -> T | None:
    """``read()``, or ``None`` (logged at DEBUG) if it raises: a figure that cannot be read
    now is shown as ``-``, never an error of ``up``."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - any failure of any reader: the figure is unavailable
        log.debug("heartbeat: %s unavailable", what, exc_info=True)
        return None


@dataclass(frozen=True)
class Figures:
    """One heartbeat: ``in_per_s`` / ``out_per_s`` (records/s), ``lag`` (records),
    ``freshness_s`` and ``watermark_delay_s`` (s), ``failing`` (``{check: failed results}``);
    ``None``: unavailable."""

    at: dt.datetime
    in_per_s: float | None = None
    out_per_s: float | None = None
    lag: int | None = None
    freshness_s: float | None = None
    watermark_delay_s: float | None = None
    failing: dict[str, int] | None = None


def _num(value: float | None, unit: str, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f} {unit}"


def line(f: Figures) -> str:
    """The printed line of ``f`` (module docstring); the quality part only when a check fails."""
    text = (f"heartbeat {f.at:%H:%M:%S}Z  in {_num(f.in_per_s, 'ev/s')}  out {_num(f.out_per_s, 'ev/s')}  "
            f"lag {_num(f.lag, 'ev', 0)}  freshness {_num(f.freshness_s, 's')}  "
            f"watermark delay {_num(f.watermark_delay_s, 's')}")
    if f.failing:
        text += "  quality FAILING: " + ", ".join(f"{name} ({n})" for name, n in sorted(f.failing.items()))
    return text


@dataclass
class Heartbeat:
    """Reads :class:`Figures` of ``home``; rates are over the time since the previous read."""

    home: Home
    _last: tuple[float, int, int] | None = field(default=None, repr=False)  # (monotonic s, end, committed offsets)
    # (stamp of quality.results' Delta log, its failing checks or None if unreadable)
    _failing: tuple[tuple | None, dict[str, int] | None] | None = field(default=None, repr=False)
    _lake: Location | None = field(default=None, repr=False)  # built once: an S3 root's client pools connections

    def freshness_s(self, now: dt.datetime) -> float:
        """Wait of the oldest uncommitted event (s; 0 when caught up)."""
        events_log = open_log(self.home.settings.log_url)
        try:
            oldest = oldest_unconsumed_ms(events_log, QUERY, EVENTS_TOPIC)
        finally:
            events_log.close()
        return 0.0 if oldest is None else max(0.0, now.timestamp() - oldest / 1000)

    def failing(self) -> dict[str, int] | None:
        """:func:`headwater.quality.alerts.failing` of the lake (``{}`` before any result;
        ``None`` if it cannot be read), read anew by a child process only when ``quality.results``
        changed since the previous call (module doc)."""
        stamp = _log_stamp(self._location().filesystem(RESULTS))
        if self._failing is None or self._failing[0] != stamp:
            self._failing = (stamp, self._read_failing() if stamp is not None else {})
        failing = self._failing[1]
        return None if failing is None else dict(failing)

    def _location(self) -> Location:
        if self._lake is None:
            self._lake = Location.of(self.home)
        return self._lake

    def _read_failing(self) -> dict[str, int] | None:
        lake = self._location()
        table = json.dumps({"uri": lake.uri(RESULTS), "options": lake.storage_options, "sql": FAILING_SQL})
        done = subprocess.run([sys.executable, "-c", FAILING], input=table, capture_output=True, text=True, timeout=FAILING_TIMEOUT_S)
        if done.returncode != 0:
            log.debug("heartbeat: quality results unreadable (exit code %s): %s", done.returncode, done.stderr[-2000:])
            return None
        return json.loads(done.stdout)

    def read(self) -> Figures:
        """The figures now (rates: since the previous call; ``None`` on the first)."""
        now, mono = dt.datetime.now(dt.timezone.utc), time.monotonic()
        topics = _or_none("log offsets", lambda: log_offsets(self.home))
        in_s = out_s = lag = fresh = None
        if topics is not None:
            parts = [v for t in topics.values() for v in t["partitions"].values()]
            end, done = sum(v["end_offset"] for v in parts), sum(v["committed_offset"] for v in parts)
            lag = end - done
            if self._last is not None and mono > self._last[0]:
                span = mono - self._last[0]
                in_s, out_s = (end - self._last[1]) / span, (done - self._last[2]) / span
            self._last = (mono, end, done)
            if EVENTS_TOPIC in topics:  # before the first event there is no wait to speak of
                fresh = _or_none("freshness", lambda: self.freshness_s(now))
        metrics = _or_none("stream metrics", lambda: query_metrics(self.home).get(QUERY)) or {}
        failing = _or_none("quality results", self.failing)
        if failing is not None and fresh is not None:  # the realtime SLA, judged now
            failing.pop("freshness_realtime", None)
            if fresh > self.home.settings.quality.realtime_max_delay_s:
                failing["freshness_realtime"] = 1
        return Figures(now, in_s, out_s, lag, fresh, metrics.get("watermark_delay_s"), failing)

    def run(self, stop: threading.Event, echo: Callable[[str], None], every_s: float = HEARTBEAT_S) -> None:
        """Call ``echo`` with one :func:`line` every ``every_s`` seconds until ``stop`` is set."""
        self.read()  # the first offsets: rates from the first line on
        while not stop.wait(every_s):
            text = _or_none("heartbeat", lambda: line(self.read()))
            if text is not None:
                echo(text)


def _log_stamp(fs: pafs.FileSystem) -> tuple[str, int | None, int] | None:
    """What changes with every commit of the Delta table at the root of ``fs``: its newest commit
    file (path, mtime in ns, size; a table deleted and created again differs in the mtime),
    ``None`` if it has none. One directory listing (an object store: one LIST request)."""
    infos = fs.get_file_info(pafs.FileSelector("_delta_log", allow_not_found=True))
    # Commit files are named by their version, zero-padded to 20 digits: the newest sorts last.
    newest = max((i for i in infos if i.path.endswith(".json")), key=lambda i: i.path, default=None)
    return None if newest is None else (newest.path, newest.mtime_ns, newest.size)
