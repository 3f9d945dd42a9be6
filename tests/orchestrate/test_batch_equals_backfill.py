"""``headwater batch`` and ``headwater backfill`` walk one DAG: over the same range they write
the same tables — silver, gold, the typed table of a registered event name and the SCD2
dimension of a CDC source — compared by checksum of their sorted rows."""

import datetime as dt
import json
import shutil

import pyarrow as pa
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.config import Home
from headwater.lake.schemas import CDC_SCHEMA
from headwater.lake.store import Lake
from headwater.models.dag import dag
from headwater.orchestrate.definitions import definitions
from headwater.sources.cdc import scd2
from tests.helpers import query
from tests.orchestrate.conftest import TYPED_TABLE, checksums, register_contract

START, END = dt.date(2024, 2, 28), dt.date(2024, 3, 3)
DIM = "silver.dim_account"
APP_ID = "cdc:test"


def cdc_source(home: Home) -> None:
    """``bronze.cdc_accounts`` as a CDC reader writes it — a snapshot of two accounts, an
    update of a tracked column, a delete — and the dimension spec the reader saves."""
    scd2.DimSpec(DIM, (("id", "BIGINT"),), (("plan", "VARCHAR"),), "bronze.cdc_accounts", APP_ID).save(home)

    def change(op, lsn, seq, day, before=None, after=None):
        ts = dt.datetime.combine(day, dt.time(9), tzinfo=dt.timezone.utc)
        return {"op": op, "lsn": lsn + seq, "commit_lsn": lsn, "seq": seq, "xid": lsn, "commit_ts": ts,
                "relation": "public.accounts", "before": before and json.dumps(before),
                "after": after and json.dumps(after), "ds": day}

    rows = [
        change("snapshot", 100, 0, dt.date(2024, 2, 25), after={"id": 1, "plan": "free"}),
        change("snapshot", 100, 1, dt.date(2024, 2, 25), after={"id": 2, "plan": "pro"}),
        change("update", 200, 0, dt.date(2024, 2, 27), before={"id": 1, "plan": "free"}, after={"id": 1, "plan": "pro"}),
        change("delete", 300, 0, dt.date(2024, 3, 1), before={"id": 2, "plan": "pro"}),
    ]
    Lake.of(home).append_once("bronze.cdc_accounts", pa.Table.from_pylist(rows, schema=CDC_SCHEMA), app_id=APP_ID, batch_id=300)


def invoke(home: Home, *args: str) -> dict:
    result = CliRunner().invoke(cli, [*args, "--start", str(START), "--end", str(END), "--format", "json"],
                                env={"HEADWATER_HOME": str(home.root)})
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def test_batch_and_backfill_build_identical_tables(bronze, tmp_path):
    register_contract(bronze)
    cdc_source(bronze)
    other = Home(tmp_path / "backfill")
    shutil.copytree(bronze.root, other.root)  # bronze, the contract registry, the CDC spec

    tables = [m.table for m in dag(bronze)]
    assert TYPED_TABLE in tables and DIM in tables
    # Dagster's asset graph is the DAG: the typed table and the dimension are assets, the
    # change records an external input of the dimension
    keys = {"/".join(k.path) for k in definitions(bronze).resolve_all_asset_keys()}
    assert {"silver/evt_catalog", "silver/dim_account", "bronze/cdc_accounts"} <= keys
    batch = invoke(bronze, "batch")
    backfill = invoke(other, "backfill")
    assert set(batch) == set(backfill["rows"]) == set(tables)  # the same models ran

    assert checksums(bronze) == checksums(other)
    for table in (TYPED_TABLE, DIM, "gold.active_users"):
        assert batch[table] > 0, table  # non-empty: the comparison proves something
    # the dimension is the SCD2 of the changes, and records the bronze version it covers
    dim = query(bronze, f"SELECT id, plan, is_current, deleted FROM {DIM} ORDER BY id, valid_from").to_pylist()
    assert dim == [
        {"id": 1, "plan": "free", "is_current": False, "deleted": False},
        {"id": 1, "plan": "pro", "is_current": True, "deleted": False},
        {"id": 2, "plan": "pro", "is_current": False, "deleted": True},
    ]
    assert Lake.of(bronze).committed_batch(DIM, APP_ID) == Lake.of(other).committed_batch(DIM, APP_ID) == 300
