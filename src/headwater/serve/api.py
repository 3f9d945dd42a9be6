"""The query API: metric endpoints and read-only SQL over HTTP (FastAPI), mounted at ``/api``.

Served on the collector's port (:mod:`headwater.serve.app` mounts it beside the collector's
routes); OpenAPI 3.1 at ``/api/openapi.json``, interactive docs at ``/api/docs`` — both
public, they show no data. The docs page is Swagger UI vendored into the package
(``serve/static/vendor/swagger-ui``, swagger-ui-dist 5.36.0 from npm, Apache-2.0), so it works
without internet.

Auth: every other route needs ``Authorization: Bearer <read token>``
(:class:`headwater.serve.access.TokenStore`; ``headwater token add``). Missing, unknown or
revoked → 401 (with ``WWW-Authenticate: Bearer``); a role that may not use the route → 403.

Errors are JSON ``{"code": <error type>, "message": "<parameter>: <rule>", "field": <parameter>}``:

======  ===========================================================================================
status  when
======  ===========================================================================================
400     a bad parameter (not a date, ``end`` before ``start``, a range over 366 days — 92 when
        computed on read —, an unknown grain or event, a malformed ``where`` filter, a limit out
        of range, invalid SQL); FastAPI's validation errors are reshaped to this
401     no / unknown / revoked read token
403     the role may not use the route (a viewer on ``/api/sql``) or read a table it names
404     an unknown route or metric, funnel or experiment; a table that does not exist
503     the lake could not be read (I/O); retry
504     ``/api/sql``: the statement ran longer than ``serve.sql_timeout_s`` and was interrupted
======  ===========================================================================================

The metric routes are in :mod:`headwater.serve.metrics_api` (ad-hoc funnels and retention computed
on read: :mod:`headwater.serve.adhoc_api`), SQL in :mod:`headwater.serve.sql_api`. Metric answers
are cached per process until a table they read changes (:mod:`headwater.serve.cache`), and a
request whose answer is cached is answered before FastAPI's routing (:class:`~headwater.serve.cache.FastPath`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from headwater.config import Home
from headwater.errors import ForbiddenError, HeadwaterError, NotFoundError, TransientError, UnauthorizedError
from headwater.serve import adhoc_api, cache, metrics_api, sql_api
from headwater.serve.access import TokenStore

SWAGGER_UI = Path(__file__).parent / "static" / "vendor" / "swagger-ui"
STATUS = {UnauthorizedError: 401, ForbiddenError: 403, NotFoundError: 404, TransientError: 503,
          sql_api.StatementTimeout: 504}


def status_of(e: HeadwaterError) -> int:
    """The HTTP status of a headwater error (400 for invalid input and anything unlisted)."""
    return next((code for cls, code in STATUS.items() if isinstance(e, cls)), 400)


def error_response(status: int, code: str, message: str, field: str | None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"code": code, "message": message, "field": field}, status_code=status, headers=headers)


def create_api(home: Home) -> FastAPI:
    """The query API over ``home`` (its lake, tokens and ``serve`` settings), to mount at ``/api``."""
    api = FastAPI(
        title="headwater query API",
        summary="Product metrics and read-only SQL over the lake's tables.",
        description=__doc__.split("\n\n", 1)[1],
        version="1",
        openapi_url="/openapi.json",
        docs_url=None,  # served below from the vendored Swagger UI, not FastAPI's CDN default
        redoc_url=None,
    )
    api.mount("/static/swagger-ui", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")  # "/api" where mounted
        assets = f"{root}/static/swagger-ui"
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=api.title,
                                   swagger_js_url=f"{assets}/swagger-ui-bundle.js", swagger_css_url=f"{assets}/swagger-ui.css",
                                   swagger_favicon_url=f"{assets}/favicon-32x32.png")

    api.state.home = home
    api.state.tokens = TokenStore(home)

    @api.exception_handler(HeadwaterError)
    async def headwater_error(request: Request, e: HeadwaterError) -> JSONResponse:
        return error_response(status_of(e), type(e).__name__, e.message, e.field)

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's 422 names the location and the rule; reshape it to the API's one error form.
        first = e.errors()[0]
        field = str(first["loc"][-1]) if first.get("loc") else None
        messages = "; ".join(f"{err['loc'][-1]}: {err['msg']}" for err in e.errors() if err.get("loc"))
        return error_response(400, "InvalidInputError", messages, field)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            return error_response(404, "NotFoundError", f"path: no endpoint {request.url.path} (see /api/docs)", "path")
        return error_response(e.status_code, "HTTPError", str(e.detail), None)

    api.include_router(metrics_api.router)
    api.include_router(adhoc_api.router)
    api.include_router(sql_api.router)
    api.add_middleware(cache.FastPath, home=home, tokens=api.state.tokens)
    return api
