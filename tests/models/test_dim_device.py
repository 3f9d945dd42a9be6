"""silver.dim_device (SCD1, one row per anonymous_id) on a hand-built bronze: Segment context
and PostHog properties, attributes overwritten by later values (and not by nulls), a shared
device, an identity merge, late events."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from headwater.config import Home
from headwater.models.run import build
from tests.models.bronze import T0, event, identify, rows, write

D = dt.timedelta(days=1)
MAC = {"device": {"type": "desktop"}, "os": {"name": "Mac OS X", "version": "14.1"}}
IOS = {"device": {"type": "ios", "model": "iPhone15,2"}, "os": {"name": "iOS", "version": "17.1"}, "app": {"version": "2.3.0"}}
POSTHOG = {"$device_type": "Mobile", "$os": "Android", "$os_version": "14", "$app_version": "1.0"}


def seen(eid: str, ts: dt.datetime, anon: str, user: str | None, context: dict | None = None, props: dict | None = None, **kw) -> dict:
    return event(eid, ts, user=user, anon=anon, context=json.dumps(context or {}), properties=json.dumps(props or {}), **kw)


def bronze() -> list[dict]:
    return [
        seen("m1", T0, "mac", "u7", MAC),
        seen("m2", T0 + D, "mac", "u7", {"os": {"version": "14.2"}}),  # no device: the type stays
        seen("p1", T0, "iphone", "u7", IOS, platform="ios"),
        seen("p2", T0 + D, "iphone", "u7", {**IOS, "app": {"version": "2.4.0"}}, platform="ios"),
        seen("h1", T0, "ph-device", "u8", props=POSTHOG, source="posthog", platform="android"),
        seen("s1", T0, "shared", "u3", MAC),  # one device, two persons: the latest event's
        seen("s2", T0 + D, "shared", "u4"),
        seen("a1", T0, "anon-only", None, IOS),  # identified later: the device is u5's
        identify("i1", T0 + D, "anon-only", "u5"),
        seen("srv", T0, None, "u9", MAC),  # no anonymous id (server-side): no device
    ]


def devices(home: Home) -> dict[str, dict]:
    return {r["anonymous_id"]: r for r in rows(home, "SELECT * FROM silver.dim_device")}


def person(home: Home, id_: str) -> str:
    """The person of ``id_`` (an id the map does not hold is its own person)."""
    mapped = rows(home, "SELECT person_id FROM silver.identity_map WHERE id = $i", {"i": id_})
    return mapped[0]["person_id"] if mapped else id_


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    home = Home(tmp_path_factory.mktemp("dim-device"))
    write(home, bronze())
    build(home)
    return home


def test_one_row_per_device_with_the_latest_non_null_attributes(home):
    d = devices(home)
    assert set(d) == {"mac", "iphone", "ph-device", "shared", "anon-only"}
    attrs = ("device_type", "device_model", "os_name", "os_version", "app_version")
    assert tuple(d["mac"][a] for a in attrs) == ("desktop", None, "Mac OS X", "14.2", None)
    assert tuple(d["iphone"][a] for a in attrs) == ("ios", "iPhone15,2", "iOS", "17.1", "2.4.0")
    assert tuple(d["ph-device"][a] for a in attrs) == ("Mobile", None, "Android", "14", "1.0")
    assert (d["mac"]["first_seen_at"], d["mac"]["last_seen_at"]) == (T0, T0 + D)
    assert d["iphone"]["platform"] == "ios" and d["mac"]["platform"] == "web"


def test_person_is_the_latest_events_through_identity(home):
    d = devices(home)
    assert d["mac"]["person_id"] == d["iphone"]["person_id"] == person(home, "u7")  # a person, two devices
    assert d["shared"]["person_id"] == person(home, "u4")
    assert d["anon-only"]["person_id"] == person(home, "u5")  # stitched by the later identify
    assert d["anon-only"]["device_type"] == "ios"


def test_late_events_update_by_event_time_not_arrival(tmp_path):
    home = Home(tmp_path)
    write(home, bronze())
    build(home)
    late = T0 + 5 * D
    write(home, [
        seen("p3", T0 + 2 * D, "iphone", "u7", {**IOS, "app": {"version": "2.5.0"}}, platform="ios", received=late),
        seen("p0", T0 - D, "iphone", "u7", {**IOS, "app": {"version": "1.0.0"}}, platform="ios", received=late),
    ], batch_id=1)
    build(home)
    phone = devices(home)["iphone"]
    assert (phone["app_version"], phone["first_seen_at"], phone["last_seen_at"]) == ("2.5.0", T0 - D, T0 + 2 * D)
    assert len(devices(home)) == 5  # rebuilt whole: still one row per device
