"""Running the embedded platform: the collector and the stream processor as child processes.

``headwater up`` and ``headwater demo`` start both with :class:`Platform`; each is a plain
``python -m headwater <component>`` process sharing ``HEADWATER_HOME``, so either can be
killed (even with SIGKILL) and restarted on its own: the log and the checkpoint make that safe.
The collector is ``collector.workers`` such processes sharing its port (``collector``,
``collector-1``, …; :mod:`headwater.collector.server`), each supervised on its own: while a
killed worker restarts, the others serve. ``headwater collector`` supervises its workers
with the same :class:`Platform`, without the stream.

:meth:`Platform.supervise` restarts a child that exits with exponential backoff
(:class:`Backoff`: 1 s, 2 s, 4 s … up to setting ``stream.restart_backoff_max_s``, back to 1 s
once the child has run that long), logging its exit code: a processor that fails at once
(a full disk, a quarantined batch: exit 4, a second processor: exit 4) is retried calmly,
not every second.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from headwater.config import Home
from headwater.errors import TransientError
from headwater.serve.heartbeat import Heartbeat
from headwater.serve.progress import log_offsets

log = logging.getLogger("headwater.runtime")

POLL_S = 0.2  # how often the supervisor looks at its children


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The memory allocators of the children, each a default that this process's environment
# overrides. glibc's malloc gives each thread that allocates an arena of its own, up to 8 per
# core, and keeps the memory freed in each for reuse: a process of many threads (the stream's
# sink, window and read-ahead pools, the code server's gRPC and daemon threads) holds the peak
# of every one; 2 arenas share it (glibc manual, "Memory Allocation Tunables"). Arrow's default
# pool (mimalloc) keeps the pages of freed batches reserved in its own arena, 33–56 MB in the
# stream at 5,000 events/s; on the system allocator they go back to glibc, and large buffers
# (mmapped) to the kernel (Arrow docs, "Memory Management": ARROW_DEFAULT_MEMORY_POOL).
# Measured (bench/footprint.py, peak RSS at 5,000 events/s, 11 runs on a busy 2-core machine):
# the stream 348–387 -> 312–383 MB, the code server 262–284 -> 242–275 MB, the two collector
# workers 240–254 -> 232–250 MB; the stream's CPU time per event unchanged (1M events: 5.50–5.55
# vs 5.62–5.66 s). DuckDB, polars and delta-rs bring jemalloc of their own: its
# settings (_RJEM_MALLOC_CONF) made no measurable difference.
# The CLI's own process (``headwater import``, ``batch``, ``query``) takes the same Arrow pool
# (:func:`use_allocator`): a bulk import of 1M rows spent 3.6 s in the kernel on mimalloc
# against 1.2 s on the system pool (pages of freed chunks returned and faulted in again), for
# 0.22–0.29M against 0.38–0.42M rows/s; of 5M rows, CSV 0.28M against 0.34M rows/s, Parquet
# alike (0.48M) (bench/sources.py; the batch build: no difference).
ALLOCATOR_ENV = {"MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system"}


def use_allocator() -> None:
    """Make this process's default Arrow memory pool the one :data:`ALLOCATOR_ENV` names,
    unless the environment names one (``ARROW_DEFAULT_MEMORY_POOL``, which pyarrow read at
    import). Arrays allocated before keep their pool. ``MALLOC_ARENA_MAX`` only applies to a
    process started with it (glibc reads it once), so it stays a child's setting."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        import pyarrow as pa

        pa.set_memory_pool(getattr(pa, f"{ALLOCATOR_ENV['ARROW_DEFAULT_MEMORY_POOL']}_memory_pool")())


def child_env(home: Home) -> dict[str, str]:
    """The environment of a child of ``up``: this process's, ``HEADWATER_HOME`` = ``home`` and
    the :data:`ALLOCATOR_ENV` defaults."""
    return {**ALLOCATOR_ENV, **os.environ, "HEADWATER_HOME": str(home.root)}


def spawn(home: Home, *args: str) -> subprocess.Popen:
    """Start ``python -m headwater <args>`` in :func:`child_env` of ``home``."""
    return subprocess.Popen([sys.executable, "-m", "headwater", *args], env=child_env(home))


_LOOPBACK_TLS = ssl.create_default_context()
_LOOPBACK_TLS.check_hostname = False
_LOOPBACK_TLS.verify_mode = ssl.CERT_NONE


def wait_http(url: str, timeout_s: float = 30.0, proc: subprocess.Popen | None = None,
              statuses: tuple[int, ...] = (200,)) -> None:
    """Poll ``url`` until it answers with one of ``statuses``; ``RuntimeError`` on timeout or if ``proc`` exits
    (with the process's output when it was piped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            out = out.decode(errors="replace") if isinstance(out, bytes) else out
            raise RuntimeError(f"process exited with code {proc.returncode} before {url} answered\n{out}")
        try:
            # The probe is on loopback: a self-signed production certificate must not fail it.
            with urllib.request.urlopen(url, timeout=1, context=_LOOPBACK_TLS) as r:
                if r.status in statuses:
                    return
        except urllib.error.HTTPError as e:
            if e.code in statuses:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def lag(home: Home) -> int:
    """Events in the log not yet committed by the bronze query (both topics, all partitions)."""
    return sum(t["lag"] for t in log_offsets(home).values())


@dataclass
class Backoff:
    """Restart delays of one child: ``base_s`` doubling per exit up to ``max_s``; a child that
    ran ``healthy_s`` or longer (default ``max_s``) before it exited starts over at ``base_s``."""

    max_s: float
    base_s: float = 1.0
    healthy_s: float | None = None
    failures: int = 0  # exits in a row, each after a short run

    def delay(self, ran_s: float) -> float:
        """Seconds to wait before restarting a child that exited after running ``ran_s`` s."""
        if ran_s >= (self.max_s if self.healthy_s is None else self.healthy_s):
            self.failures = 0
        delay = min(self.max_s, self.base_s * 2 ** min(self.failures, 62))
        self.failures += 1
        return delay


@dataclass
class Platform:
    """Collector (HTTP on 127.0.0.1:``port``: :attr:`collectors`, ``collector.workers``
    processes sharing the port) + stream processor, as supervised children; with
    ``dagster_port`` also Dagster's code server with its daemon, and its UI (:mod:`headwater.orchestrate.server`:
    the UI on a socket this process listens on from :meth:`start` to :meth:`stop`, started on its
    first connection with setting ``dagster.ui = "on_demand"``); with
    ``stream=False`` the collector's workers alone (``headwater collector``)."""

    home: Home
    port: int
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    dagster_port: int | None = None
    started: dict[str, float] = field(default_factory=dict)  # name -> time.monotonic() of its start
    stream: bool = True
    _stopped: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # starts vs stop()
    _grpc_port: int = field(default_factory=free_port, repr=False)  # Dagster's code server
    _ui: socket.socket | None = field(default=None, repr=False)  # the Dagster UI's listening socket

    @property
    def collectors(self) -> list[str]:
        """The names of the collector's worker processes: ``collector``, ``collector-1``, …"""
        return ["collector" if i == 0 else f"collector-{i}" for i in range(self.home.settings.collector.worker_count)]

    @property
    def dagster_url(self) -> str | None:
        return f"http://127.0.0.1:{self.dagster_port}" if self.dagster_port else None

    @property
    def url(self) -> str:
        """The collector's base URL: ``https://`` when ``collector.tls_certfile`` is set."""
        scheme = "https" if self.home.settings.collector.tls_certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self) -> "Platform":
        """Start the children and wait for the collector; :class:`TransientError` (children
        stopped) if a port is taken or the collector does not come up."""
        with socket.socket() as s:
            # A listener on the port fails this, connections of an earlier run in TIME_WAIT do not
            # (SO_REUSEADDR); the workers then share the port (headwater.collector.server).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError as e:
                raise TransientError(f"collector cannot listen on {self.url}: {e.strerror}", field="collector.port") from None
        if self.dagster_port:
            ui = socket.socket()
            try:
                ui.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
                ui.bind(("127.0.0.1", self.dagster_port))
                ui.listen(128)
            except OSError as e:
                ui.close()
                raise TransientError(f"Dagster UI cannot listen on {self.dagster_url}: {e.strerror}", field="dagster.port") from None
            self._ui = ui
        for name in self.collectors:
            self._start(name)
        if self.stream:
            self._start("stream")
        try:
            # Serving is enough: a 503 (say, a disk over collector.max_disk_used) is the
            # collector's to report, and must not stop the rest of the platform starting.
            wait_http(self.url + "/health", proc=self.procs["collector"], statuses=(200, 503))
        except RuntimeError as e:
            self.stop()
            raise TransientError(f"collector did not start on {self.url}: {e}") from None
        if self.dagster_port:  # after the collector: its start is what clients wait for
            threading.Thread(target=self._start_dagster, name="dagster-start", daemon=True).start()
        return self

    def _start_dagster(self) -> None:
        """Dagster's storage (once), its code server with the daemon, then, once that listens,
        the UI (earlier, it would log that it cannot reach it); in a thread, so that ``up``
        does not wait for Dagster. A restart of one of them later needs none of this."""
        from headwater.orchestrate import server

        try:
            server.prepare(self.home)
        except subprocess.CalledProcessError as e:
            log.error("Dagster's storage could not be created (exit code %s): Dagster is not started", e.returncode)
            return
        self._start("dagster")
        while not server.listening(self._grpc_port) and not self._stopped.wait(0.2):
            pass
        if self.home.settings.dagster.ui == "always" or self._ui_demanded():
            self._start("dagster-ui")

    def _ui_demanded(self) -> bool:
        """Block until a connection waits in the queue of the Dagster UI's socket (``True``: the
        UI accepts it once started) or :meth:`stop` (``False``)."""
        while not self._stopped.is_set():
            try:
                if select.select([self._ui], [], [], 0.5)[0]:
                    return True
            except (OSError, ValueError):  # the socket closed by stop() meanwhile
                break
        return False

    def start_component(self, name: str) -> None:
        if name.startswith("dagster"):  # server.COMPONENTS
            from headwater.orchestrate import server

            self.procs[name] = server.spawn(self.home, name, self._grpc_port, self._ui, env=child_env(self.home))
            return
        # A collector worker joins the port's SO_REUSEPORT group and exits with this process.
        args = ["stream"] if name == "stream" else ["collector", "--port", str(self.port), "--worker-of", str(os.getpid())]
        self.procs[name] = spawn(self.home, *args)

    def _start(self, name: str) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self.start_component(name)
            self.started[name] = time.monotonic()

    def supervise(self, stop: threading.Event | None = None, heartbeat: Callable[[str], None] | None = None) -> None:
        """Restart a child that exited, after its :class:`Backoff` delay (logged with its exit
        code, at WARNING); returns when ``stop`` is set or on KeyboardInterrupt. With
        ``heartbeat``, a thread passes it the :mod:`headwater.serve.heartbeat` line every
        :data:`~headwater.serve.heartbeat.HEARTBEAT_S` seconds meanwhile (its reads never delay
        a restart)."""
        stop = stop or threading.Event()
        if heartbeat is not None:
            threading.Thread(target=Heartbeat(self.home).run, args=(stop, heartbeat), name="heartbeat", daemon=True).start()
        max_s = self.home.settings.stream.restart_backoff_max_s
        backoffs: dict[str, Backoff] = defaultdict(lambda: Backoff(max_s))  # Dagster's join later
        due: dict[str, float] = {}  # name -> monotonic time of its restart
        try:
            while not stop.is_set():
                now = time.monotonic()
                for name, proc in list(self.procs.items()):
                    if name in due:
                        if now >= due[name]:
                            del due[name]
                            self._start(name)
                    elif proc.poll() is not None:
                        delay = backoffs[name].delay(now - self.started.get(name, now))
                        due[name] = now + delay
                        log.warning("%s exited with code %s; restarting in %.0f s (%d exits in a row)",
                                    name, proc.returncode, delay, backoffs[name].failures)
                stop.wait(POLL_S)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()  # ends the heartbeat

    def wait_caught_up(self, timeout_s: float = 300.0, on_lag=None) -> None:
        """Block until the stream has committed everything in the log; ``TimeoutError`` otherwise."""
        deadline = time.monotonic() + timeout_s
        while (remaining := lag(self.home)) > 0:
            if on_lag:
                on_lag(remaining)
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream still {remaining} events behind after {timeout_s:.0f} s")
            if self.procs["stream"].poll() is not None:
                raise RuntimeError(f"stream processor exited with code {self.procs['stream'].returncode}")
            time.sleep(0.2)
        if on_lag:
            on_lag(0)

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()  # nothing starts after this
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._ui is not None:
            self._ui.close()
