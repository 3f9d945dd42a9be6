"""Three real SDKs — segment-analytics-python, rudder-sdk-python, posthog — send identify,
alias, track and page events to one running collector: bronze holds exactly what they sent,
and the silver identity map stitches one person across the SDKs where the ids match."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from headwater.ingest.tokens import Tokenizer
from headwater.config import Home
from headwater.lake.store import Lake
from tests.helpers import query, run_stream, start_collector

from .conftest import HMAC_KEY

USER = "sdk-user@example.com"  # the same person logs in on every client
KEYS = {"segment": "wk-segment-sdk-test", "rudder": "wk-rudder-sdk-test", "posthog": "phc_sdk_test_posthog"}


def send_segment_api(client_cls, key: str, prefix: str, revenue: int, url: str) -> None:
    """Page, identify, track and alias through a Segment-API SDK client (segment-analytics-python
    and rudder-sdk-python share the client interface); ids and messageIds start with ``prefix``."""
    errors = []
    c = client_cls(key, host=url, on_error=lambda e, b: errors.append(e), max_retries=1, upload_interval=0.1)
    c.page(anonymous_id=f"{prefix}-anon", name="Pricing" if prefix == "seg" else "Docs", message_id=f"{prefix}-page")
    c.identify(user_id=USER, anonymous_id=f"{prefix}-anon", traits={"plan": "pro"}, message_id=f"{prefix}-identify")
    c.track(user_id=USER, anonymous_id=f"{prefix}-anon", event="Order Completed", properties={"revenue": revenue}, message_id=f"{prefix}-track")
    c.alias(previous_id=f"{prefix}-old-id", user_id=USER, message_id=f"{prefix}-alias")
    c.flush()
    c.shutdown()
    assert errors == []


def send_segment(url: str) -> None:
    from segment.analytics import Client

    send_segment_api(Client, KEYS["segment"], "seg", 10, url)


def send_rudder(url: str) -> None:
    from rudderstack.analytics import Client

    send_segment_api(Client, KEYS["rudder"], "rud", 20, url)


def send_posthog(url: str) -> None:
    from posthog import Posthog

    errors = []
    c = Posthog(KEYS["posthog"], host=url, on_error=lambda e, b: errors.append(e), max_retries=1, flush_interval=0.1)
    c.capture("$pageview", distinct_id="ph-anon", properties={"$pathname": "/home", "$device_id": "ph-anon"}, uuid="00000000-0000-4000-8000-0000000000a1")
    c.capture("$identify", distinct_id=USER, properties={"$anon_distinct_id": "ph-anon"}, uuid="00000000-0000-4000-8000-0000000000a2")
    c.capture("Order Completed", distinct_id=USER, properties={"revenue": 30}, uuid="00000000-0000-4000-8000-0000000000a3")
    c.alias(previous_id="ph-old-id", distinct_id=USER, uuid="00000000-0000-4000-8000-0000000000a4")
    c.flush()
    c.shutdown()
    assert errors == []


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("sdks"))
    for name, key in KEYS.items():
        home.add_source(name, key)
    with start_collector(home.root, write_key=None, env={"HEADWATER_HMAC_KEY": HMAC_KEY.hex()}) as c:
        send_segment(c.url)
        send_rudder(c.url)
        send_posthog(c.url)
    run_stream(home)
    return home


def test_bronze_holds_exactly_what_the_sdks_sent(home):
    t = Tokenizer(HMAC_KEY)
    u = t(USER)
    got = query(home, "SELECT source, event_id, event_type, event_name, user_id, anonymous_id FROM bronze.events ORDER BY source, event_id").to_pylist()
    ph = "00000000-0000-4000-8000-0000000000a"
    expected = [
        ("posthog", ph + "1", "page", "/home", None, t("ph-anon")),
        ("posthog", ph + "2", "identify", None, u, t("ph-anon")),
        ("posthog", ph + "3", "track", "Order Completed", u, None),
        ("posthog", ph + "4", "alias", None, u, None),
        ("rudder", "rud-alias", "alias", None, u, None),
        ("rudder", "rud-identify", "identify", None, u, t("rud-anon")),
        ("rudder", "rud-page", "page", "Docs", None, t("rud-anon")),
        ("rudder", "rud-track", "track", "Order Completed", u, t("rud-anon")),
        ("segment", "seg-alias", "alias", None, u, None),
        ("segment", "seg-identify", "identify", None, u, t("seg-anon")),
        ("segment", "seg-page", "page", "Pricing", None, t("seg-anon")),
        ("segment", "seg-track", "track", "Order Completed", u, t("seg-anon")),
    ]
    assert [tuple(r.values()) for r in got] == expected
    props = query(home, "SELECT source, json_extract(properties, '$.previousId') AS prev FROM bronze.events WHERE event_type = 'alias' ORDER BY 1").to_pylist()
    assert [(r["source"], r["prev"].strip('"')) for r in props] == [("posthog", t("ph-old-id")), ("rudder", t("rud-old-id")), ("segment", t("seg-old-id"))]
    revenue = query(home, "SELECT source, CAST(json_extract(properties, '$.revenue') AS INT) AS r FROM bronze.events WHERE event_type = 'track' ORDER BY 1")
    assert revenue.to_pylist() == [{"source": "posthog", "r": 30}, {"source": "rudder", "r": 20}, {"source": "segment", "r": 10}]
    assert "bronze.bad_rows" not in Lake.of(home).tables()  # nothing was rejected


def test_silver_stitches_one_person_across_sdks(home):
    env = {**os.environ, "HEADWATER_HOME": str(home.root), "HEADWATER_HMAC_KEY": HMAC_KEY.hex()}
    subprocess.run([sys.executable, "-m", "headwater", "batch"], env=env, check=True, capture_output=True, timeout=300)
    t = Tokenizer(HMAC_KEY)
    ids = [USER, "seg-anon", "rud-anon", "ph-anon", "seg-old-id", "rud-old-id", "ph-old-id"]
    mapped = query(home, "SELECT id, person_id FROM silver.identity_map").to_pylist()
    persons = {r["id"]: r["person_id"] for r in mapped}
    assert {persons[t(i)] for i in ids} == {persons[t(USER)]}
    # every event of every SDK, anonymous pre-login pages included, belongs to that person
    assert query(home, "SELECT DISTINCT person_id FROM silver.events").column("person_id").to_pylist() == [persons[t(USER)]]
