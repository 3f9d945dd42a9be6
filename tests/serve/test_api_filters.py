"""Property filters (``where``) on every metric endpoint, computed on read from silver.events.

The ecom dataset (tests/models/ecom_bronze.py) with properties added per event, built by the
batch models: ``properties.store`` is ``main`` on every event (a filter matching everything:
each endpoint must answer exactly what gold holds), ``context.app.version`` is ``2.0`` for
one user in three (a filter on a property only some persons have: the numbers are counted
again here in plain Python from the events written), ``home`` events are exposures of
experiment ``exp1`` and purchases carry a revenue, so the experiment and revenue endpoints
have something to filter.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict

import httpx
import pyarrow as pa
import pytest

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.models.run import build
from headwater.serve import filters
from headwater.serve.access import Role, TokenStore
from tests.helpers import start_collector
from tests.models.ecom_bronze import canonical, read_csv_rows

K = 3
START, END = dt.date(2024, 3, 1), dt.date(2024, 4, 30)
RANGE = {"start": str(START), "end": str(END)}
EVERYTHING = "properties.store:main"
SOME = "context.app.version:2.0"
MODELS_TOML = """
[[funnels]]
name = "checkout"
window_hours = 24
steps = ["add_to_cart", "shipping_details", "payment_details", "purchase"]

[[experiments]]
id = "exp1"
variants = ["a", "b"]
conversion_event = "purchase"
exposure_event = "home"
"""


def version(user: str) -> str:
    return "2.0" if int(user.removeprefix("user_")) % 3 == 0 else "1.0"


def augmented() -> list[dict]:
    """The dataset's canonical events with the properties and context of the module docstring."""
    events = canonical(read_csv_rows())
    for e in events:
        props = json.loads(e["properties"]) | {"store": "main"}
        if e["event_name"] == "home":
            props |= {"experiment_id": "exp1", "variation_id": "ab"[int(e["user_id"][-1]) % 2]}
        if e["event_name"] == "purchase":
            props["revenue"] = 19.99
        e["properties"] = json.dumps(props)
        e["context"] = json.dumps({"app": {"version": version(e["user_id"])}})
    return events


@pytest.fixture(scope="module")
def events() -> list[dict]:
    return augmented()


@pytest.fixture(scope="module")
def server(tmp_path_factory, events):
    home = Home(tmp_path_factory.mktemp("filters") / "home")
    home.root.mkdir(parents=True)
    (home.root / "headwater.toml").write_text(f"[serve]\nk_anonymity = {K}\n")
    (home.root / "models.toml").write_text(MODELS_TOML)
    Lake.of(home).append_once("bronze.events", pa.Table.from_pylist(events, schema=EVENT_SCHEMA), app_id="test", batch_id=0)
    build(home)
    store = TokenStore(home)
    tokens = {str(role): store.add(role)[1] for role in Role}
    with start_collector(home.root) as c:
        yield c.url, tokens


def get(server, path, role="analyst", **params) -> httpx.Response:
    url, tokens = server
    with httpx.Client(base_url=url + "/api", headers={"Authorization": f"Bearer {tokens[role]}"}, timeout=60) as c:
        return c.get(path, params=params)


ENDPOINTS = [
    ("/metrics/active_users", {}),
    ("/metrics/monthly_active_users", {}),
    ("/metrics/retention", {"grain": "day"}),
    ("/metrics/retention", {"grain": "week"}),
    ("/metrics/retention", {"grain": "month"}),
    ("/metrics/funnels/checkout", {}),
    ("/metrics/funnels/checkout", {"platform": "mobile"}),
    ("/metrics/experiments/exp1", {}),
    ("/metrics/sessions", {}),
    ("/metrics/revenue", {}),
    ("/metrics/top_events", {"limit": 5}),
    ("/metrics/funnel", {"steps": "add_to_cart,shipping_details,payment_details,purchase", "window_hours": 24}),
    ("/metrics/retention/adhoc", {"grain": "week"}),
]


@pytest.mark.parametrize(("path", "params"), ENDPOINTS)
def test_a_filter_matching_every_event_gives_the_gold_rows(server, path, params):
    gold = get(server, path, **RANGE, **params)
    assert gold.status_code == 200, gold.text
    on_read = get(server, path, **RANGE, **params, where=EVERYTHING)
    assert on_read.status_code == 200, on_read.text
    gold, on_read = gold.json(), on_read.json()
    assert gold["source"].startswith("gold.") and gold["where"] == []
    assert on_read["source"] == "silver.events" and on_read["where"] == [EVERYTHING]
    assert gold["rows"] and on_read["rows"] == gold["rows"] and on_read["suppressed"] == gold["suppressed"]
    assert on_read.get("total") == gold.get("total")  # active users over all platforms too


def test_a_filter_on_some_persons_counts_only_their_events(server, events):
    # counted here, from the events written: distinct event ids (as silver keeps them) of the persons with version 2.0
    seen, days, per_name = set(), defaultdict(set), defaultdict(int)
    for e in events:
        if e["event_id"] not in seen and version(e["user_id"]) == "2.0":
            days[(e["ds"], e["platform"])].add(e["user_id"])
            per_name[e["event_name"]] += START <= e["ds"] <= END
        seen.add(e["event_id"])

    def active(ds: dt.date, platform: str, n: int) -> int:  # distinct persons over the n days to ds
        return len(set().union(*(days[(ds - dt.timedelta(days=i), platform)] for i in range(n))))

    want = {}
    for i in range((END - START).days + 1):
        ds = START + dt.timedelta(days=i)
        for platform in {p for _, p in days}:
            if active(ds, platform, 28):  # a platform's row exists once it has a person in the 28 days
                want[(ds.isoformat(), platform)] = (active(ds, platform, 1), active(ds, platform, 7), active(ds, platform, 28))
    body = get(server, "/metrics/active_users", **RANGE, where=SOME).json()
    assert {(r["ds"], r["platform"]): (r["dau"], r["wau"], r["mau"]) for r in body["rows"]} == {
        key: v for key, v in want.items() if v[0] >= K}
    assert body["suppressed"] == sum(1 for v in want.values() if v[0] < K) > 0  # the k floor still applies
    assert all(r["persons"] >= K for r in body["rows"])
    top = get(server, "/metrics/top_events", **RANGE, where=SOME, limit=1000).json()
    assert top["rows"] and {r["event_name"]: r["events"] for r in top["rows"]}.items() <= per_name.items()
    everyone = get(server, "/metrics/top_events", **RANGE, limit=1000).json()
    assert sum(r["events"] for r in top["rows"]) < sum(r["events"] for r in everyone["rows"])


def test_filters_combine_and_an_unmatched_value_gives_no_rows(server):
    both = get(server, "/metrics/active_users", **RANGE, where=[SOME, EVERYTHING]).json()
    assert both["where"] == [SOME, EVERYTHING]
    assert both["rows"] == get(server, "/metrics/active_users", **RANGE, where=SOME).json()["rows"]
    none = get(server, "/metrics/sessions", **RANGE, where=[SOME, "context.app.version:1.0"]).json()
    assert none["rows"] == [] and none["source"] == "silver.events"
    # a value is data, never SQL
    odd = get(server, "/metrics/sessions", **RANGE, where="properties.store:main' OR '1'='1").json()
    assert odd["rows"] == []


def test_a_viewer_gets_filtered_metrics_under_the_floor_and_without_identifiers(server):
    body = get(server, "/metrics/sessions", role="viewer", **RANGE, where=SOME).json()
    assert body["rows"] and all(r["persons"] >= K for r in body["rows"])
    assert not {"person_id", "session_id"} & {c for r in body["rows"] for c in r}


@pytest.mark.parametrize("bad", [
    "plan:pro",  # no column
    "properties.plan",  # no value
    "properties.a.b:x",  # properties: top-level keys only
    "context.a.b.c:x",  # context: at most two keys
    "properties.pl-an:x",  # not an identifier
    "properties.:x",
    "traits.plan:pro",
    "properties." + "x" * 65 + ":v",
])
def test_a_malformed_filter_is_a_400_naming_where_and_the_rule(server, bad):
    r = get(server, "/metrics/active_users", **RANGE, where=bad)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == "where" and body["message"].startswith("where: expected `properties.<key>:<value>`")
    assert repr(bad) in body["message"]


def test_too_many_filters_and_a_range_too_long_to_compute_on_read_are_400(server):
    r = get(server, "/metrics/active_users", **RANGE, where=[EVERYTHING] * (filters.MAX_FILTERS + 1))
    assert (r.status_code, r.json()["field"]) == (400, "where") and f"at most {filters.MAX_FILTERS}" in r.json()["message"]
    long = {"start": "2024-01-01", "end": "2024-06-01"}
    assert get(server, "/metrics/sessions", **long).status_code == 200  # gold: up to 366 days
    r = get(server, "/metrics/sessions", **long, where=EVERYTHING)
    assert (r.status_code, r.json()["field"]) == (400, "start") and f"at most {filters.MAX_DAYS}" in r.json()["message"]
    # the default range of a filtered month retention stays within the on-read limit
    month = get(server, "/metrics/retention", grain="month", where=EVERYTHING).json()
    assert (dt.date.fromisoformat(month["end"]) - dt.date.fromisoformat(month["start"])).days + 1 == filters.MAX_DAYS


def test_openapi_documents_the_filter_on_every_metric_endpoint(server):
    url, _ = server
    doc = httpx.get(url + "/api/openapi.json").json()
    metric_paths = [p for p in doc["paths"] if p.startswith("/metrics/")]
    assert len(metric_paths) >= 10
    for path in metric_paths:
        [where] = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "where"]
        assert where["in"] == "query" and "properties.<key>:<value>" in where["description"]
