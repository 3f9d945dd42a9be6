"""The collector's view of the stream and the disk, for load shedding, ``/health`` and ``/ready``.

:class:`LoadMonitor` samples on a background thread, every :data:`REFRESH_S` seconds, what is
too dear to read per request, and keeps the last :class:`Sample`; the request path and the
health endpoints read that snapshot (an attribute read, no I/O):

- **stream lag** (records): over the ``events`` and ``bad_rows`` topics, the log's end offsets
  minus the offsets committed by the stream's consumer group
  (:data:`~headwater.events.STREAM_GROUP`) — read through the :class:`EventLog` API, since
  the collector sits below the stream layer. An upper bound on Kafka (see the log contract);
- **progress**: how long the group has had lag without committing anything (0 while the lag
  is 0 or the committed offsets move);
- **disk**: share of the home's filesystem in use, as ``df`` counts it (``used / (used +
  free)``: blocks reserved for root count as full, since the collector cannot write them).

Decisions (:meth:`LoadMonitor.refusal`): disk above ``collector.max_disk_used`` → 503 (the
log cannot take more; retry in :data:`DISK_RETRY_S`); lag above ``collector.max_lag_events``
(0: no limit) → 429 (the stream must catch up; retry in :data:`LAG_RETRY_S`). The stream is
*down* for ``/health`` when the lag cannot be read, or it has lag and committed nothing for
``collector.stream_stall_s``; merely *behind* (over the lag limit but committing), it is up and
the collector sheds load.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from headwater.errors import HeadwaterError
from headwater.events import BAD_ROWS_TOPIC, EVENTS_TOPIC, STREAM_GROUP
from headwater.log.base import EventLog
from headwater.settings import CollectorSettings

log = logging.getLogger(__name__)

REFRESH_S = 0.5  # sampling period: the checks lag reality by at most this
LAG_RETRY_S = 5  # Retry-After (s) while the stream is behind
DISK_RETRY_S = 30  # Retry-After (s) while the disk is too full
LOOP_TICK_S = 0.05  # period of the event-loop delay probe


@dataclass(frozen=True)
class Refusal:
    """Why a request is not taken: HTTP ``status``, error ``code``, the setting that bounds it
    (``limit``), a ``message`` for the client and ``retry_after_s`` (whole seconds)."""

    status: int
    code: str
    limit: str
    message: str
    retry_after_s: int


@dataclass(frozen=True)
class Sample:
    """One reading: ``lag`` (records, None if unreadable), ``stalled_s`` (seconds with lag and
    no commit), ``disk_used`` (share 0..1, None if unreadable), ``errors`` (one sentence each)."""

    lag: int | None
    stalled_s: float
    disk_used: float | None
    errors: tuple[str, ...] = ()


class LoadMonitor:
    """Samples ``log`` (lag of ``group`` on the collector's topics) and the filesystem of
    ``home`` every ``refresh_s`` on a thread between :meth:`start` and :meth:`close`."""

    def __init__(self, log: EventLog, home: Path, limits: CollectorSettings, *, group: str = STREAM_GROUP,
                 refresh_s: float = REFRESH_S):
        self._log, self._home, self.limits, self.group, self._refresh_s = log, home, limits, group, refresh_s
        self._committed: dict[str, dict[int, int]] | None = None
        self._progress_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sample = Sample(lag=0, stalled_s=0.0, disk_used=None)

    def start(self) -> LoadMonitor:
        """Take a first sample now, then keep sampling on a daemon thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._run, name="collector-load-monitor", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def refresh(self) -> Sample:
        """Read the lag and the disk now; store and return the new :class:`Sample`."""
        now, errors = time.monotonic(), []
        lag: int | None = None
        try:
            committed = {t: self._log.committed(self.group, t) for t in (EVENTS_TOPIC, BAD_ROWS_TOPIC)}
            ends = {t: self._log.end_offsets(t) for t in (EVENTS_TOPIC, BAD_ROWS_TOPIC)}
            lag = sum(end - committed[t].get(p, 0) for t, parts in ends.items() for p, end in parts.items())
            if lag == 0 or committed != self._committed:
                self._progress_at = now
            self._committed = committed
        except HeadwaterError as e:  # TransientError (store failing), NotFoundError (topic gone)
            errors.append(f"stream lag unreadable: {e}")
        disk_used = None
        try:
            usage = shutil.disk_usage(self._home)
            disk_used = usage.used / (usage.used + usage.free) if usage.used + usage.free else 1.0
        except OSError as e:
            errors.append(f"disk usage unreadable: {type(e).__name__}: {e.strerror or e}")
        for error in errors:
            log.warning("collector load monitor: %s", error)
        self.sample = Sample(lag, now - self._progress_at if lag else 0.0, disk_used, tuple(errors))
        return self.sample

    def refusal(self) -> Refusal | None:
        """What the last sample says about new requests: a :class:`Refusal`, or None to take them."""
        s, limits = self.sample, self.limits
        if s.disk_used is not None and s.disk_used > limits.max_disk_used:
            return Refusal(503, "disk_full", "collector.max_disk_used",
                           f"The collector's disk is {s.disk_used:.1%} full (limit {limits.max_disk_used:.0%}); retry later",
                           DISK_RETRY_S)
        if limits.max_lag_events and s.lag is not None and s.lag > limits.max_lag_events:
            return Refusal(429, "stream_behind", "collector.max_lag_events",
                           f"The stream is {s.lag} records behind the log (limit {limits.max_lag_events}); retry later",
                           LAG_RETRY_S)
        return None

    def report(self) -> dict[str, dict]:
        """``stream`` and ``disk`` sections of ``/health``, each with ``status`` ``ok`` / ``down``
        (stream also ``behind``: over the lag limit, still committing)."""
        s, limits = self.sample, self.limits
        stalled = bool(s.lag) and s.stalled_s > limits.stream_stall_s
        if s.lag is None or stalled:
            stream_status = "down"
        elif limits.max_lag_events and s.lag > limits.max_lag_events:
            stream_status = "behind"
        else:
            stream_status = "ok"
        disk_down = s.disk_used is None or s.disk_used > limits.max_disk_used
        return {
            "stream": {"status": stream_status, "group": self.group, "lag": s.lag, "max_lag_events": limits.max_lag_events,
                       "progressing": not stalled, "stalled_s": round(s.stalled_s, 1),
                       **({"error": s.errors[0]} if s.lag is None else {})},
            "disk": {"status": "down" if disk_down else "ok",
                     "used": None if s.disk_used is None else round(s.disk_used, 4), "max_used": limits.max_disk_used},
        }


class LoopDelay:
    """How late the collector's event loop runs (ms): a timer due every :data:`LOOP_TICK_S`
    fires ``delay_ms`` late. Every request waits that long before any of its work, so it is the
    queueing delay the in-flight bound cannot see (requests uvicorn has read but not yet handed
    over, bodies arriving, the commit answers waiting). The measure is Node's
    ``monitorEventLoopDelay`` and fastify ``under-pressure``'s ``maxEventLoopDelay``.

    :meth:`refusal`: past ``collector.max_loop_delay_ms`` new requests are answered 429 at once,
    costing almost no loop time, so the loop catches up instead of every request timing out;
    ``Retry-After`` grows with the delay, spreading the clients' retries."""

    def __init__(self, limits: CollectorSettings):
        self.limits = limits
        self.delay_ms = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> LoopDelay:
        """Probe ``loop`` until :meth:`close` (call from the loop's thread)."""
        self._schedule(loop)
        return self

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        due = loop.time() + LOOP_TICK_S
        self._handle = loop.call_at(due, self._tick, loop, due)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self.delay_ms = max(0.0, loop.time() - due) * 1000
        self._schedule(loop)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def refusal(self) -> Refusal | None:
        limit = self.limits.max_loop_delay_ms
        if limit and self.delay_ms > limit:
            return Refusal(429, "overloaded", "collector.max_loop_delay_ms",
                           f"The collector is {self.delay_ms:.0f} ms behind (limit {limit:g} ms); retry later",
                           max(1, math.ceil(2 * self.delay_ms / 1000)))
        return None
