"""The collector's ASGI app: Segment HTTP Tracking API and PostHog capture → the event log.

Routes (Segment HTTP Tracking API, https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):

- ``POST /v1/batch`` — ``{"batch": [message, ...], "sentAt"?, "context"?, "writeKey"?}``
- ``POST /v1/track|identify|page|screen|alias|group`` — one message; the path gives the
  type when the message has none
- aliases: ``/v1/import`` and ``/v1/b`` (= batch), ``/v1/t|i|p|s|a|g`` (analytics.js)
- PostHog capture (:mod:`.posthog`): ``POST /batch/``, ``/e/``, ``/capture/``, ``/i/v0/e/``,
  ``/track/``, ``/engage/`` (also without the trailing slash); the write key is the PostHog
  project token (``api_key`` / ``token`` in the body, the events or the query string).
- ``GET /health`` — 200 ``{"status": "ok"}``
- ``GET /metrics`` — Prometheus text format, when the caller gives a renderer (the CLI
  passes :func:`headwater.serve.metrics.render`: log offsets, lag, stream progress)

Auth (:mod:`.auth`): HTTP Basic, username = write key (password ignored), else ``writeKey``
in the body; the key maps to a source via ``sources.json`` (re-read when it changes:
checked at most once a second, and at once for an unknown key). Missing / unknown key →
401, recorded as an ``auth_failure`` bad row with source null, at most 60 a minute (the
rest are counted into the next one's reason); the presented key is kept only as its HMAC
token, the body only as its first 1 KB, scrubbed.

PII: accepted events' ``properties`` / ``context`` and every bad-row payload go through the
source's PII policy (:mod:`headwater.ingest.pii`) before the log; events are validated
against their contracts (:mod:`headwater.registry.validate`) before that, on the values as sent.

Bodies (:mod:`.body`): ``Content-Encoding: gzip`` or none (else 415). At most 500 KB after
decompression → else 413; decompression is bounded. Malformed JSON → 400
``decode_failure``; a body of the wrong shape → 400 ``envelope_violation``. These
request-level failures are recorded as one bad row each when the request is authenticated
(413: only the first 1 KB of the body).

Responses are JSON. Errors: ``{"code": <error type>, "message": <field and rule>}``
(what the Segment SDKs read). Success: 200 ``{"success": true, "accepted": n,
"rejected": m, "errors": [{"index", "code", "message"}, ...]}``; every event of the
request invalid → 400 with the same fields plus ``code``/``message``. 503 when the log
append fails (SDKs retry 5xx).

Durability (:class:`~.collector.Collector`): a request's events (grouped by partition) and
bad rows go to the log in **one** group-commit submission, and the response is sent only
after that transaction committed — a 200 means the events survive a crash. On a log
without ``atomic_multi_topic_append`` the events and the bad rows are two appends, each
atomic: if one fails the request is answered 503, and the client's retry may store its bad
rows twice but never an event twice in bronze (events are deduplicated by ``event_id``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import asynccontextmanager

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from headwater.collector import posthog, segment
from headwater.collector.collector import Collector, json_response
from headwater.collector.wire import Wire
from headwater.events import EVENT_TYPES


def create_app(collector: Collector, metrics: Callable[[], bytes] | None = None) -> Starlette:
    """The ASGI app serving ``collector`` (started and closed by the ASGI lifespan).

    ``metrics``: renders the Prometheus text exposition of ``GET /metrics`` (run in
    Starlette's thread pool: it reads files and the log); no such route without it."""

    def endpoint(wire: Wire):
        async def handler(request: Request) -> Response:
            return await collector.handle(request, wire)

        return handler

    async def health(request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        collector.start()
        try:
            yield
        finally:
            collector.close()

    routes = [Route("/health", health, methods=["GET"])]
    if metrics is not None:
        routes.append(Route("/metrics", lambda request: Response(metrics(), media_type=CONTENT_TYPE_LATEST), methods=["GET"]))
    # /v1/import is Segment's historical-import alias of /v1/batch; analytics.js
    # (analytics-next) posts to the short paths /v1/b and /v1/<first letter of the type>.
    routes += [Route(p, endpoint(segment.wire(None)), methods=["POST"]) for p in ("/v1/batch", "/v1/import", "/v1/b")]
    routes += [Route(f"/v1/{t}", endpoint(segment.wire(t)), methods=["POST"]) for t in EVENT_TYPES]
    routes += [Route(f"/v1/{t[0]}", endpoint(segment.wire(t)), methods=["POST"]) for t in EVENT_TYPES]
    # PostHog capture (posthog-js, posthog-python, posthog-node), with and without the trailing slash.
    routes += [Route(p, endpoint(posthog.WIRE), methods=["POST"]) for path in posthog.PATHS for p in (path, path.rstrip("/"))]
    # Browsers (analytics.js) post cross-origin with the write key in the body.
    middleware = [Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"], allow_headers=["*"], max_age=86400)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
