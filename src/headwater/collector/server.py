"""Running the collector: uvicorn (uvloop event loop, httptools HTTP parser) in this process.

One process, one event loop: request decoding is CPU-bound Python, so more worker
processes would only compete for the same cores with the stream processor; durability
waits (fsync) happen on the group-commit thread and do not block the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.routing import BaseRoute

from headwater.collector.app import create_app
from headwater.collector.collector import Collector
from headwater.config import Home
from headwater.errors import InvalidInputError
from headwater.log.base import EventLog
from headwater.settings import CollectorSettings


def serve(home: Home, host: str = "127.0.0.1", port: int | None = None, log: EventLog | None = None,
          metrics: Callable[[], bytes] | None = None, mounts: Sequence[BaseRoute] = ()) -> None:
    """Serve the collector on ``host:port`` until SIGINT/SIGTERM (blocks).

    ``port`` defaults to the setting ``collector.port`` (8088); ``metrics`` renders
    ``GET /metrics`` and ``mounts`` are more routes (see :func:`~.app.create_app`); ``log`` defaults to the log at
    ``home.settings.log_url`` (sqlite: WAL checkpoints on a background thread, not in appends).
    Uvicorn runs with ``log_level="warning"`` and no access log (one line per request
    would cost more than decoding it). On shutdown the pending log appends are committed
    before the process exits.

    TLS (production): settings ``collector.tls_certfile`` / ``collector.tls_keyfile`` (PEM)
    are passed to uvicorn as ``ssl_certfile`` / ``ssl_keyfile``, and the collector then
    speaks HTTPS only; :class:`~headwater.errors.InvalidInputError` naming the setting if
    only one is set or a file is missing."""
    import uvicorn

    if log is None:
        from headwater.log import open_log

        log = open_log(home.settings.log_url, background_checkpoint_s=1.0)
    tls = _tls(home.settings.collector)
    app = create_app(Collector.from_home(home, log), metrics, mounts)
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
        **tls,
    )


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
