"""Serving Dagster for a home: the code server with the daemon, and the UI, on 127.0.0.1.

Two processes, each a supervised child of ``headwater up`` (:data:`COMPONENTS`):

- ``dagster``: Dagster's code server (``dagster api grpc -m headwater.orchestrate.location``, the
  one process that imports headwater's definitions: :mod:`headwater.orchestrate.location`) with
  Dagster's daemon (schedules, sensors, the run queue, backfills launched from the UI) in a
  thread of the same process (:func:`dagster_code_server_with_daemon`);
- ``dagster-ui``: ``dagster-webserver`` — the UI and its GraphQL API, on the port of the
  setting ``dagster.port``: on a listening socket the supervisor holds and passes down
  (:func:`dagster_webserver`), so that with setting ``dagster.ui = "on_demand"`` (the default)
  the UI process (~150 MB) starts only when its first connection is waiting in that socket's
  queue, and serves it: the first page takes the few seconds the start takes, no connection
  is refused meanwhile. ``always`` starts it with the others.

The daemon and the UI reach the definitions through the code server (``--grpc-host`` /
``--grpc-port``), as in Dagster's documented deployment with a gRPC server of one's own, so
neither loads the code itself. The daemon is a client of that server like any other, only in
its process: as a process of its own it held 132 MB resident (Python, Dagster, gRPC and its
storage's SQLAlchemy, all loaded by the code server anyway); the two in one process held 232
MB idle and 286 MB at the peak of 60 s at 5,000 events/s, where they had held 222 + 132 and
275 + 133 MB (``bench/footprint.py --peer-rev``, one run). Runs still execute in a process each, started by the
code server (Dagster's ``DefaultRunLauncher``). ``dagster dev`` would run five processes (a
supervising process, a code-server proxy with a child of its own, the daemon and the UI), and
it is superseded (by ``dg dev``, which says so on the console). With
``DAGSTER_HOME`` set, both keep their state in the home's SQLite storage
(:mod:`headwater.orchestrate.instance`); :func:`prepare` creates it once, before the daemon and
the UI start side by side (each would create a missing storage, and two at once corrupt its
migration table).
"""

from __future__ import annotations

import _thread
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.orchestrate.instance import dagster_home
from headwater.spark import defer_pandas

COMPONENTS = ("dagster", "dagster-ui")
LOG_LEVEL = "warning"
LOCATION = "headwater"  # the code location's name
log = logging.getLogger("headwater.orchestrate.server")


def _default_sigint() -> None:
    # A process started from a background job inherits SIGINT *ignored*; Dagster's processes
    # stop cleanly on KeyboardInterrupt, which Python installs only with the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(home: Home, env: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**(os.environ if env is None else env), "HEADWATER_HOME": str(home.root), "DAGSTER_HOME": str(dagster_home(home))}


def prepare(home: Home) -> None:
    """Create ``home``'s Dagster storage if it is missing, in a short-lived process (the caller
    need not import Dagster); ``subprocess.CalledProcessError`` if that fails."""
    if not (dagster_home(home) / "storage").exists():
        code = "from headwater.config import Home; from headwater.orchestrate.instance import instance; instance(Home.from_env()).dispose()"
        subprocess.run([sys.executable, "-c", code], env=_env(home), check=True)


def spawn(home: Home, component: str, grpc_port: int, ui: socket.socket | None = None,
          env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Start ``component`` (one of :data:`COMPONENTS`) for ``home``: the code server on
    ``127.0.0.1:<grpc_port>`` with the daemon, or the UI on ``ui``, a listening TCP socket (the
    child inherits it); SIGTERM or SIGINT stops it. ``env``: the child's environment (default
    this process's), to which ``HEADWATER_HOME`` and ``DAGSTER_HOME`` are added."""
    env = _env(home, env)
    if component == "dagster":
        code = f"from headwater.orchestrate.server import dagster_code_server_with_daemon; dagster_code_server_with_daemon({grpc_port})"
        return subprocess.Popen([sys.executable, "-c", code], env=env, preexec_fn=_default_sigint)
    if component != "dagster-ui":
        raise InvalidInputError(f"no Dagster component {component!r} (one of {', '.join(COMPONENTS)})", field="component")
    if ui is None:
        raise InvalidInputError("dagster-ui is served on a listening socket: none given", field="dagster.port")
    host, port = ui.getsockname()[:2]
    code = f"from headwater.orchestrate.server import dagster_webserver; dagster_webserver({ui.fileno()})"
    cmd = ["-c", code, "--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port), "-h", host, "-p", str(port),
           "--dagster-log-level", LOG_LEVEL]
    return subprocess.Popen([sys.executable, *cmd], env=env, preexec_fn=_default_sigint, pass_fds=(ui.fileno(),))


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:<port>``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def dagster_code_server_with_daemon(grpc_port: int) -> None:
    """Serve the code location on ``127.0.0.1:<grpc_port>`` (``dagster api grpc``'s command, in
    this thread: it maps SIGTERM to KeyboardInterrupt, which Python delivers to the main thread
    only) and run Dagster's daemon against it in a thread (what ``dagster-daemon run --grpc-host
    --grpc-port`` runs), once it listens. Returns when the server stops; a daemon that fails
    stops the server, so that the process exits and ``up`` restarts both. pandas stays out of
    the process as out of the ``headwater`` program's (:func:`headwater.spark.defer_pandas`):
    its sensors read tables through pyarrow."""
    defer_pandas()
    from dagster._cli.api import grpc_command

    threading.Thread(target=_daemon, args=(grpc_port,), name="dagster-daemon", daemon=True).start()
    grpc_command.main(["-m", "headwater.orchestrate.location", "--location-name", LOCATION, "-h", "127.0.0.1",
                       "-p", str(grpc_port), "--log-level", LOG_LEVEL], prog_name="dagster api grpc", standalone_mode=False)


def _daemon(grpc_port: int) -> None:
    from dagster import DagsterInstance
    from dagster._core.workspace.load_target import GrpcServerTarget
    from dagster._daemon.controller import daemon_controller_from_instance

    try:
        while not listening(grpc_port):  # earlier, the daemon would log that it cannot reach the code
            time.sleep(0.2)
        target = GrpcServerTarget(host="127.0.0.1", port=grpc_port, socket=None, location_name=LOCATION)
        with DagsterInstance.get() as instance, daemon_controller_from_instance(
                instance, workspace_load_target=target, log_level=LOG_LEVEL, code_server_log_level=LOG_LEVEL) as controller:
            controller.check_daemon_loop()  # returns only by raising: a daemon thread stopped beating
    except Exception:  # noqa: BLE001 - any failure: logged, and the process restarted by `up`
        log.exception("Dagster's daemon stopped; stopping the code server")
    _thread.interrupt_main()


def dagster_webserver(fd: int) -> None:
    """Run ``dagster-webserver`` with this process's command-line arguments (``sys.argv[1:]``)
    on the listening socket ``fd`` instead of a socket of its own. Its CLI serves with
    ``uvicorn.run(app, host=, port=, ...)``; that call is routed to ``uvicorn.Server.run`` with
    the socket (uvicorn's documented way to serve an existing socket; ``host``/``port`` then only
    name it in the log). Connections that waited in the socket's queue before are served."""
    import uvicorn
    from dagster_webserver.cli import main

    def run(app, **config) -> None:
        uvicorn.Server(uvicorn.Config(app, **config)).run(sockets=[socket.socket(fileno=fd)])

    uvicorn.run = run
    sys.argv[0] = "dagster-webserver"
    main()
