"""What a daily build restates besides its own day, on hand-made events built one day at a
time: identity merges reach back only to the days the merged persons were active on; a copy
of an event landing on a neighbouring day restates that day; a map changed outside
``build`` falls back to the full check. Every case ends equal to a full rebuild."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from headwater.config import Home
from headwater.lake.store import Lake
from headwater.models.run import build, run_model
from tests.models.bronze import MODEL, T0, alias, event, identify, rows, write
from tests.models.test_incremental import checksums

D = dt.timedelta(days=1)
H = dt.timedelta(hours=1)


def full_rebuild(home: Home, root) -> Home:
    """A copy of ``home``'s bronze and models configuration, built from scratch."""
    other = Home(root)
    other.root.mkdir(parents=True)
    if (home.root / "models.toml").is_file():
        shutil.copy(home.root / "models.toml", other.root / "models.toml")
    shutil.copytree(Lake.of(home).uri("bronze.events"), Lake.of(other).uri("bronze.events"))
    build(other, full=True)
    return other


def day(k: int) -> dt.date:
    return T0.date() + k * D


def daily(home: Home, days: dict[int, list[dict]]) -> dict[int, list[str]]:
    """Write and build each day in order (``build(home, d, d)``); the progress lines per day."""
    lines: dict[int, list[str]] = {}
    for k, events in sorted(days.items()):
        write(home, events, batch_id=k)
        lines[k] = []
        build(home, day(k), day(k), progress=lines[k].append)
    return lines


def runs(lines: list[str], table: str) -> list[tuple[dt.date, dt.date]]:
    """The ``ds`` ranges ``table`` was run on, in order."""
    spans = [line.split(":")[0].split()[1].split("..") for line in lines if line.startswith(table + " ")]
    return [(dt.date.fromisoformat(a), dt.date.fromisoformat(b)) for a, b in spans]


def steady(k: int) -> list[dict]:
    """A known user active every day, and an anonymous visitor who never logs in."""
    return [event(f"s{k}", T0 + k * D, user="sam", anon="sam-phone"),
            event(f"o{k}", T0 + k * D + H, user=None, anon="other")]


