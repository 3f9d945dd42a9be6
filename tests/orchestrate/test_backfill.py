"""Backfills through Dagster: a range, the same range again, then out of order in pieces —
identical tables every time, Delta histories of overwrites only, every run recorded."""

import datetime as dt

from dagster import DagsterRunStatus, RunsFilter

from headwater.models.dag import MODELS
from headwater.orchestrate.assets import asset_key
from headwater.orchestrate.definitions import definitions
from headwater.orchestrate.instance import instance
from headwater.orchestrate.runs import BACKFILL_TAG, backfill_requests, execute
from headwater.lake.store import Lake
from tests.helpers import query
from tests.orchestrate.conftest import checksums, write_modes


def backfill(home, defs, inst, start, end) -> list[str]:
    floor, ceiling = Lake.of(home).ds_range("bronze.events")
    run_ids = []
    for _, _, group, request in backfill_requests(MODELS, start, end, floor, ceiling):
        result = execute(defs, inst, request)
        assert result.success, [m.table for m in group]
        run_ids.append(result.run_id)
    return run_ids


def test_backfill_rebuild_and_out_of_order_rebuild_give_identical_tables(bronze):
    home = bronze
    defs = definitions(home)
    d = dt.date
    with instance(home) as inst:
        first = backfill(home, defs, inst, d(2024, 2, 28), d(2024, 3, 3))
        built = checksums(home)
        versions = {m.table: Lake.of(home).version(m.table) for m in MODELS}

        again = backfill(home, defs, inst, d(2024, 2, 28), d(2024, 3, 3))
        assert checksums(home) == built
        # out of order, in two pieces: the later days first
        backfill(home, defs, inst, d(2024, 3, 2), d(2024, 3, 3))
        backfill(home, defs, inst, d(2024, 2, 28), d(2024, 3, 1))
        assert checksums(home) == built

        for m in MODELS:
            modes = write_modes(home, m.table)
            # one overwrite per run that selected the model, never an append
            assert set(modes) == {"Overwrite"}, (m.table, modes)
            assert Lake.of(home).version(m.table) > versions[m.table]
        # silver holds each bronze event once; gold.active_users exactly the 5 days
        n_bronze = query(home, "SELECT count(DISTINCT event_id) AS n FROM bronze.events")["n"][0].as_py()
        assert query(home, "SELECT count(*) AS n FROM silver.events")["n"][0].as_py() == n_bronze
        days = query(home, "SELECT ds FROM gold.active_users ORDER BY ds")["ds"].to_pylist()
        assert days == [d(2024, 2, 28) + dt.timedelta(days=i) for i in range(5)]

        runs = inst.get_runs(RunsFilter(tags={BACKFILL_TAG: inst.get_run_by_id(first[0]).tags[BACKFILL_TAG]}))
        assert len(runs) == len(first) and all(r.status == DagsterRunStatus.SUCCESS for r in runs)
        assert len(inst.get_runs()) == 2 * len(first) + len(again) * 2
        # the ranged runs recorded every partition of the range, per asset
        keys = inst.get_materialized_partitions(asset_key("gold.active_users"))
        assert keys == {(d(2024, 2, 28) + dt.timedelta(days=i)).isoformat() for i in range(5)}
