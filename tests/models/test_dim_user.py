"""silver.dim_user: SCD type 2 over identify traits (real Delta tables, real DuckDB)."""

from __future__ import annotations

import datetime as dt
import json


from headwater.config import Home
from headwater.models.run import build
from tests.models.bronze import T0, alias, event, history, identify, rows, write

D = dt.timedelta(days=1)


def versions(home: Home, person: str) -> list[dict]:
    return rows(home, "SELECT * EXCLUDE (person_id) FROM silver.dim_user WHERE person_id = $p ORDER BY version", {"p": person})


def test_a_tracked_trait_change_closes_the_old_version(tmp_path):
    home = Home(tmp_path)
    write(home, [
        identify("i1", T0, "a", "u1", plan="free", name="Ann"),
        identify("i2", T0 + D, "a", "u1", plan="free"),  # nothing changes: no version
        identify("i3", T0 + 2 * D, "a", "u1", plan="pro"),  # tracked change: new version
        identify("i4", T0 + 3 * D, "a", "u1", favourite_colour="red"),  # untracked: no version
        identify("i5", T0 + 4 * D, "a", "u1", name='Ann "the" \\ Admin', seats=3),  # escaped; seats untracked
        event("t", T0 + 5 * D, user="u1"),
    ])
    build(home)
    got = versions(home, "u1")
    assert [(v["version"], v["valid_from"], v["valid_to"], v["is_current"]) for v in got] == [
        (1, T0, T0 + 2 * D, False),
        (2, T0 + 2 * D, T0 + 4 * D, False),
        (3, T0 + 4 * D, None, True),
    ]
    base = dict.fromkeys(("company", "country", "email"))
    assert [json.loads(v["traits"]) for v in got] == [
        {**base, "name": "Ann", "plan": "free"},
        {**base, "name": "Ann", "plan": "pro"},
        {**base, "name": 'Ann "the" \\ Admin', "plan": "pro"},
    ]
    assert {v["user_id"] for v in got} == {"u1"}


def test_rerunning_creates_no_extra_versions_and_late_identifies_land_in_place(tmp_path):
    home = Home(tmp_path)
    write(home, [identify("i1", T0, "a", "u1", plan="free"), identify("i3", T0 + 2 * D, "a", "u1", plan="pro")])
    build(home)
    before = versions(home, "u1")
    for day in (T0.date(), T0.date() + 2 * D, T0.date()):
        build(home, day, day)
        assert versions(home, "u1") == before
    assert {h["operationParameters"]["mode"] for h in history(home, "silver.dim_user")} == {"Overwrite"}
    # a re-sent identify (same event_id) changes nothing; a late one between the two splits the history
    write(home, [identify("i1", T0, "a", "u1", plan="free"), identify("i2", T0 + D, "a", "u1", plan="team")], batch_id=1)
    build(home, T0.date() + D, T0.date() + D)
    assert [(v["valid_from"], json.loads(v["traits"])["plan"], v["is_current"]) for v in versions(home, "u1")] == [
        (T0, "free", False), (T0 + D, "team", False), (T0 + 2 * D, "pro", True),
    ]


def test_one_current_row_per_person_across_aliased_user_ids(tmp_path):
    home = Home(tmp_path)
    write(home, [
        identify("i1", T0, "dev1", "v1", email="old@x", country="FR"),
        alias("a1", T0 + D, "dev2", "v1"),
        identify("i2", T0 + 2 * D, "dev3", "w1", plan="free"),
        identify("i3", T0 + 3 * D, "dev3", "w1", plan="free", country="DE"),
    ])
    build(home)
    current = rows(home, "SELECT person_id, count(*) AS n FROM silver.dim_user WHERE is_current GROUP BY person_id ORDER BY person_id")
    assert current == [{"person_id": "v1", "n": 1}, {"person_id": "w1", "n": 1}]
    assert [json.loads(v["traits"])["country"] for v in versions(home, "w1")] == [None, "DE"]
    assert rows(home, "SELECT count(*) AS n FROM silver.dim_user WHERE is_current <> (valid_to IS NULL)")[0]["n"] == 0


def test_no_tracked_traits_still_gives_one_version_per_identified_person(tmp_path):
    home = Home(tmp_path)
    (tmp_path / "models.toml").write_text("[dim_user]\ntracked_traits = []\n")
    write(home, [identify("i1", T0, "a", "u1", plan="free"), identify("i2", T0 + D, "a", "u1", plan="pro")])
    build(home)
    assert [(v["version"], v["traits"], v["is_current"]) for v in versions(home, "u1")] == [(1, "{}", True)]
