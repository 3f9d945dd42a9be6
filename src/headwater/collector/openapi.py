"""The OpenAPI 3.1 document of the collector's HTTP routes, served at ``GET /openapi.json``.

It describes what :mod:`.app` serves — the Segment HTTP Tracking API (``/v1/*`` and its
aliases), PostHog capture (:data:`.posthog.PATHS`, each also without the trailing slash),
``/health``, ``/ready``, ``/metrics`` and this document — with the request bodies as JSON
Schemas (Segment messages, the PostHog body shapes), the auth schemes and every response
the collector gives (200 / 400 / 401 / 413 / 415 / 429 / 503). It is built from the same
constants as the routes and the limits in force (:class:`~.wire.Limits`), and
``tests/collector/test_openapi.py`` checks that its paths are the app's routes and fuzzes
the running collector against it (schemathesis).

Write keys are not described as exact values (a JSON Schema cannot say "a known key"): a
request with an unknown key is answered 401, which the document lists.
"""

from __future__ import annotations

from typing import Any

from headwater.collector import posthog, segment
from headwater.collector.wire import MAX_EVENT_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_ERRORS, Limits
from headwater.events import BAD_ROW_TYPES, EVENT_TYPES

OPENAPI_PATH = "/openapi.json"
_REF = "#/components/schemas/"

