"""The server's composition: the collector's routes plus the query API under ``/api`` and the
web dashboard under ``/dashboard`` (``/`` redirects to it).

Serving sits above the collector (import-linter layers), so the composition is here: the
collector's app (:func:`headwater.collector.app.create_app`) stays usable alone, and
``headwater collector`` / ``headwater up`` serve :func:`mounts` beside it on ``collector.port``.

Both are mounted lazily (:class:`Lazy`): a collector worker process imports the read path
(DuckDB, Polars, delta-rs, FastAPI: ~70 MB of resident memory per process) only when it is
first asked for ``/api`` or ``/dashboard``, so the workers of an installation that only
collects stay small. That first request pays the imports (~1 s), off the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio.to_thread
from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from headwater.config import Home

API_PREFIX = "/api"
DASHBOARD_PREFIX = "/dashboard"


class Lazy:
    """An ASGI app that ``build`` returns on the first request, then serves every request.

    The build runs in a worker thread (the event loop keeps serving the collector's routes
    meanwhile), once: concurrent first requests wait for the one build. A build that raises
    fails that request (a 500) and is tried again by the next one. Mounted apps get no ASGI
    lifespan events (Starlette sends them to the top-level app only), so nothing is lost by
    building late."""

    def __init__(self, build: Callable[[], ASGIApp]):
        self._build = build
        self._app: ASGIApp | None = None
        self._lock = threading.Lock()

    def _get(self) -> ASGIApp:
        with self._lock:
            if self._app is None:
                self._app = self._build()
            return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self._app or await anyio.to_thread.run_sync(self._get)
        await app(scope, receive, send)


def _api(home: Home) -> ASGIApp:
    from headwater.lake import sql as lake_sql
    from headwater.lake.store import Lake
    from headwater.serve.api import create_api

    app = create_api(home)
    # The read path's one-time costs (the Arrow dataset module, a pooled connection) here,
    # with the imports, rather than in the request after.
    lake_sql.warm(Lake.of(home))
    return app


def _dashboard(home: Home) -> ASGIApp:
    from headwater.serve.dashboard.web import create_dashboard

    return create_dashboard(home)


def mounts(home: Home) -> list[BaseRoute]:
    """Routes served beside the collector's: the query API at ``/api`` (OpenAPI at
    ``/api/openapi.json``, docs at ``/api/docs``) and the dashboard at ``/dashboard``, each
    built on its first request (:class:`Lazy`)."""
    return [Mount(API_PREFIX, app=Lazy(lambda: _api(home))), Mount(DASHBOARD_PREFIX, app=Lazy(lambda: _dashboard(home))),
            Route("/", lambda request: RedirectResponse(DASHBOARD_PREFIX + "/", status_code=303), methods=["GET"])]
