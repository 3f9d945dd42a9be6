"""Serving Dagster for a home: one code server, the daemon and the UI, on 127.0.0.1.

Three processes, each a supervised child of ``headwater up`` (:data:`COMPONENTS`):

- ``dagster-code``: ``dagster api grpc -m headwater.orchestrate.location`` — the code server,
  the one process that imports headwater's definitions (:mod:`headwater.orchestrate.location`);
- ``dagster-daemon``: ``dagster-daemon run`` — schedules, sensors, the run queue, backfills
  launched from the UI;
- ``dagster-ui``: ``dagster-webserver`` — the UI and its GraphQL API, on the port of the
  setting ``dagster.port``.

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
import subprocess
import sys

from headwater.config import Home
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


def spawn(home: Home, component: str, grpc_port: int, ui_port: int) -> subprocess.Popen:
    """Start ``component`` (one of :data:`COMPONENTS`) for ``home``: the code server on
    ``127.0.0.1:<grpc_port>``, the daemon, or the UI on ``http://127.0.0.1:<ui_port>``; SIGTERM
    or SIGINT stops it."""
    grpc = ["--grpc-host", "127.0.0.1", "--grpc-port", str(grpc_port)]
    cmd = {
        "dagster-code": ["-m", "dagster", "api", "grpc", "-m", "headwater.orchestrate.location", "--location-name", "headwater",
                         "-h", "127.0.0.1", "-p", str(grpc_port), "--log-level", LOG_LEVEL],
        "dagster-daemon": ["-m", "dagster._daemon", "run", *grpc, "--log-level", LOG_LEVEL],
        "dagster-ui": ["-m", "dagster_webserver", *grpc, "-h", "127.0.0.1", "-p", str(ui_port), "--dagster-log-level", LOG_LEVEL],
    }[component]
    return subprocess.Popen([sys.executable, *cmd], env=_env(home), preexec_fn=_default_sigint)
