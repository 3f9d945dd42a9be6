"""Fixtures for the orchestration tests: a home with a window of the real ecom dataset in
bronze, and its Dagster definitions and (real, SQLite) instance.

Dagster's SQLite storage commits every event (a ranged run stores a planned and a
materialisation event per partition and asset): homes live on tmpfs when the machine has
one, which keeps these tests fast; the code paths are the same."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.models.dag import dag
from headwater.registry.registry import Registry
from tests.helpers import query
from tests.models.ecom_bronze import canonical, read_csv_rows

# 12 days around the planted activity spike (days 60-63 of 2024 = Feb 29 .. Mar 3).
FIRST, LAST = dt.date(2024, 2, 24), dt.date(2024, 3, 6)
_SHM = Path("/dev/shm")


def _tmp_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="headwater-orch-", dir=_SHM if _SHM.is_dir() else None))


@pytest.fixture
def home():
    root = _tmp_root()
    yield Home(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def window_events() -> list[dict]:
    """Canonical events of the ecom rows with FIRST <= ds <= LAST (CSV order)."""
    rows = [r for r in read_csv_rows() if FIRST.isoformat() <= r["timestamp"][:10] <= LAST.isoformat()]
    return canonical(rows)


def append_bronze(home: Home, events: list[dict], batch_id: int) -> None:
    """Append canonical event dicts to bronze.events as one stream micro-batch."""
    Lake.of(home).append_once("bronze.events", pa.Table.from_pylist(events, schema=EVENT_SCHEMA), app_id="test", batch_id=batch_id)


@pytest.fixture
def bronze(home, window_events) -> Home:
    """``home`` with the ecom window in bronze.events (one commit)."""
    append_bronze(home, window_events, 0)
    return home


def anonymous_visits(template: dict, ds: dt.date) -> list[dict]:
    """Two events of ``anon-visitor`` (no user_id) on ``ds``: a visitor not yet identified."""
    return [event_at(template, i, ds, user_id=None, anonymous_id="anon-visitor") for i in range(2)]


def event_at(template: dict, i: int, ds: dt.date, **fields) -> dict:
    """A new event (id ``late-<ds>-<i>``) on ``ds`` at 12:<i> UTC, received long after (in
    August), with ``fields`` over ``template``'s columns."""
    ts = dt.datetime.combine(ds, dt.time(12, i), tzinfo=dt.timezone.utc)
    return {**template, "event_id": f"late-{ds}-{i}", "event_ts": ts, "ds": ds,
            "received_at": dt.datetime(2024, 8, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i), **fields}


VISIT_DAY = dt.date(2024, 2, 26)
TYPED_EVENT = "catalog"  # the most frequent event name of the window (window_events[0] has it)
TYPED_TABLE = "silver.evt_catalog"
CONTRACT = {
    "type": "object",
    "properties": {"session_id": {"type": "string"}, "acquisition_channel": {"type": "string"}, "user_cohort": {"type": "string"}},
}


def register_contract(home: Home, name: str = TYPED_EVENT) -> None:
    """Register :data:`CONTRACT` for event ``name``: the batch DAG gets its typed table."""
    registry = Registry.from_home(home)
    try:
        registry.register(name, CONTRACT)
    finally:
        registry.close()


@pytest.fixture(scope="session")
def _built_template(window_events):
    """A home with the window (and :func:`anonymous_visits` on VISIT_DAY) in bronze and a
    contract for :data:`TYPED_EVENT`, every model (its typed table included) built through
    Dagster for FIRST .. LAST-1 (LAST is left for a "new day")."""
    from headwater.orchestrate.definitions import definitions
    from headwater.orchestrate.instance import instance
    from headwater.orchestrate.runs import backfill_requests, execute

    home = Home(_tmp_root())
    append_bronze(home, window_events, 0)
    append_bronze(home, anonymous_visits(window_events[0], VISIT_DAY), 1)
    register_contract(home)
    defs = definitions(home)
    with instance(home) as inst:
        for *_, request in backfill_requests(dag(home), FIRST, LAST - dt.timedelta(days=1), *Lake.of(home).ds_range("bronze.events")):
            assert execute(defs, inst, request).success
    yield home
    shutil.rmtree(home.root, ignore_errors=True)


@pytest.fixture
def built(_built_template, home) -> Home:
    """A private copy of the built template (Delta tables and Dagster instance) at ``home``."""
    from headwater.orchestrate.instance import dagster_home

    shutil.copytree(_built_template.root, home.root, dirs_exist_ok=True)
    (home.root / "dagster" / "dagster.yaml").unlink()  # it names the template's storage
    dagster_home(home)
    return home


def table_rows(home: Home, table: str) -> pa.Table:
    """Every row of ``table``, sorted on all columns (a canonical order)."""
    return query(home, f"SELECT * FROM {table} ORDER BY ALL")


def checksum(home: Home, table: str) -> str:
    """SHA-256 of the table's schema and its rows in canonical order, as values (not Arrow
    buffers: the bytes under a null slot are undefined and may differ between equal tables)."""
    data = table_rows(home, table)
    digest = hashlib.sha256(str(data.schema).encode())
    for row in data.to_pylist():
        digest.update(repr(row).encode())
    return digest.hexdigest()


def checksums(home: Home) -> dict[str, str]:
    """:func:`checksum` of every table of ``home``'s batch DAG (typed tables and CDC dimensions included)."""
    return {m.table: checksum(home, m.table) for m in dag(home)}


def write_modes(home: Home, table: str) -> list[str]:
    """The Delta write mode of every WRITE commit of ``table``, oldest first."""
    history = DeltaTable(Lake.of(home).uri(table)).history()
    return [h["operationParameters"]["mode"] for h in reversed(history) if h["operation"] == "WRITE"]
