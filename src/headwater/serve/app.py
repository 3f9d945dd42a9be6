"""The server's composition: the collector's routes plus the query API under ``/api`` and the
web dashboard under ``/dashboard`` (``/`` redirects to it).

Serving sits above the collector (import-linter layers), so the composition is here: the
collector's app (:func:`headwater.collector.app.create_app`) stays usable alone, and
``headwater collector`` / ``headwater up`` serve :func:`mounts` beside it on ``collector.port``.
"""

from __future__ import annotations

import threading

from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route

from headwater.config import Home
from headwater.lake import sql as lake_sql
from headwater.lake.store import Lake
from headwater.serve.api import create_api
from headwater.serve.dashboard.web import create_dashboard

API_PREFIX = "/api"
DASHBOARD_PREFIX = "/dashboard"


def mounts(home: Home) -> list[BaseRoute]:
    """Routes served beside the collector's: the query API at ``/api`` (OpenAPI at
    ``/api/openapi.json``, docs at ``/api/docs``) and the dashboard at ``/dashboard``.

    The lake's read path is warmed on a thread meanwhile (:func:`headwater.lake.sql.warm`),
    so that the first metric request of each worker process does not pay ~1 s of imports."""
    threading.Thread(target=lake_sql.warm, args=(Lake.of(home),), name="headwater-warm-read", daemon=True).start()
    return [Mount(API_PREFIX, app=create_api(home)), Mount(DASHBOARD_PREFIX, app=create_dashboard(home)),
            Route("/", lambda request: RedirectResponse(DASHBOARD_PREFIX + "/", status_code=303), methods=["GET"])]