_ID = {"type": ["string", "integer"], "description": "Stored only as its HMAC token."}
_TIME = {"type": "string", "format": "date-time", "description": "RFC 3339; years 1970–9999."}
_OBJECT = {"type": "object"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _when_type(t: str, *required: str) -> dict:
    """JSON Schema: a message of type ``t`` has the fields ``required``."""
    return {"if": {"properties": {"type": {"const": t}}, "required": ["type"]}, "then": {"required": list(required)}}


def _schemas(limits: Limits) -> dict[str, Any]:
    depth = f"At most {limits.max_depth} levels of nesting per message (collector.max_depth), {MAX_EVENT_BYTES} bytes per message."
    segment_message = {
        "type": "object",
        "description": "A Segment message (https://segment.com/docs/connections/spec/common/). track needs `event`, "
                       "alias `previousId` and `userId`, group `groupId`. " + depth,
        "properties": {
            "type": {"enum": list(EVENT_TYPES)},
            "messageId": {"type": ["string", "integer"]},
            "userId": _ID, "anonymousId": _ID, "previousId": _ID,
            "groupId": {"type": ["string", "integer"]},
            "event": {"type": "string", "minLength": 1}, "name": {"type": ["string", "null"]},
            "properties": _OBJECT, "traits": _OBJECT, "context": _OBJECT, "integrations": _OBJECT,
            "timestamp": _TIME, "originalTimestamp": _TIME, "sentAt": _TIME,
        },
        "anyOf": [{"required": ["userId"]}, {"required": ["anonymousId"]}],
        "allOf": [_when_type("track", "event"), _when_type("alias", "previousId", "userId"), _when_type("group", "groupId")],
    }
    posthog_event = {
        "type": "object",
        "description": "A PostHog event (https://posthog.com/docs/api/capture). " + depth,
        "properties": {
            "event": {"type": "string", "minLength": 1},
            "distinct_id": {"type": ["string", "integer", "number"], "description": "Stored only as its HMAC token."},
            "$distinct_id": {"type": ["string", "integer", "number"]},
            "uuid": {"type": "string"},
            "properties": _OBJECT, "$set": _OBJECT, "$set_once": _OBJECT,
            "timestamp": _TIME,
            "offset": {"type": "integer", "description": "Milliseconds before the request (instead of `timestamp`)."},
            "token": {"type": "string"}, "$token": {"type": "string"}, "api_key": {"type": "string"},
        },
        "required": ["event"],
    }
    error = {"index": {"type": "integer", "minimum": 0}, "code": {"enum": list(BAD_ROW_TYPES)}, "message": {"type": "string"}}
    counts = {
        "success": {"type": "boolean"},
        "accepted": {"type": "integer", "minimum": 0},
        "rejected": {"type": "integer", "minimum": 0},
        "errors": {"type": "array", "maxItems": MAX_RESPONSE_ERRORS, "description": "The first rejected messages.",
                   "items": {"type": "object", "properties": error, "required": ["index", "code", "message"]}},
        "errors_truncated": {"type": "integer", "minimum": 1, "description": f"Rejected messages past the first {MAX_RESPONSE_ERRORS}."},
        "status": {"const": 1, "description": "PostHog routes only (what PostHog's capture answers)."},
    }
    return {
        "SegmentMessage": segment_message,
        "SegmentSingle": {"allOf": [_ref("SegmentMessage")], "properties": {"writeKey": {"type": "string"}}},
        "SegmentBatch": {
            "type": "object",
            "properties": {
                "batch": {"type": "array", "items": {"allOf": [_ref("SegmentMessage")], "required": ["type"]}, "maxItems": limits.max_events},
                "sentAt": _TIME, "context": _OBJECT, "writeKey": {"type": "string"},
            },
            "required": ["batch"],
        },
        "PostHogEvent": posthog_event,
        "PostHogBatch": {
            "type": "object",
            "properties": {
                "batch": {"type": "array", "items": _ref("PostHogEvent"), "maxItems": limits.max_events},
                "api_key": {"type": "string"}, "token": {"type": "string"}, "sent_at": _TIME,
                "historical_migration": {"type": "boolean"},
            },
            "required": ["batch"],
        },
        "PostHogBody": {"anyOf": [
            {"type": "array", "items": _ref("PostHogEvent"), "maxItems": limits.max_events},
            _ref("PostHogBatch"),
            _ref("PostHogEvent"),
        ]},
        "Result": {"type": "object", "properties": counts, "required": ["success", "accepted", "rejected", "errors"]},
        "Error": {
            "type": "object",
            "description": "`code`: the bad-row type or `unauthorized`, `rate_limited`, `overloaded`, `unavailable`; "
                           "`message` names the field and the rule; `limit` the setting that bounds it (429 / 503). "
                           "A 400 that rejected every message of a batch also has the `Result` fields.",
            "properties": {"success": {"const": False}, "code": {"type": "string"}, "message": {"type": "string"},
                           "limit": {"type": ["string", "null"]}, **{k: v for k, v in counts.items() if k != "success"}},
            "required": ["code", "message"],
        },
        "Health": {"type": "object", "properties": {"status": {"enum": ["ok", "down"]}}, "required": ["status"]},
        "Ready": {"type": "object", "properties": {"status": {"enum": ["ready", "not_ready"]}, "reason": {"type": "string"},
                                                   "limit": {"type": ["string", "null"]}}, "required": ["status"]},
    }


def _responses(ok: str) -> dict[str, Any]:
    retry = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    err = _json(_ref("Error"))
    return {
        "200": {"description": ok, "content": _json(_ref("Result"))},
        "400": {"description": "Malformed request (`decode_failure`), wrong shape (`envelope_violation`), or every "
                               "message rejected; `message` names the field and the rule.", "content": err},
        "401": {"description": "Missing or unknown write key.", "content": err},
        "413": {"description": f"Body over {MAX_REQUEST_BYTES} bytes after decompression, or more messages than "
                               "collector.max_events_per_request (`size_violation`).", "content": err},
        "415": {"description": "Unsupported Content-Encoding (gzip or none).", "content": err},
        "429": {"description": "Rate limited or overloaded; retry after `Retry-After`.", "headers": retry, "content": err},
        "503": {"description": "Event log unavailable or too far behind; retry after `Retry-After`.", "headers": retry, "content": err},
    }


def _segment(path_type: str | None) -> dict[str, Any]:
    what = "a batch of messages" if path_type is None else f"one `{path_type}` message"
    body = "SegmentBatch" if path_type is None else "SegmentSingle"
    return {"post": {
        "summary": f"Segment HTTP Tracking API: {what}",
        "tags": ["segment"],
        "security": [{"writeKey": []}, {}],
        "requestBody": {"required": True, "content": _json(_ref(body))},
        "responses": _responses("Stored durably: accepted messages are in the event log, rejected ones are bad rows."),
    }}


def _posthog() -> dict[str, Any]:
    def query(name: str, description: str, schema: dict) -> dict:
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}

    form = {"type": "object", "properties": {"data": {"type": "string"}, "compression": {"type": "string"}}, "required": ["data"]}
    return {"post": {
        "summary": "PostHog capture: an array of events, a batch object or one event",
        "tags": ["posthog"],
        "security": [{"token": []}, {}],
        "parameters": [
            query("_", "Client send time, ms since the epoch (1–15 ASCII digits).", {"type": "string", "pattern": "^[0-9]{1,15}$"}),
            query("compression", "Hint: gzip-js, gzip, base64 (gzip is detected by its magic bytes); lz64 is refused.", {"type": "string"}),
            query("ver", "Client library version (ignored).", {"type": "string"}),
            query("api_key", "Project token (alternative to `token`).", {"type": "string"}),
            query("ip", "Ignored: the client IP is not stored.", {"type": "string"}),
        ],
        "requestBody": {"required": True, "content": {
            **_json(_ref("PostHogBody")),
            "text/plain": {"schema": {"type": "string", "description": "JSON, or base64 of JSON / gzip."}},
            "application/x-www-form-urlencoded": {"schema": form},
        }},
        "responses": _responses("Stored durably (PostHog's `{\"status\": 1}` plus the counts)."),
    }}


