"""Identity resolution on hand-made bronze events: logins on two devices, alias chains,
refused merges, retroactive stitching (real Delta tables, real DuckDB)."""

from __future__ import annotations

import datetime as dt

import pytest

from headwater.config import Home
from headwater.models import identity
from headwater.models.run import build, identity_stale_days, run_model
from tests.models.bronze import MODEL, T0, alias, event, identify, rows, write

H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)


def persons(home: Home) -> dict[str, str]:
    """event_id → person_id of silver.events."""
    return {r["event_id"]: r["person_id"] for r in rows(home, "SELECT event_id, person_id FROM silver.events")}


def id_map(home: Home) -> dict[str, str]:
    return {r["id"]: r["person_id"] for r in rows(home, "SELECT id, person_id FROM silver.identity_map")}


def dau(home: Home) -> dict[dt.date, int]:
    return {r["ds"]: r["dau"] for r in rows(home, "SELECT ds, dau FROM gold.active_users")}


def test_anonymous_browsing_then_login_on_two_devices(tmp_path):
    home = Home(tmp_path)
    write(home, [
        # laptop: browses anonymously on day 0, logs in on day 1
        event("l1", T0, user=None, anon="laptop"),
        event("l2", T0 + H / 6, user=None, anon="laptop"),  # 10 minutes later: the same session
        identify("l3", T0 + D, "laptop", "alice", name="Alice"),
        event("l4", T0 + D + H, user="alice", anon="laptop"),
        # phone: browses anonymously on day 2, logs in on day 3
        event("p1", T0 + 2 * D, user=None, anon="phone", platform="ios"),
        identify("p2", T0 + 3 * D, "phone", "alice"),
        # someone else, never logged in
        event("s1", T0, user=None, anon="stranger"),
    ])
    build(home)
    assert id_map(home) == {"alice": "alice", "laptop": "alice", "phone": "alice"}
    got = persons(home)
    assert {k: got[k] for k in ("l1", "l2", "l3", "l4", "p1", "p2")} == dict.fromkeys(("l1", "l2", "l3", "l4", "p1", "p2"), "alice")
    assert got["s1"] == "stranger"  # an unmapped anonymous id is its own person
    # earlier anonymous events count for the person: day 0 has alice and the stranger, not "laptop"
    assert dau(home)[T0.date()] == 2
    assert dau(home)[T0.date() + 2 * D] == 1
    mau = rows(home, "SELECT mau FROM gold.active_users WHERE ds = $d", {"d": T0.date() + 3 * D})[0]["mau"]
    assert mau == 2  # alice on both devices is one person
    links = {r["id"]: (r["linked_by"], r["link_event_id"]) for r in rows(home, "SELECT * FROM silver.identity_map")}
    assert links == {"alice": ("root", None), "laptop": ("identify", "l3"), "phone": ("identify", "p2")}
    assert rows(home, "SELECT * FROM silver.identity_refused") == []
    sessions = rows(home, "SELECT person_id, events FROM gold.sessions WHERE ds = $d ORDER BY person_id", {"d": T0.date()})
    assert sessions == [{"person_id": "alice", "events": 2}, {"person_id": "stranger", "events": 1}]


def test_alias_chains_resolve_transitively(tmp_path):
    home = Home(tmp_path)
    write(home, [
        # anonymous ids chained by alias down to a user who then identifies
        event("x1e", T0, user=None, anon="x1"),
        alias("a1", T0 + H, "x1", "x2"),
        event("x2e", T0 + H, user=None, anon="x2"),
        alias("a2", T0 + 2 * H, "x2", "bob"),
        identify("i1", T0 + 3 * H, "x3", "bob"),
        # a chain of ids nobody identified: one person, named by its smallest alias user id (y2 < y3)
        alias("a3", T0, "y2", "y3"),
        alias("a4", T0 + H, "y1", "y2"),
        event("y3e", T0, user=None, anon="y3"),
    ])
    build(home)
    m = id_map(home)
    assert {k: m[k] for k in ("x1", "x2", "x3", "bob")} == dict.fromkeys(("x1", "x2", "x3", "bob"), "bob")
    assert {k: m[k] for k in ("y1", "y2", "y3")} == dict.fromkeys(("y1", "y2", "y3"), "y2")
    got = persons(home)
    assert got["x1e"] == got["x2e"] == "bob" and got["y3e"] == "y2"
    assert rows(home, "SELECT * FROM silver.identity_refused") == []
    # stitched_at: when the id's links (none later) first joined it to its person's root — x1's
    # own link (T0 + 1 h) reaches bob through a2 (T0 + 2 h)
    stitched = {r["id"]: r["stitched_at"] for r in rows(home, "SELECT id, stitched_at FROM silver.identity_map")}
    assert stitched == {"bob": None, "x1": T0 + 2 * H, "x2": T0 + 2 * H, "x3": T0 + 3 * H,
                        "y1": T0 + H, "y2": None, "y3": T0}


