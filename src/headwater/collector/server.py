"""Running the collector: uvicorn (uvloop event loop, httptools HTTP parser) in this process.

One process, one event loop: request decoding is CPU-bound Python, so more worker
processes would only compete for the same cores with the stream processor; durability
waits (fsync) happen on the group-commit thread and do not block the loop.
"""

from __future__ import annotations

from collections.abc import Callable

from headwater.collector.app import create_app
from headwater.collector.collector import Collector
from headwater.config import Home
from headwater.log.base import EventLog


def serve(home: Home, host: str = "127.0.0.1", port: int | None = None, log: EventLog | None = None,
          metrics: Callable[[], bytes] | None = None) -> None:
    """Serve the collector on ``host:port`` until SIGINT/SIGTERM (blocks).

    ``port`` defaults to the setting ``collector.port`` (8088); ``metrics`` renders
    ``GET /metrics`` (see :func:`~.app.create_app`); ``log`` defaults to the log at
    ``home.settings.log_url`` (sqlite: WAL checkpoints on a background thread, not in appends).
    Uvicorn runs with ``log_level="warning"`` and no access log (one line per request
    would cost more than decoding it). On shutdown the pending log appends are committed
    before the process exits."""
    import uvicorn

    if log is None:
        from headwater.log import open_log

        log = open_log(home.settings.log_url, background_checkpoint_s=1.0)
    app = create_app(Collector.from_home(home, log), metrics)
    uvicorn.run(
        app,
        host=host,
        port=port or home.settings.collector.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )
