"""The collector's OpenAPI document: valid OpenAPI 3.1, in step with the app's routes, served
at ``/openapi.json`` — and schemathesis fuzzing of the running collector against it (no 5xx,
status codes, content types, headers and bodies as documented)."""

from __future__ import annotations

import base64

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from jsonschema import Draft202012Validator
from schemathesis import checks

from headwater.collector import openapi
from headwater.collector.app import create_app
from headwater.collector.collector import Collector
from headwater.collector.wire import Limits
from headwater.config import Home
from headwater.log import open_log
from tests.helpers import start_collector

from .conftest import HMAC_KEY

WRITE_KEY = "wk-openapi-fuzz-0123456789abcdef"
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    """A collector process without the per-address auth-failure limit (the fuzzer sends
    unknown keys; with it, every later request would be a 429)."""
    env = {"HEADWATER_HMAC_KEY": HMAC_KEY.hex(), "HEADWATER_COLLECTOR_AUTH_FAILURES_PER_MINUTE": "0",
           "HEADWATER_COLLECTOR_RATE_LIMIT_PER_KEY": "0"}
    with start_collector(tmp_path_factory.mktemp("home"), write_key=WRITE_KEY, source="fuzz", env=env) as c:
        yield c


# The document the collector serves (checked equal below). Loaded here rather than from the
# URL: schemathesis 4.32's lazy fixture loader reads `request.node._nodeid`, gone in pytest 9.
# The coverage phase is off: it sends every boundary of the schema, e.g. batches of exactly
# max_events_per_request messages per operation, far over the time budget of this file.
schema = schemathesis.openapi.from_dict(
    openapi.document(metrics=False),
    config=schemathesis.Config.from_dict({"phases": {"coverage": {"enabled": False}, "stateful": {"enabled": False}}}),
)


def test_the_document_is_valid_openapi_31():
    doc = openapi.document()
    assert doc["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(doc).validate()  # the OpenAPI 3.1 meta-schema
    for s in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(s)
    broken = {**doc, "paths": {"/x": {"post": {"responses": {"200": {}}}}}}  # a response without a description
    with pytest.raises(Exception):
        schemathesis.openapi.from_dict(broken).validate()


def test_the_document_lists_exactly_the_apps_routes(tmp_path):
    home = Home(tmp_path)
    home.root.mkdir(parents=True, exist_ok=True)
    log = open_log(home.settings.log_url)
    try:
        for metrics in (None, lambda: b""):
            app = create_app(Collector.from_home(home, log), metrics)
            routes = {(r.path, m.lower()) for r in app.routes for m in r.methods if m != "HEAD"}
            doc = openapi.document(metrics=metrics is not None)
            documented = {(p, m) for p, ops in doc["paths"].items() for m in ops}
            assert routes == documented
    finally:
        log.close()


def test_the_document_is_served_without_a_credential_and_reflects_the_limits(fuzzed):
    r = httpx.get(fuzzed.url + openapi.OPENAPI_PATH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    served = r.json()
    limits = Limits.of(fuzzed.home.settings.collector)
    assert served == httpx.Response(200, json=openapi.document(limits, metrics="/metrics" in served["paths"])).json()
    assert served["components"]["schemas"]["SegmentBatch"]["properties"]["batch"]["maxItems"] == limits.max_events


def _authenticate(case) -> None:
    """Most cases carry the real key (so they reach decoding and the log); the rest keep
    whatever the fuzzer sent (401 paths)."""
    if case.path.startswith("/v1/"):
        case.headers = {**(case.headers or {}), "Authorization": "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()}
    elif case.method == "POST":
        case.query = {**(case.query or {}), "token": WRITE_KEY}


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_fuzz_the_running_collector_against_its_document(case, fuzzed):
    _authenticate(case)
    response = case.call(base_url=fuzzed.url, timeout=10)
    if case.method == "GET":  # /health and /ready answer a documented 503 (no stream runs here)
        case.validate_response(response, checks=[c for c in CHECKS if c is not checks.not_a_server_error])
        return
    case.validate_response(response, checks=CHECKS)