def test_stitched_at_takes_the_path_whose_latest_link_is_earliest(tmp_path):
    """An id joined to its person directly on day 5 and through another id on day 1: it was
    that person's from day 1 (the minimax path), so the lookback counts from day 1."""
    home = Home(tmp_path)
    (tmp_path / "models.toml").write_text("[identity]\nstitch_lookback_days = 1\n")
    write(home, [
        event("t0", T0 - D, user=None, anon="tablet"),  # 2 days before day 1: out of the lookback
        event("t1", T0 + H, user=None, anon="tablet"),  # 1 day before day 1 (4 before the direct link)
        alias("early1", T0, "tablet", "phone"),
        identify("early2", T0 + D, "phone", "erin"),
        identify("late", T0 + 5 * D, "tablet", "erin"),
    ])
    build(home)
    stitched = {r["id"]: r["stitched_at"] for r in rows(home, "SELECT id, stitched_at FROM silver.identity_map")}
    assert stitched == {"erin": None, "phone": T0 + D, "tablet": T0 + D}
    got = persons(home)
    assert (got["t0"], got["t1"]) == ("tablet", "erin")


def test_merging_two_identified_users_is_refused_and_recorded(tmp_path):
    home = Home(tmp_path)
    write(home, [
        # a shared laptop: carol logs in first, dave later
        event("k1", T0, user=None, anon="kiosk"),
        identify("k2", T0 + H, "kiosk", "carol"),
        identify("k3", T0 + 2 * H, "kiosk", "dave"),
        event("k4", T0 + 3 * H, user="dave", anon="kiosk"),
        # an alias between two identified accounts is refused too
        identify("e1", T0, "erin-device", "erin"),
        alias("e2", T0 + 4 * H, "erin", "carol"),
    ])
    build(home)
    m = id_map(home)
    assert m["kiosk"] == "carol"  # the first login keeps the device
    assert m["dave"] == "dave" and m["erin"] == "erin" and m["erin-device"] == "erin"
    got = persons(home)
    assert got["k1"] == "carol"  # the anonymous browsing before the first login
    assert got["k4"] == "dave"  # an event with a user_id stays that user's
    refused = rows(home, "SELECT event_id, event_type, id, user_id, id_person_id, user_person_id FROM silver.identity_refused ORDER BY event_id")
    assert refused == [
        {"event_id": "e2", "event_type": "alias", "id": "erin", "user_id": "carol", "id_person_id": "erin", "user_person_id": "carol"},
        {"event_id": "k3", "event_type": "identify", "id": "kiosk", "user_id": "dave", "id_person_id": "carol", "user_person_id": "dave"},
    ]
    assert rows(home, "SELECT count(DISTINCT person_id) AS n FROM silver.events")[0]["n"] == 3


def test_one_resolution_per_build_serves_both_identity_tables(tmp_path, monkeypatch):
    """silver.identity_map and silver.identity_refused take their parts of one resolution of
    the links a build wrote; the next build, with new links, resolves them again."""
    resolutions = []
    real = identity._resolve
    monkeypatch.setattr(identity, "_resolve", lambda con, merge: (resolutions.append(merge), real(con, merge)))
    home = Home(tmp_path)
    write(home, [identify("k2", T0 + H, "kiosk", "carol"), identify("k3", T0 + 2 * H, "kiosk", "dave")])
    build(home)
    assert len(resolutions) == 1
    assert [r["event_id"] for r in rows(home, "SELECT event_id FROM silver.identity_refused")] == ["k3"]
    write(home, [alias("e2", T0 + D, "erin", "carol"), identify("e1", T0 + D, "erin-device", "erin")], batch_id=1)
    build(home)
    assert len(resolutions) == 2
    assert id_map(home)["erin"] == "erin"
    assert [r["event_id"] for r in rows(home, "SELECT event_id FROM silver.identity_refused ORDER BY event_id")] == ["e2", "k3"]


