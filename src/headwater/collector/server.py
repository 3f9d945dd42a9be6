"""Running the collector: uvicorn (uvloop event loop, httptools HTTP parser) in this process.

One process, one event loop: request decoding is CPU-bound Python, so more worker
processes would only compete for the same cores with the stream processor; durability
waits (fsync) happen on the group-commit thread and do not block the loop.
"""

from __future__ import annotations

from headwater.collector.app import create_app
from headwater.config import Home, port_from_env
from headwater.log.base import EventLog


def serve(home: Home, host: str = "127.0.0.1", port: int | None = None, log: EventLog | None = None) -> None:
    """Serve the collector on ``host:port`` until SIGINT/SIGTERM (blocks).

    ``port`` defaults to ``HEADWATER_PORT`` (8088); ``log`` to ``SqliteLog(home.log_path)``.
    Uvicorn runs with ``log_level="warning"`` and no access log (one line per request
    would cost more than decoding it). On shutdown the pending log appends are committed
    before the process exits."""
    import uvicorn

    if log is None:
        from headwater.log.sqlite import SqliteLog

        log = SqliteLog(home.log_path, background_checkpoint_s=1.0)
    app = create_app(home, log)
    uvicorn.run(
        app,
        host=host,
        port=port or port_from_env(),
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
    )
