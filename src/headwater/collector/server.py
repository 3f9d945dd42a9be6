"""Running the collector: one worker — uvicorn (uvloop event loop, httptools HTTP parser) — per process.

Request decoding is CPU-bound Python under one GIL, so a process serves at most one core:
setting ``collector.workers`` (default: the core count) processes serve one port together,
each with its own event loop, group-commit writer (durability waits, fsync, happen on that
thread and never block the loop) and load monitor, over the one shared event log. SQLite
serialises their transactions (``BEGIN IMMEDIATE`` reads and advances a partition's end
offset under the database's write lock), so offsets stay dense, unique and in commit order
per partition whichever process appends. :func:`serve` runs one worker in this process; a
supervisor (:class:`headwater.runtime.Platform`, for ``headwater collector`` and ``headwater
up``) starts several with ``worker_of`` and restarts one that exits.

Sharing the port: each worker binds its own socket with ``SO_REUSEPORT`` and the kernel
spreads new connections over the listening sockets by a hash of their addresses. Chosen over
one socket bound by the supervisor and inherited by forked workers (gunicorn's and uvicorn's
``--workers``) for balance: with one accept queue, the worker whose loop wakes first accepts
every connection pending (libuv drains the queue), so a burst of long-lived keep-alive
connections — SDKs, a load balancer — can all land on one worker while the others idle.
What it costs: connections still waiting in a worker's accept queue when it dies are reset
(with either model, the connections it had accepted die with it); the SDKs retry them, and
none was acknowledged. A socket joins the group only when its worker listens, which uvloop
does once the ASGI lifespan has started, so a starting worker is never handed a connection;
an exited one leaves the group and the others take every new connection. Linux admits only
sockets of the same user into a group, and the supervisor first checks that nothing listens
on the port, so a second installation on the port fails instead of sharing it.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence

from starlette.routing import BaseRoute

from headwater.collector.app import create_app
from headwater.collector.collector import Collector
from headwater.config import Home
from headwater.errors import InvalidInputError, TransientError
from headwater.log.base import EventLog
from headwater.settings import CollectorSettings

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def serve(home: Home, host: str = "127.0.0.1", port: int | None = None, log: EventLog | None = None,
          metrics: Callable[[], bytes] | None = None, mounts: Sequence[BaseRoute] = (), *,
          worker_of: int | None = None) -> None:
    """Serve the collector on ``host:port`` in this process until SIGINT/SIGTERM (blocks).

    ``port`` defaults to the setting ``collector.port`` (8088); ``metrics`` renders
    ``GET /metrics`` and ``mounts`` are more routes (see :func:`~.app.create_app`); ``log`` defaults to the log at
    ``home.settings.log_url``, opened as an appender named by :func:`_appender_name` (sqlite: WAL
    checkpoints on a background thread, not in appends; kafka: the transactional.id).
    Uvicorn runs with ``log_level="warning"`` and no access log (one line per request
    would cost more than decoding it). On shutdown the pending log appends are committed
    before the process exits.

    ``worker_of``: the pid of the supervisor that started this process as one of its
    workers: the socket joins the port's ``SO_REUSEPORT`` group (module doc) and the process
    ends with its supervisor (:func:`_end_with`). Without it the port must be free.

    TLS (production): settings ``collector.tls_certfile`` / ``collector.tls_keyfile`` (PEM)
    are passed to uvicorn as ``ssl_certfile`` / ``ssl_keyfile``, and the collector then
    speaks HTTPS only; :class:`~headwater.errors.InvalidInputError` naming the setting if
    only one is set or a file is missing. :class:`~headwater.errors.TransientError` naming
    ``collector.port`` when the port cannot be bound."""
    import uvicorn

    if worker_of is not None:
        _end_with(worker_of)
    tls = _tls(home.settings.collector)
    port = port or home.settings.collector.port
    sock = bind(host, port, reuse_port=worker_of is not None)
    if log is None:
        from headwater.log import open_log

        log = open_log(home.settings.log_url, appender=_appender_name(home))
    app = create_app(Collector.from_home(home, log), metrics, mounts)
    config = uvicorn.Config(app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on", log_level="warning",
                            access_log=False, server_header=False, date_header=False, **tls)
    uvicorn.Server(config).run(sockets=[sock])


def _appender_name(home: Home) -> str:
    """``collector-<host>-<slot>``: this process's name as an appender of the event log (see
    :func:`headwater.log.open_log`), stable across restarts and unique among the collector
    processes of ``home`` running at once. The slot is the lowest N whose
    ``<home>/run/collector-N.lock`` this process can ``flock``; the lock is held for the
    process's life (its descriptor is never closed) and released by the kernel when it dies, so
    a restarted worker takes the slot of the one that died and fences what it left open."""
    run = home.root / "run"
    run.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        fd = os.open(run / f"collector-{slot}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return f"collector-{socket.gethostname()}-{slot}"
        except BlockingIOError:
            os.close(fd)
            slot += 1


def bind(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port``, not yet listening: uvicorn listens once the app
    has started (``reuse_port``: join the port's ``SO_REUSEPORT`` group, module doc).
    ``SO_REUSEADDR`` as uvicorn sets it: connections of an earlier run in TIME_WAIT do not
    block a restart, a socket listening on the port does. :class:`TransientError` naming
    ``collector.port`` if the port is taken."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise TransientError(f"collector cannot listen on {host}:{port}: {e.strerror}", field="collector.port") from None
    return sock


def _end_with(supervisor: int) -> None:
    """Have the kernel SIGKILL this process when the thread that started it exits (Linux
    ``PR_SET_PDEATHSIG``); exit at once if ``supervisor`` is already gone.

    A supervisor stops its workers with SIGTERM (uvicorn's graceful shutdown) before it exits;
    this is for the supervisor that cannot, killed with SIGKILL itself: its workers die the same
    way at once, so none is left holding the port when it is started again (a graceful
    shutdown could still be listening then), and the collector as a whole has been killed —
    what it answered 200 is durable, the requests it was handling are retried by the SDKs.
    Elsewhere than Linux a no-op: a SIGKILL of the supervisor orphans its workers."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        logger.warning("collector worker: PR_SET_PDEATHSIG failed (errno %d); it may outlive its supervisor", ctypes.get_errno())
    if os.getppid() != supervisor:  # it died before the call above: no signal will come
        raise SystemExit(f"collector worker: supervisor {supervisor} has exited")


def _tls(c: CollectorSettings) -> dict[str, str]:
    """uvicorn's TLS arguments from the settings (``{}``: plain HTTP)."""
    if c.tls_certfile is None and c.tls_keyfile is None:
        return {}
    if c.tls_certfile is None or c.tls_keyfile is None:
        missing = "collector.tls_certfile" if c.tls_certfile is None else "collector.tls_keyfile"
        raise InvalidInputError(f"{missing}: set both collector.tls_certfile and collector.tls_keyfile, or neither", field=missing)
    for key, path in (("collector.tls_certfile", c.tls_certfile), ("collector.tls_keyfile", c.tls_keyfile)):
        if not path.is_file():
            raise InvalidInputError(f"{key}: no such file {path}", field=key)
    return {"ssl_certfile": str(c.tls_certfile), "ssl_keyfile": str(c.tls_keyfile)}
