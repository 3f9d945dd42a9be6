"""Serving the Dagster UI and daemon for a home: ``dagster dev`` on 127.0.0.1.

``dagster dev`` is Dagster's single-machine deployment: ``dagster-webserver`` (the UI and its
GraphQL API) and ``dagster-daemon`` (schedules, sensors, the run queue, backfills launched
from the UI) sharing one code server that loads :mod:`headwater.orchestrate.location`. With
``DAGSTER_HOME`` set it keeps its state in that home's SQLite storage
(:mod:`headwater.orchestrate.instance`). ``headwater up`` runs it as one more supervised child,
on the port of the setting ``dagster.port`` (a free one if unset).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from headwater.config import Home
from headwater.orchestrate.instance import dagster_home


def _default_sigint() -> None:
    # dagster dev maps SIGTERM onto its SIGINT handler; a process started from a background
    # job inherits SIGINT *ignored*, and then SIGTERM would be ignored too (observed: it never
    # exits). With the default disposition Python installs KeyboardInterrupt, which dagster dev
    # turns into a clean shutdown of the webserver, the daemon and the code server.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(home: Home, port: int) -> subprocess.Popen:
    """Start ``dagster dev`` for ``home`` on ``http://127.0.0.1:<port>`` (UI + daemon); SIGTERM
    or SIGINT stops it and its children."""
    env = {**os.environ, "HEADWATER_HOME": str(home.root), "DAGSTER_HOME": str(dagster_home(home))}
    cmd = [
        sys.executable, "-m", "dagster", "dev",
        "-m", "headwater.orchestrate.location",
        "-h", "127.0.0.1", "-p", str(port),
        "--log-level", "warning",
    ]
    return subprocess.Popen(cmd, env=env, preexec_fn=_default_sigint)
