"""Serving Dagster for a home: one code server, the daemon and the UI, on 127.0.0.1.

Three processes, each a supervised child of ``headwater up`` (:data:`COMPONENTS`):

- ``dagster-code``: ``dagster api grpc -m headwater.orchestrate.location`` — the code server,
  the one process that imports headwater's definitions (:mod:`headwater.orchestrate.location`);
- ``dagster-daemon``: ``dagster-daemon run`` — schedules, sensors, the run queue, backfills
  launched from the UI;
- ``dagster-ui``: ``dagster-webserver`` — the UI and its GraphQL API, on the port of the
  setting ``dagster.port``: on a listening socket the supervisor holds and passes down
  (:func:`dagster_webserver`), so that with setting ``dagster.ui = "on_demand"`` (the default)
  the UI process (~150 MB) starts only when its first connection is waiting in that socket's
  queue, and serves it: the first page takes the few seconds the start takes, no connection
  is refused meanwhile. ``always`` starts it with the others.

The daemon and the UI reach the definitions through the code server (``--grpc-host`` /
``--grpc-port``), as in Dagster's documented deployment with a gRPC server of one's own, so
neither loads the code itself. ``dagster dev`` would run the same two plus a supervising
process and a code-server proxy with a child of its own (five processes, ~0.2 GB more), and it
is superseded (by ``dg dev``, which says so on the console). With ``DAGSTER_HOME`` set, all
three keep their state in the home's SQLite storage (:mod:`headwater.orchestrate.instance`);
:func:`prepare` creates it once, before the daemon and the UI start side by side (each would
create a missing storage, and two at once corrupt its migration table).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.orchestrate.instance import dagster_home

COMPONENTS = ("dagster-code", "dagster-daemon", "dagster-ui")
LOG_LEVEL = "warning"


def _default_sigint() -> None:
    # A process started from a background job inherits SIGINT *ignored*; Dagster's processes
    # stop cleanly on KeyboardInterrupt, which Python installs only with the default disposition.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(home: Home) -> dict[str, str]:
    return {**os.environ, "HEADWATER_HOME": str(home.root), "DAGSTER_HOME": str(dagster_home(home))}


def prepare(home: Home) -> None:
    """Create ``home``'s Dagster storage if it is missing, in a short-lived process (the caller
    need not import Dagster); ``subprocess.CalledProcessError`` if that fails."""
    if not (dagster_home(home) / "storage").exists():
        code = "from headwater.config import Home; from headwater.orchestrate.instance import instance; instance(Home.from_env()).dispose()"
        subprocess.run([sys.executable, "-c", code], env=_env(home), check=True)


def spawn(home: Home, component: str, grpc_port: int, ui: socket.socket | None = None) -> subprocess.Popen:
    """Start ``component`` (one of :data:`COMPONENTS`) for ``home``: the code server on
    ``127.0.0.1:<grpc_port>``, the daemon, or the UI on ``ui``, a listening TCP socket (the
    child inherits it); SIGTERM or SIGINT stops it."""
    grpc = ["--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port)]
    if component == "dagster-ui":
        if ui is None:
            raise InvalidInputError("dagster-ui is served on a listening socket: none given", field="dagster.port")
        host, port = ui.getsockname()[:2]
        code = f"from headwater.orchestrate.server import dagster_webserver; dagster_webserver({ui.fileno()})"
        cmd = ["-c", code, *grpc, "-h", host, "-p", str(port), "--dagster-log-level", LOG_LEVEL]
        return subprocess.Popen([sys.executable, *cmd], env=_env(home), preexec_fn=_default_sigint, pass_fds=(ui.fileno(),))
    cmd = {
        "dagster-code": ["-m", "dagster", "api", "grpc", "-m", "headwater.orchestrate.location", "--location-name", "headwater",
                         "-h", "127.0.0.1", "-p", str(grpc_port), "--log-level", LOG_LEVEL],
        "dagster-daemon": ["-m", "dagster._daemon", "run", *grpc, "--log-level", LOG_LEVEL],
    }[component]
    return subprocess.Popen([sys.executable, *cmd], env=_env(home), preexec_fn=_default_sigint)


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
