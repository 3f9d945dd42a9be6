"""The server's composition: the collector's routes plus the query API under ``/api`` and the
web dashboard under ``/dashboard`` (``/`` redirects to it).

Serving sits above the collector (import-linter layers), so the composition is here: the
collector's app (:func:`headwater.collector.app.create_app`) stays usable alone, and
``headwater collector`` / ``headwater up`` serve :func:`mounts` beside it on ``collector.port``.
"""

from __future__ import annotations

from starlette.responses import RedirectResponse
from starlette.routing import BaseRoute, Mount, Route

from headwater.config import Home
from headwater.serve.api import create_api
from headwater.serve.dashboard.web import create_dashboard

API_PREFIX = "/api"
DASHBOARD_PREFIX = "/dashboard"


def mounts(home: Home) -> list[BaseRoute]:
    """Routes served beside the collector's: the query API at ``/api`` (OpenAPI at
    ``/api/openapi.json``, docs at ``/api/docs``) and the dashboard at ``/dashboard``."""
    return [Mount(API_PREFIX, app=create_api(home)), Mount(DASHBOARD_PREFIX, app=create_dashboard(home)),
            Route("/", lambda request: RedirectResponse(DASHBOARD_PREFIX + "/", status_code=303), methods=["GET"])]
