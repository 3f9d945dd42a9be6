"""Late data through the real sensor: events appended to bronze for a day already built are
detected from the Delta log, the sensor asks for that ds and everything downstream of it —
the typed table of a registered event name included — and after running what it asked for
every table equals a full rebuild."""

import datetime as dt
import shutil

from dagster import SensorResult, build_sensor_context
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from headwater.config import Home
from headwater.models.run import build
from headwater.orchestrate.assets import asset_key
from headwater.orchestrate.definitions import definitions
from headwater.orchestrate.instance import instance
from headwater.orchestrate.runs import execute
from headwater.orchestrate.sensor import SENSOR_NAME
from headwater.lake.store import Lake
from tests.helpers import query
from tests.orchestrate.conftest import (
    FIRST, LAST, TYPED_TABLE, VISIT_DAY, append_bronze, checksums, event_at, register_contract, table_rows, write_modes,
)

LATE_DAY = dt.date(2024, 3, 1)
LAST_BUILT = LAST - dt.timedelta(days=1)


def tick(defs, inst, cursor) -> SensorResult:
    context = build_sensor_context(instance=inst, definitions=defs, sensor_name=SENSOR_NAME, cursor=cursor)
    return defs.resolve_sensor_def(SENSOR_NAME)(context)


def dau(home) -> dict:
    return {r["ds"]: r["dau"] for r in query(home, "SELECT ds, dau FROM gold.active_users").to_pylist()}


def typed_rows(home, day) -> int:
    return query(home, f"SELECT count(*) AS n FROM {TYPED_TABLE} WHERE ds = $d", {"d": day})["n"][0].as_py()


def full_rebuild(home, tmp, end) -> Home:
    """A copy of ``home``'s bronze (and its contract) built from scratch for FIRST..end on
    the direct path (no Dagster), under the same models configuration."""
    other = Home(tmp / "rebuild")
    shutil.copytree(Lake.of(home).uri("bronze.events"), Lake.of(other).uri("bronze.events"))
    if (home.root / "models.toml").is_file():
        shutil.copy(home.root / "models.toml", other.root / "models.toml")
    register_contract(other)
    build(other, FIRST, end)
    return other


def test_late_events_restate_their_day_and_downstream_windows(built, window_events, tmp_path):
    home = built
    defs = definitions(home)
    with instance(home) as inst:
        first = tick(defs, inst, None)  # no cursor: starts from what the builds read
        assert not first.run_requests and first.skip_reason
        before, typed_before = dau(home), typed_rows(home, LATE_DAY)

        late = [event_at(window_events[0], i, LATE_DAY, user_id=f"late-user-{i}", anonymous_id=f"anon-late-{i}")
                for i in range(3)]
        append_bronze(home, late, 2)
        # while a run is in flight (here: created, not started) the sensor waits, cursor kept
        pending = inst.create_run_for_job(defs.resolve_job_def("daily"), run_config={})
        waiting = tick(defs, inst, first.cursor)
        assert not waiting.run_requests and "in flight" in waiting.skip_reason.skip_message and waiting.cursor is None
        inst.delete_run(pending.run_id)
        result = tick(defs, inst, first.cursor)

        assert [o.partition for o in result.asset_events] == [LATE_DAY.isoformat()]
        # one run: the identity tables read the links, everything else silver.events
        (request,) = result.run_requests
        assert request.tags["headwater/late_ds"] == LATE_DAY.isoformat()
        selected = set(request.asset_selection)
        assert {asset_key("silver.events"), asset_key("gold.active_users"), asset_key("silver.identity_map"),
                asset_key("silver.identity_refused")} <= selected
        assert asset_key(TYPED_TABLE) in selected  # the typed table reads silver.events: restated too
        # the day itself and every later built day of the cumulative states and their readers
        # (the states are built through LAST, retention reads them ahead: the run's range ends
        # there, so it builds gold on LAST too); retention cohorts reach back (d-366 ..)
        assert request.tags[ASSET_PARTITION_RANGE_END_TAG] == LAST.isoformat()
        assert request.tags[ASSET_PARTITION_RANGE_START_TAG] == FIRST.isoformat()
        assert execute(defs, inst, request).success

        after = dau(home)
        assert after[LATE_DAY] == before[LATE_DAY] + 3
        assert typed_rows(home, LATE_DAY) == typed_before + 3  # the late events are of the typed name
        assert {d: n for d, n in after.items() if d != LATE_DAY} == {d: n for d, n in before.items() if d != LATE_DAY} | {
            LAST: after[LAST]}
        rebuilt = full_rebuild(home, tmp_path, LAST)
        assert table_rows(home, "gold.active_users") == table_rows(rebuilt, "gold.active_users")  # WAU, MAU too
        assert TYPED_TABLE in checksums(home) and checksums(home) == checksums(rebuilt)
        assert set(write_modes(home, "silver.events")) == {"Overwrite"}

        # the restatement rewrote the identity map: the next tick checks person_id by content,
        # finds nothing stale, and asks for nothing
        quiet = tick(defs, inst, result.cursor)
        assert not quiet.run_requests, quiet.run_requests

        # rows for a day nothing has built yet (the schedule's to build) are observed, not restated
        new_day = LAST + dt.timedelta(days=1)
        append_bronze(home, [event_at(window_events[0], 5, new_day, user_id="late-user-9")], 3)
        unbuilt = tick(defs, inst, quiet.cursor)
        assert not unbuilt.run_requests and "nothing built to restate" in unbuilt.skip_reason.skip_message
        assert [o.partition for o in unbuilt.asset_events] == [new_day.isoformat()]


def test_identify_on_a_new_day_restates_the_earlier_anonymous_days(built, window_events, tmp_path):
    """Retroactive stitching under orchestration: anonymous events on VISIT_DAY; the daily run
    of a later, new day carries an identify linking them to a user; the sensor finds
    VISIT_DAY stale by content and restates it (and its downstream). VISIT_DAY lies 9 days
    before the identify: the models' stitching lookback is set to reach it."""
    home = built
    (home.root / "models.toml").write_text("[identity]\nstitch_lookback_days = 30\n")
    defs = definitions(home)
    with instance(home) as inst:
        cursor = tick(defs, inst, None).cursor
        visitor = "SELECT DISTINCT person_id FROM silver.events WHERE anonymous_id = 'anon-visitor'"
        assert query(home, visitor)["person_id"].to_pylist() == ["anon-visitor"]

        identify = event_at(window_events[0], 9, LAST, event_type="identify", event_name=None,
                            user_id="visitor-42", anonymous_id="anon-visitor", properties="{}")
        append_bronze(home, [identify], 2)
        daily = defs.resolve_job_def("daily").execute_in_process(instance=inst, partition_key=LAST.isoformat())
        assert daily.success  # the schedule's run: the new day and the identity map (whole)

        result = tick(defs, inst, cursor)
        assert VISIT_DAY.isoformat() in result.run_requests[0].tags["headwater/stale_ds"]
        for request in result.run_requests:
            assert execute(defs, inst, request).success
        assert query(home, visitor)["person_id"].to_pylist() == ["visitor-42"]
        assert checksums(home) == checksums(full_rebuild(home, tmp_path, LAST))
