"""Asset checks on real tables: they pass on what the models build, fail on constructed tables
that break an invariant, and a failed blocking check stops the gold steps of the run."""

import datetime as dt

import pyarrow as pa
from dagster import AssetCheckResult, RunRequest, build_asset_check_context

from headwater.models.dag import MODELS
from headwater.models.run import run_model
from headwater.lake.schemas import DIM_USER_SCHEMA
from headwater.orchestrate.assets import asset_key
from headwater.orchestrate.checks import invariant_checks
from headwater.orchestrate.definitions import definitions
from headwater.orchestrate.instance import instance
from headwater.orchestrate.runs import execute, failure_message
from headwater.orchestrate.sensor import range_tags
from headwater.lake.store import Lake
from tests.helpers import query

DAY = dt.date(2024, 3, 1)
SILVER = [m for m in MODELS if m.table in ("silver.identity_map", "silver.events")]


def checks_by_name(home) -> dict:
    return {spec.name: c for c in invariant_checks(home, MODELS) for spec in c.check_specs}


def run_check(check) -> AssetCheckResult:
    # direct invocation: the check's body against the real tables (an unpartitioned run)
    return check(build_asset_check_context())


def silver_rows(home, day=DAY) -> pa.Table:
    return query(home, "SELECT * FROM silver.events WHERE ds = $d ORDER BY event_id", {"d": day})


def test_checks_pass_on_built_tables_and_dim_user_skips_until_built(bronze):
    home = bronze
    checks = checks_by_name(home)
    assert set(checks) == {"event_id_unique", "subset_of_bronze", "complete_from_log", "complete_from_bronze", "bad_row_rate",
                           "one_current_row_per_user"}
    skipped = run_check(checks["one_current_row_per_user"])
    assert skipped.passed and "not built yet" in skipped.metadata["skipped"].value
    for model in MODELS:
        if model.table in ("silver.identity_map", "silver.events", "silver.dim_user"):
            run_model(home, model, DAY, DAY)
    for name, check in checks.items():
        result = run_check(check)
        assert result.passed and result.metadata["violations"].value == 0, name


def test_each_check_fails_on_a_table_that_breaks_it(bronze):
    home = bronze
    for model in SILVER:
        run_model(home, model, DAY, DAY)
    rows = silver_rows(home)
    # a duplicated event_id (a second copy of 2 events) and a row bronze never had
    invented = rows.slice(0, 1).set_column(rows.schema.get_field_index("event_id"), "event_id", pa.array(["nobody-sent-this"]))
    Lake.of(home).append("silver.events", pa.concat_tables([rows.slice(0, 2), invented]))
    checks = checks_by_name(home)

    dup = run_check(checks["event_id_unique"])
    assert not dup.passed and dup.metadata["violations"].value == 2
    assert {r["event_id"] for r in dup.metadata["sample"].value} == set(rows["event_id"].to_pylist()[:2])
    missing = run_check(checks["subset_of_bronze"])
    assert not missing.passed and missing.metadata["violations"].value == 1
    assert missing.metadata["sample"].value[0]["event_id"] == "nobody-sent-this"

    ts = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    dim = pa.Table.from_pylist([
        {"person_id": "p1", "version": 1, "valid_from": ts, "valid_to": None, "is_current": True, "user_id": "u1", "traits": "{}"},
        {"person_id": "p1", "version": 2, "valid_from": ts, "valid_to": None, "is_current": True, "user_id": "u1", "traits": "{}"},
        {"person_id": "p2", "version": 1, "valid_from": ts, "valid_to": ts, "is_current": False, "user_id": "u2", "traits": "{}"},
        {"person_id": "p3", "version": 1, "valid_from": ts, "valid_to": None, "is_current": True, "user_id": "u3", "traits": "{}"},
    ], schema=DIM_USER_SCHEMA)
    Lake.of(home).append("silver.dim_user", dim)
    scd2 = run_check(checks["one_current_row_per_user"])
    assert not scd2.passed and scd2.metadata["violations"].value == 2  # p1 has two, p2 none
    assert {r["user_key"] for r in scd2.metadata["sample"].value} == {"p1", "p2"}


def test_a_failed_blocking_check_stops_gold_in_the_same_run(bronze):
    """A silver model that writes a duplicate (a bug) materialises, its blocking check fails,
    and the gold step reading it never runs."""
    home = bronze

    def buggy(home, model, start, end):
        rows = run_model(home, model, start, end)
        if model.table == "silver.events":
            Lake.of(home).append(model.table, silver_rows(home, start).slice(0, 1))
        return rows

    models = tuple(m for m in MODELS if m.table in ("silver.identity_map", "silver.events", "gold.events_hourly"))
    defs = definitions(home, models=models, runner=buggy)
    with instance(home) as inst:
        request = RunRequest(asset_selection=[asset_key(m.table) for m in models], tags=range_tags(DAY, DAY))
        result = execute(defs, inst, request)
        assert not result.success
        assert "check silver/events:event_id_unique failed: 1 event_ids occur more than once" in failure_message(result)
        assert inst.get_latest_materialization_event(asset_key("silver.events")) is not None
        assert inst.get_latest_materialization_event(asset_key("gold.events_hourly")) is None
    assert not Lake.of(home).exists("gold.events_hourly")