def _get(summary: str, responses: dict) -> dict[str, Any]:
    return {"get": {"summary": summary, "tags": ["operations"], "security": [], "responses": responses}}


def document(limits: Limits = Limits(), *, metrics: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict) of the collector's routes, with ``limits``
    in the schemas; ``metrics``: whether ``GET /metrics`` is served."""
    paths: dict[str, Any] = {}
    for p in segment.BATCH_PATHS:
        paths[p] = _segment(None)
    for t in EVENT_TYPES:
        paths[f"/v1/{t}"] = paths[f"/v1/{t[0]}"] = _segment(t)
    for path in posthog.PATHS:
        paths[path] = paths[path.rstrip("/")] = _posthog()
    paths["/health"] = _get("Liveness: the log writer, the stream and the disk.", {
        "200": {"description": "Every component ok.", "content": _json(_ref("Health"))},
        "503": {"description": "A component is down.", "content": _json(_ref("Health"))},
    })
    paths["/ready"] = _get("Readiness: whether an ingestion request would be taken now.", {
        "200": {"description": "Ready.", "content": _json(_ref("Ready"))},
        "503": {"description": "Starting or shedding load.", "content": _json(_ref("Ready"))},
    })
    if metrics:
        paths["/metrics"] = _get("Prometheus text exposition: log offsets, lag, stream progress.", {
            "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
        })
    paths[OPENAPI_PATH] = _get("This document.", {"200": {"description": "OpenAPI 3.1.", "content": _json(_OBJECT)}})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "headwater collector",
            "version": "1",
            "description": "Event ingestion: Segment HTTP Tracking API and PostHog capture into the event log. "
                           f"Bodies: at most {MAX_REQUEST_BYTES} bytes after decompression (Content-Encoding gzip or none), "
                           f"{MAX_EVENT_BYTES} bytes and {limits.max_depth} nesting levels per message, "
                           f"{limits.max_events} messages per request. No request is answered 500.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(limits),
            "securitySchemes": {
                "writeKey": {"type": "http", "scheme": "basic",
                             "description": "Segment: username = write key, empty password; else `writeKey` in the body."},
                "token": {"type": "apiKey", "in": "query", "name": "token",
                          "description": "PostHog project token; also `api_key` / `token` in the body or in each event."},
            },
        },
    }