def test_merging_identified_users_can_be_allowed(tmp_path):
    home = Home(tmp_path)
    (tmp_path / "models.toml").write_text("[identity]\nmerge_identified_users = true\n")
    write(home, [
        identify("k2", T0 + H, "kiosk", "carol"),
        identify("k3", T0 + 2 * H, "kiosk", "dave"),
        event("k4", T0 + 3 * H, user="dave", anon="kiosk"),
        alias("u1", T0, "old-id", "carol"),
    ])
    build(home)
    assert id_map(home) == dict.fromkeys(("kiosk", "carol", "dave", "old-id"), "carol")  # smallest identified id
    assert set(persons(home).values()) == {"carol"}
    assert rows(home, "SELECT * FROM silver.identity_refused") == []


def test_resolution_does_not_depend_on_arrival_order(tmp_path):
    links = [
        identify("k2", T0 + H, "kiosk", "carol"), identify("k3", T0 + 2 * H, "kiosk", "dave"),
        alias("a1", T0, "x1", "x2"), alias("a2", T0 + H, "x2", "bob"), identify("i1", T0, "x3", "bob"),
        event("e", T0, user=None, anon="x1"),
    ]
    results = []
    for name, order in (("fwd", links), ("rev", links[::-1])):
        home = Home(tmp_path / name)
        for i, ev in enumerate(order):  # one micro-batch per event
            write(home, [ev], batch_id=i)
        build(home)
        results.append((rows(home, "SELECT * FROM silver.identity_map ORDER BY id"),
                        rows(home, "SELECT * FROM silver.identity_refused ORDER BY event_id")))
    assert results[0] == results[1]


def test_a_late_login_restitches_earlier_days(tmp_path):
    home = Home(tmp_path)
    assert identity_stale_days(home) == []  # nothing built yet
    day0, day5 = T0.date(), T0.date() + 5 * D
    write(home, [event("a", T0, user=None, anon="anon1"), event("b", T0 + 5 * D, user="zoe", anon="z")])
    build(home)
    assert persons(home)["a"] == "anon1" and identity_stale_days(home) == []
    # the login arrives later, on day 5: identity changes, day 0 is stale until restated
    write(home, [identify("late", T0 + 5 * D + H, "anon1", "zoe")], batch_id=1)
    for table in ("silver.identity_links", "silver.identity_map"):
        run_model(home, MODEL[table], day5, day5)
    assert identity_stale_days(home) == [day0]
    run_model(home, MODEL["silver.events"], day0, day0)
    assert identity_stale_days(home) == [] and persons(home)["a"] == "zoe"
    # build() of the late day alone re-stitches all history (silver is rebuilt from the floor)
    write(home, [identify("later", T0 + 5 * D + 2 * H, "anon2", "zoe"), event("c", T0 + D, user=None, anon="anon2")], batch_id=2)
    lines: list[str] = []
    build(home, day5, day5, progress=lines.append)
    assert persons(home)["c"] == "zoe" and identity_stale_days(home) == []
    assert dau(home)[day5] == 1
    # the dimensions updated in place run once, after the restatement (not also before it)
    assert any(line.startswith("restatement check: 1 late") for line in lines)
    for table in ("silver.dim_user", "silver.dim_device"):
        assert sum(line.startswith(f"{table} ") for line in lines) == 1
    assert rows(home, "SELECT anonymous_id, person_id FROM silver.dim_device ORDER BY anonymous_id") == [
        {"anonymous_id": "anon1", "person_id": "zoe"}, {"anonymous_id": "anon2", "person_id": "zoe"},
        {"anonymous_id": "z", "person_id": "zoe"}]


@pytest.mark.parametrize("merge", [False, True])
def test_an_identify_without_anonymous_id_links_nothing(tmp_path, merge):
    home = Home(tmp_path)
    (tmp_path / "models.toml").write_text(f"[identity]\nmerge_identified_users = {str(merge).lower()}\n")
    write(home, [identify("i", T0, None, "server-user"), event("e", T0, user=None, anon=None)])
    build(home)
    assert id_map(home) == {"server-user": "server-user"}
    assert persons(home) == {"i": "server-user", "e": None}  # an event without any id has no person
    assert dau(home)[T0.date()] == 1
