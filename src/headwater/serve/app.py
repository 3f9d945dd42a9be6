"""The server's composition: the collector's routes plus the query API under ``/api``.

Serving sits above the collector (import-linter layers), so the composition is here: the
collector's app (:func:`headwater.collector.app.create_app`) stays usable alone, and
``headwater collector`` / ``headwater up`` serve :func:`mounts` beside it on ``collector.port``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount

from headwater.config import Home
from headwater.serve.api import create_api

API_PREFIX = "/api"


def mounts(home: Home) -> list[BaseRoute]:
    """Routes served beside the collector's: the query API at ``/api`` (OpenAPI at
    ``/api/openapi.json``, docs at ``/api/docs``)."""
    return [Mount(API_PREFIX, app=create_api(home))]
