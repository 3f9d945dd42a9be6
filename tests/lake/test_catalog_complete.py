"""Every Delta table that the platform writes is declared in the catalog, where the Lake says.

One home goes through what the platform does: a demo-sized synthetic day in bronze, SDK
requests through a real collector (good events, a contract violation), the stream with its
side outputs (late events, a dead letter, bad rows), the batch build (silver, gold, the typed
table of a registered event) and a bad-row replay. Then the lake directory is walked: each
Delta table found must be declared (``catalog.declared``) and be the table the Lake puts
there."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
from deltalake import DeltaTable

from headwater.collector import badrows
from headwater.config import Home
from headwater.demo import generate
from headwater.lake import catalog
from headwater.lake.store import Lake
from headwater.log import open_log
from headwater.models.run import build
from headwater.registry.registry import Registry
from tests.helpers import run_stream, start_collector

WRITE_KEY, SOURCE = "wk-catalog-test-key", "web"
DAY = dt.date(2024, 3, 1)
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def track(mid: str, event: str, ts: dt.datetime, **props) -> dict:
    return {"type": "track", "messageId": mid, "userId": "u1", "event": event, "properties": props, "timestamp": ts.isoformat()}


def delta_tables(root: Path) -> list[Path]:
    """Directories under ``root`` holding a Delta log."""
    return sorted(p.parent for p in root.rglob("_delta_log") if p.is_dir())


def test_every_table_written_is_declared_and_lives_where_the_lake_says(tmp_path):
    home = Home(tmp_path / "home")
    home.add_source(SOURCE, WRITE_KEY)
    home.update_source(SOURCE, unregistered_events="reject")
    registry = Registry.from_home(home)
    registry.register("Order Completed", {"type": "object", "properties": {"price": {"type": "number"}}, "required": ["price"]})
    registry.close()
    generate.write_day(home, 31_000, DAY, seed=1)  # the demo's size, written as the stream would

    with start_collector(home.root, write_key=WRITE_KEY, source=SOURCE) as c, httpx.Client(base_url=c.url, timeout=10) as http:
        r = http.post("/v1/batch", json={"writeKey": WRITE_KEY, "batch": [
            track("ok-1", "Order Completed", NOW, price=10),
            track("signed-up", "Signed Up", NOW),  # no contract, and the source rejects those: a bad row
        ]})
        assert (r.json()["accepted"], r.json()["rejected"]) == (1, 1), r.text
        run_stream(home)  # the watermark passes NOW - 10 min ...
        r = http.post("/v1/batch", json={"writeKey": WRITE_KEY, "batch": [
            track("late-1", "Order Completed", NOW - dt.timedelta(hours=2), price=3)]})  # ... so this one is late
        assert r.json()["accepted"] == 1, r.text
    undecodable_record(home)
    run_stream(home)
    build(home)
    home.update_source(SOURCE, unregistered_events="accept")  # the fix, then the replay marks the row
    assert badrows.replay(home).replayed == 1

    lake = Lake.of(home)
    found = {}
    for path in delta_tables(Path(home.settings.lake_root)):
        rel = path.relative_to(home.settings.lake_root)
        name = ".".join(rel.parts)
        assert catalog.declared(name), f"{rel}: a Delta table the catalog does not declare"
        assert Path(lake.uri(name)) == path
        found[name] = path
    assert sorted(found) == lake.tables()
    expected = {
        "bronze.events", "bronze.bad_rows", "bronze.dead_letter", "bronze.late_events", "bronze.bad_rows_replayed",
        "silver.events", "silver.identity_map", "silver.dim_user", "silver.evt_order_completed",
        "gold.events_hourly", "gold.sessions", "gold.active_users", "gold.retention",
    }
    assert expected <= set(found), sorted(expected - set(found))
    assert any(name.startswith("realtime.") for name in found)
    for name, path in found.items():  # stored as declared: partition columns, and the schema of a fixed table
        spec = catalog.spec(name)
        assert DeltaTable(str(path)).metadata().partition_columns == list(spec.partition_by), name
        if spec.schema is not None:
            assert lake.schema(name).names == spec.schema.names, name


def undecodable_record(home: Home) -> None:
    """A log record the stream cannot decode (its dead letter goes to bronze.dead_letter):
    stored raw, as tests/stream/test_processor.py does (the SQLite log's own insert)."""
    log = open_log(home.settings.log_url)
    try:
        log._insert([("events", 0, 1, b"not arrow")])
    finally:
        log.close()

