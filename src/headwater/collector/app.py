"""The collector's ASGI app: Segment HTTP Tracking API and PostHog capture → the event log.

Routes (Segment HTTP Tracking API, https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):

- ``POST /v1/batch`` — ``{"batch": [message, ...], "sentAt"?, "context"?, "writeKey"?}``
- ``POST /v1/track|identify|page|screen|alias|group`` — one message; the path gives the
  type when the message has none
- aliases: ``/v1/import`` and ``/v1/b`` (= batch), ``/v1/t|i|p|s|a|g`` (analytics.js)
- PostHog capture (:mod:`.posthog`): ``POST /batch/``, ``/e/``, ``/capture/``, ``/i/v0/e/``,
  ``/track/``, ``/engage/`` (also without the trailing slash); the write key is the PostHog
  project token (``api_key`` / ``token`` in the body, the events or the query string).
- ``GET /health`` — 200 ``{"status": "ok", "writer", "stream", "disk", "log"}`` (``writer``: the
  answering worker process, with its ``pid``), 503 with
  ``"status": "down"`` when a component is down: the log writer thread stopped, the stream
  has lag and committed nothing for ``collector.stream_stall_s`` (or its lag is unreadable),
  the disk is over ``collector.max_disk_used``, or the log reports a background problem
  (:meth:`~.collector.Collector.health`)
- ``GET /ready`` — 200 ``{"status": "ready"}`` when an ingestion request would be taken now,
  else 503 ``{"status": "not_ready", "reason", "limit"}`` (starting, or shedding load)
- ``GET /openapi.json`` — the OpenAPI 3.1 document of these routes (:mod:`.openapi`)
- ``GET /metrics`` — Prometheus text format, when the caller gives a renderer (the CLI
  passes :func:`headwater.serve.metrics.render`: log offsets, lag, stream progress)

``/health`` and ``/ready`` take no credential (probes of load balancers and supervisors) and
show no data, only component states and counts.

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
``decode_failure``; a body of the wrong shape → 400 ``envelope_violation``; more than
``collector.max_events_per_request`` messages → 413. A message nested deeper than
``collector.max_depth`` is a bad row, its neighbours are kept (:mod:`.wire`); an unexpected
error while reading a body is a logged 400, never a 500. These request-level failures are
recorded as one bad row each when the request is authenticated (413: only the first 1 KB of
the body). A response lists at most 100 per-message errors (``errors_truncated``: the rest).

Responses are JSON. Errors: ``{"code": <error type>, "message": <field and rule>}``
(what the Segment SDKs read). Success: 200 ``{"success": true, "accepted": n,
"rejected": m, "errors": [{"index", "code", "message"}, ...]}``; every event of the
request invalid → 400 with the same fields plus ``code``/``message``. 503 when the log
append fails (SDKs retry 5xx).

Backpressure (:meth:`~.collector.Collector.admit`, checked before the body is read; each
worker process of ``collector.workers`` counts its own): too many requests in flight or
waiting for the log, or the stream too far behind → 429; the disk too full or the log writer
stopped → 503; an append not durable in time → 503. Each carries ``Retry-After`` (seconds)
and ``"limit"``, the setting that bounds it; the Segment and PostHog SDKs retry 429 and 5xx,
so load shedding delays events but loses none. Plain overload is always a 429, never a 5xx
(uvicorn's own ``limit_concurrency`` answers 503, so it is not used).

Durability (:class:`~.collector.Collector`): a request's events (grouped by partition) and
bad rows go to the log in **one** group-commit submission, and the response is sent only
after that transaction committed — a 200 means the events survive a crash. On a log
without ``atomic_multi_topic_append`` the events and the bad rows are two appends, each
atomic: if one fails the request is answered 503, and the client's retry may store its bad
rows twice but never an event twice in bronze (events are deduplicated by ``event_id``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from headwater.collector import openapi, posthog, segment
from headwater.collector.collector import Collector, json_response
from headwater.collector.wire import Limits, Wire
from headwater.events import EVENT_TYPES


def create_app(collector: Collector, metrics: Callable[[], bytes] | None = None,
               mounts: Sequence[BaseRoute] = ()) -> Starlette:
    """The ASGI app serving ``collector`` (started and closed by the ASGI lifespan).

    ``metrics``: renders the Prometheus text exposition of ``GET /metrics`` (run in
    Starlette's thread pool: it reads files and the log); no such route without it.
    ``mounts``: more routes served beside the collector's (the query API's ``Mount("/api")``,
    composed by :mod:`headwater.serve.app`: serving sits above the collector)."""

    def endpoint(wire: Wire):
        async def handler(request: Request) -> Response:
            return await collector.answer(request, wire)

        return handler

    async def health(request: Request) -> Response:
        return json_response(*collector.health())

    async def ready(request: Request) -> Response:
        return json_response(*collector.ready())

    @asynccontextmanager
    async def lifespan(app: Starlette):
        collector.start()
        try:
            yield
        finally:
            collector.close()

    routes = [Route("/health", health, methods=["GET"]), Route("/ready", ready, methods=["GET"])]
    # The OpenAPI document of these routes (no credential: it shows no data).
    spec = openapi.document(Limits.of(collector.settings.collector), metrics=metrics is not None)
    routes += list(mounts)
    routes.append(Route(openapi.OPENAPI_PATH, lambda request: json_response(200, spec), methods=["GET"]))
    if metrics is not None:
        routes.append(Route("/metrics", lambda request: Response(metrics(), media_type=CONTENT_TYPE_LATEST), methods=["GET"]))
    # /v1/import is Segment's historical-import alias of /v1/batch; analytics.js
    # (analytics-next) posts to the short paths /v1/b and /v1/<first letter of the type>.
    routes += [Route(p, endpoint(segment.wire(None)), methods=["POST"]) for p in segment.BATCH_PATHS]
    routes += [Route(f"/v1/{t}", endpoint(segment.wire(t)), methods=["POST"]) for t in EVENT_TYPES]
    routes += [Route(f"/v1/{t[0]}", endpoint(segment.wire(t)), methods=["POST"]) for t in EVENT_TYPES]
    # PostHog capture (posthog-js, posthog-python, posthog-node), with and without the trailing slash.
    routes += [Route(p, endpoint(posthog.WIRE), methods=["POST"]) for path in posthog.PATHS for p in (path, path.rstrip("/"))]
    # Browsers (analytics.js) post cross-origin with the write key in the body.
    middleware = [Middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"], allow_headers=["*"], max_age=86400)]
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