@pytest.mark.parametrize(
    ("lookback", "stitched"),
    [(None, (3, 5)), (3650, (1, 3, 5)), (0, ())],  # None: the default, 7 days
)
def test_a_login_restates_only_the_days_of_its_anonymous_history_within_the_lookback(tmp_path, lookback, stitched):
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    if lookback is not None:
        (home.root / "models.toml").write_text(f"[identity]\nstitch_lookback_days = {lookback}\n")
    days = {k: steady(k) for k in range(10)}
    for k in (1, 3, 5):  # kate browses anonymously on three days
        days[k].append(event(f"k{k}", T0 + k * D + 2 * H, user=None, anon="kate-laptop"))
    days[9] += [identify("login", T0 + 9 * D + 3 * H, "kate-laptop", "kate"),
                event("k9", T0 + 9 * D + 4 * H, user="kate", anon="kate-laptop")]
    lines = daily(home, days)
    # day 9 runs silver on itself, then on the stitched days only; the states forward from the first
    assert runs(lines[9], "silver.events") == [(day(9), day(9))] + [(day(k), day(k)) for k in stitched]
    # their bronze rows did not change: silver's own rows get the new person, no dedup again
    assert [("re-stitched" in line) for line in lines[9] if line.startswith("silver.events ")] == [False] + [True] * len(stitched)
    if stitched:
        assert runs(lines[9], "silver.person_state")[-1] == (day(stitched[0]), day(9))
    assert runs(lines[8], "silver.events") == [(day(8), day(8))]  # nothing to stitch: day 8 alone
    got = {r["event_id"]: r["person_id"] for r in rows(home, "SELECT event_id, person_id FROM silver.events")}
    # events older than the lookback before the login keep the anonymous id as their person
    assert got == {**got, **{f"k{k}": "kate" if k in stitched else "kate-laptop" for k in (1, 3, 5)}, "k9": "kate"}
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_an_alias_user_id_that_identifies_later_keeps_its_person(tmp_path):
    """alias(legacy -> lena) makes a person of the two before lena ever identifies; it is
    named lena (the alias's user id), so lena's first identify, days later, renames nothing
    and restates no earlier day, whatever the lookback."""
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "models.toml").write_text("[identity]\nstitch_lookback_days = 0\n")
    days = {k: steady(k) for k in range(8)}
    days[1] += [alias("al", T0 + D + H, "legacy-7", "lena")]
    for k in range(1, 8):
        days[k].append(event(f"l{k}", T0 + k * D + 2 * H, user="lena", anon=f"lena-{k}"))
    days[6].append(identify("li", T0 + 6 * D + 3 * H, "lena-6", "lena"))
    lines = daily(home, days)
    assert rows(home, "SELECT DISTINCT person_id FROM silver.events WHERE user_id = 'lena'") == [{"person_id": "lena"}]
    assert runs(lines[6], "silver.events") == [(day(6), day(6))]
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_a_device_whose_latest_event_is_restitched_takes_the_new_person(tmp_path):
    """An alias sent from another device stitches a tablet whose last event was days ago:
    silver.dim_device, merged rather than rebuilt for the re-stitched days, gives the tablet
    its new person, as a full rebuild does; the phone's device row is untouched."""
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "models.toml").write_text("[identity]\nstitch_lookback_days = 30\n")
    days = {k: steady(k) for k in range(7)}
    days[2].append(event("t2", T0 + 2 * D + H, user=None, anon="tina-tablet", platform="ios"))
    days[3].append(event("t3", T0 + 3 * D + H, user=None, anon="tina-tablet", platform="ios"))
    days[6] += [identify("ti", T0 + 6 * D + H, "tina-phone", "tina"),
                alias("ta", T0 + 6 * D + 2 * H, "tina-tablet", "tina")]
    lines = daily(home, days)
    assert runs(lines[6], "silver.events")[1:] == [(day(2), day(3))]
    devices = {r["anonymous_id"]: r["person_id"] for r in rows(home, "SELECT anonymous_id, person_id FROM silver.dim_device")}
    assert (devices["tina-tablet"], devices["tina-phone"], devices["sam-phone"]) == ("tina", "tina", "sam")
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_changing_the_lookback_restates_the_days_it_moves(tmp_path):
    """silver was built under one lookback; a build under another finds the days whose
    person the new rule gives otherwise (the saved map does not apply to it) and ends equal
    to a full rebuild under the new one."""
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    days = {k: steady(k) for k in range(10)}
    days[1].append(event("k1", T0 + D + 2 * H, user=None, anon="kate-laptop"))
    days[9].append(identify("login", T0 + 9 * D + 3 * H, "kate-laptop", "kate"))
    daily(home, {k: v for k, v in days.items() if k < 10})
    assert rows(home, "SELECT person_id FROM silver.events WHERE event_id = 'k1'") == [{"person_id": "kate-laptop"}]
    (home.root / "models.toml").write_text("[identity]\nstitch_lookback_days = 30\n")
    write(home, steady(10), batch_id=10)
    lines = []
    build(home, day(10), day(10), progress=lines.append)
    assert (day(1), day(1)) in runs(lines, "silver.events")
    assert rows(home, "SELECT person_id FROM silver.events WHERE event_id = 'k1'") == [{"person_id": "kate"}]
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_an_earlier_login_arriving_late_moves_the_lookback_back(tmp_path):
    """A link stitched on day 9 is found (a late delivery) to have been made on day 6: the
    id's stitched_at moves back, so its events between the two lookbacks are restated."""
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "models.toml").write_text("[identity]\nstitch_lookback_days = 2\n")
    days = {k: steady(k) for k in range(11)}
    for k in (3, 5, 7):
        days[k].append(event(f"k{k}", T0 + k * D + 2 * H, user=None, anon="kate-laptop"))
    days[9].append(identify("login", T0 + 9 * D + 3 * H, "kate-laptop", "kate"))
    days[10].append(identify("early", T0 + 4 * D + 3 * H, "kate-laptop", "kate"))  # received on day 10
    lines = daily(home, days)
    got = {r["event_id"]: r["person_id"] for r in rows(home, "SELECT event_id, person_id FROM silver.events WHERE event_id LIKE 'k%'")}
    assert got == {"k3": "kate", "k5": "kate", "k7": "kate"}  # day 4 - 2 = day 2 on
    assert runs(lines[9], "silver.events")[1:] == [(day(7), day(7))]  # day 9 - 2: day 7 only
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_merging_two_persons_active_on_many_days_merges_their_history(tmp_path):
    """With merge_identified_users, an alias between two known users makes one person of
    two that were active for days; their states and every day's counts merge."""
    home = Home(tmp_path / "home")
    home.root.mkdir(parents=True)
    (home.root / "models.toml").write_text("[identity]\nmerge_identified_users = true\n")
    days = {k: steady(k) for k in range(8)}
    for k in range(6):
        days[k] += [identify(f"bi{k}", T0 + k * D + H, "bob-phone", "bob"),
                    event(f"b{k}", T0 + k * D + 2 * H, user="bob", anon="bob-phone")]
    for k in range(2, 7):
        days[k] += [identify(f"wi{k}", T0 + k * D + H, "will-laptop", "will"),
                    event(f"w{k}", T0 + k * D + 2 * H, user="will", anon="will-laptop", platform="ios")]
    days[7].append(alias("merge", T0 + 7 * D, "will", "bob"))
    lines = daily(home, days)
    assert runs(lines[7], "silver.events")[1:] == [(day(2), day(6))]  # will's days: now bob's
    assert rows(home, "SELECT DISTINCT person_id FROM silver.events WHERE person_id <> 'other' ORDER BY 1") == [
        {"person_id": "bob"}, {"person_id": "sam"}]
    assert rows(home, "SELECT dau FROM gold.active_users WHERE ds = $d", {"d": day(3)}) == [{"dau": 3}]  # sam, bob, other
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_a_copy_on_a_neighbouring_day_restates_that_day(tmp_path):
    home = Home(tmp_path / "home")
    original = event("e", T0 + 2 * D, user="sam", anon="sam-phone", received=T0 + 2 * D + H)
    days = {k: steady(k) for k in range(6)}
    days[2].append(original)
    lines = daily(home, days)
    assert runs(lines[5], "silver.events") == [(day(5), day(5))]
    # an import brings a copy received earlier, its clock-corrected time a day later: it wins
    copy = {**original, "event_ts": T0 + 3 * D, "ds": day(3), "received_at": T0 + 2 * D}
    far = {**original, "event_ts": T0 + 7 * D, "ds": day(7), "received_at": T0 + 7 * D}  # 4 days on: another event
    write(home, [copy, *steady(6), *steady(7), far], batch_id=6)
    lines = []
    build(home, day(6), day(6), progress=lines.append)
    assert (day(2), day(3)) in runs(lines, "silver.events")  # the day the copy landed on, and its neighbour
    build(home, day(7), day(7))
    got = rows(home, "SELECT ds FROM silver.events WHERE event_id = 'e' ORDER BY ds")
    assert got == [{"ds": day(3)}, {"ds": day(7)}]
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_a_map_changed_outside_build_falls_back_to_the_full_check(tmp_path):
    home = Home(tmp_path / "home")
    days = {k: steady(k) for k in range(4)}
    days[1].append(event("x", T0 + D, user=None, anon="xena-tablet"))
    daily(home, days)
    write(home, [identify("late", T0 + 3 * D + H, "xena-tablet", "xena")], batch_id=10)
    for table in ("silver.identity_links", "silver.identity_map"):  # e.g. a Dagster run
        run_model(home, MODEL[table], day(3), day(3))
    write(home, steady(4), batch_id=4)
    build(home, day(4), day(4))
    assert rows(home, "SELECT person_id FROM silver.events WHERE event_id = 'x'") == [{"person_id": "xena"}]
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))


def test_deleted_bronze_rows_rebuild_the_identity_links(tmp_path):
    """Links are merged from new rows only; rows deleted from bronze (a retention or erasure
    job) cannot be merged away, so the links are rebuilt from all of bronze."""
    home = Home(tmp_path / "home")
    days = {k: steady(k) for k in range(3)}
    days[0] += [event("y0", T0 + 2 * H, user=None, anon="yuri-phone"), identify("yi", T0 + 3 * H, "yuri-phone", "yuri")]
    daily(home, days)
    assert rows(home, "SELECT count(*) AS n FROM silver.identity_links WHERE a = 'yuri-phone'") == [{"n": 1}]
    Lake.of(home).delete("bronze.events", "event_id = 'yi'")
    write(home, steady(3), batch_id=3)
    build(home, day(3), day(3))
    assert rows(home, "SELECT count(*) AS n FROM silver.identity_links WHERE a = 'yuri-phone'") == [{"n": 0}]
    assert rows(home, "SELECT person_id FROM silver.events WHERE event_id = 'y0'") == [{"person_id": "yuri-phone"}]
    assert checksums(home) == checksums(full_rebuild(home, tmp_path / "full"))
