"""Typed silver tables silver.evt_<name> on real Delta tables: one column per property, typed
from the contract; a new optional field arrives as a new column through Delta schema
evolution without rewriting older partitions. Most tests land rows in silver.events directly
(the input of typed tables, one ds overwrite per day as the batch layer writes it) and run
the typed models of the batch DAG; one runs the whole batch build from bronze."""

from __future__ import annotations

import copy
import datetime as dt
import json

from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.errors import NotFoundError
from headwater.events import EVENT_SCHEMA
from headwater.lake import catalog, sql
from headwater.lake.store import Lake
from headwater.models.dag import typed_models
from headwater.models.run import build, run_model
from headwater.registry import typed_tables
from headwater.registry.registry import Registry, table_name

UTC = dt.timezone.utc
ORDER_V1 = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "orderId": {"type": "string"},
        "revenue": {"type": "number"},
        "qty": {"type": "integer"},
        "isGift": {"type": "boolean"},
        "paidAt": {"type": "string", "format": "date-time"},
        "items": {"type": "array", "items": {"type": "string"}},
        "source": {"type": "string"},  # clashes with the event column `source`
    },
    "required": ["orderId"],
}


def event(i: int, day: dt.date, name: str, props: dict, version: str | None = "1") -> dict:
    ts = dt.datetime.combine(day, dt.time(12, 0), UTC) + dt.timedelta(minutes=i)
    return {
        "event_id": f"{name}-{day}-{i}", "event_type": "track", "event_name": name, "anonymous_id": None,
        "user_id": f"u{i % 3}", "event_ts": ts, "received_at": ts, "source": "shop", "surface": "server",
        "platform": "server", "properties": json.dumps(props), "context": "{}", "schema_version": version, "ds": day,
    }


def land(home: Home, rows: list[dict], layer: str = "silver") -> None:
    """Rows into silver.events (one ds-range overwrite, as the batch layer writes it) or
    bronze.events (an append, as the stream sink writes it)."""
    data = pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)
    lake, table = Lake.of(home), f"{layer}.events"
    if layer == "bronze":
        last = lake.committed_batch(table, "typed-tables-test")
        lake.append_once(table, data, app_id="typed-tables-test", batch_id=0 if last is None else last + 1)
    else:
        days = [r["ds"] for r in rows]
        lake.overwrite_partitions(table, data, min(days), max(days))


def run(home: Home, start: dt.date, end: dt.date) -> dict[str, int]:
    """The typed models of the batch DAG, run for ``[start, end]``."""
    return {m.table: run_model(home, m, start, end) for m in typed_models(home)}


def typed(home: Home, name: str = "Order Completed") -> pa.Table:
    return sql.query(Lake.of(home), f"SELECT * FROM silver.{table_name(name)} ORDER BY event_ts")


def table_dir(home: Home, table: str) -> Path:
    return Path(Lake.of(home).uri(table))


D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


@pytest.fixture
def home(tmp_path) -> Home:
    return Home(tmp_path)


def test_one_typed_column_per_property(home):
    Registry.from_home(home).register("Order Completed", ORDER_V1)
    land(home, [
        event(0, D1, "Order Completed", {"orderId": "o1", "revenue": 19.5, "qty": 2, "isGift": True,
                                          "paidAt": "2024-03-01T11:59:00+01:00", "items": ["a", "b"], "source": "ads"}),
        event(1, D1, "Order Completed", {"orderId": "o2"}),
        event(2, D1, "Order Completed", {"orderId": "o3", "qty": "many"}, version=None),  # accepted before registration
        event(3, D1, "Page Viewed", {"path": "/"}, version=None),
    ])
    assert run(home, D1, D1) == {"silver.evt_order_completed": 3}

    t = typed(home)
    fields = {f.name: f.type for f in t.schema}
    assert fields["order_id"] == pa.string() and fields["revenue"] == pa.float64() and fields["qty"] == pa.int64()
    assert fields["is_gift"] == pa.bool_() and fields["paid_at"] == pa.timestamp("us", tz="UTC")
    assert fields["items"] == pa.string() and fields["prop_source"] == pa.string() and fields["source"] == pa.string()
    assert "properties" not in fields and list(fields)[-1] == "ds"
    rows = t.to_pylist()
    assert [r["order_id"] for r in rows] == ["o1", "o2", "o3"]
    first = rows[0]
    assert (first["revenue"], first["qty"], first["is_gift"], json.loads(first["items"])) == (19.5, 2, True, ["a", "b"])
    assert first["paid_at"] == dt.datetime(2024, 3, 1, 10, 59, tzinfo=UTC) and (first["source"], first["prop_source"]) == ("shop", "ads")
    assert rows[1]["revenue"] is None and rows[1]["items"] is None and rows[1]["schema_version"] == "1"
    assert rows[2]["qty"] is None and rows[2]["schema_version"] is None  # does not fit the column: null
    # Only registered names get a table.
    assert [n for n in Lake.of(home).tables() if n.startswith("silver.evt_")] == ["silver.evt_order_completed"]
    # its declaration: the silver.evt_* family's partitioning and grain, the contract's columns
    (model,) = typed_models(home)
    assert model.spec.partition_by == catalog.spec("silver.evt_x").partition_by == ("ds",)
    assert model.spec.grain == catalog.spec("silver.evt_x").grain
    assert [(f.name, f.type) for f in model.schema] == [(f.name, f.type) for f in t.schema]


def test_new_optional_field_is_a_new_column_without_rewriting_history(home):
    registry = Registry.from_home(home)
    registry.register("Order Completed", ORDER_V1)
    land(home, [event(i, D1, "Order Completed", {"orderId": f"o{i}", "revenue": 10.0 + i}) for i in range(3)])
    run(home, D1, D1)
    path = table_dir(home, "silver.evt_order_completed")
    before = {f: (path / f).stat().st_mtime_ns for f in DeltaTable(str(path)).file_uris()}
    assert before

    v2 = copy.deepcopy(ORDER_V1)
    v2["properties"]["coupon"] = {"type": "string"}
    assert registry.register("Order Completed", v2)[0].version == 2
    land(home, [event(i, D2, "Order Completed", {"orderId": f"p{i}", "coupon": f"C{i}"}, version="2") for i in range(2)])
    run(home, D2, D2)

    dt_ = DeltaTable(str(path))
    assert "coupon" in [f.name for f in dt_.schema().fields]
    after = set(dt_.file_uris())
    assert set(before) <= after  # day-1 files are still the table's files ...
    assert all((path / f).stat().st_mtime_ns == m for f, m in before.items())  # ... and were not rewritten
    last = dt_.history(1)[0]
    assert last["operation"] == "WRITE" and "2024-03-02" in json.dumps(last["operationParameters"])

    rows = typed(home).to_pylist()
    assert [(r["ds"], r["coupon"], r["schema_version"]) for r in rows] == [
        (D1, None, "1"), (D1, None, "1"), (D1, None, "1"), (D2, "C0", "2"), (D2, "C1", "2")]


def test_widened_type_rebuilds_the_table(home):
    registry = Registry.from_home(home)
    registry.register("Order Completed", ORDER_V1)
    land(home, [event(0, D1, "Order Completed", {"orderId": "o1", "qty": 2})])
    run(home, D1, D1)
    v2 = copy.deepcopy(ORDER_V1)
    v2["properties"]["qty"] = {"type": "number"}  # integer -> number: TYPE_EXTENDED, BACKWARD-compatible
    registry.register("Order Completed", v2)
    land(home, [event(0, D2, "Order Completed", {"orderId": "o2", "qty": 2.5}, version="2")])
    run(home, D2, D2)
    t = typed(home)
    assert t.schema.field("qty").type == pa.float64()
    assert [(r["order_id"], r["qty"]) for r in t.to_pylist()] == [("o1", 2.0), ("o2", 2.5)]


def test_property_column_names():
    cols = typed_tables.property_columns([
        {"properties": {"orderId": {"type": "string"}, "order_id": {"type": "integer"}, "event_ts": {}, "a/b~c": {"type": "boolean"}}},
        {"properties": {"ratio": {"type": ["number", "null"]}, "tier": {"enum": ["a", "b"]}, "blob": {"type": ["string", "integer"]}}},
    ])
    assert [(c.prop, c.name, c.kind) for c in cols] == [
        ("orderId", "order_id", "string"), ("order_id", "order_id_2", "integer"), ("event_ts", "prop_event_ts", "json"),
        ("a/b~c", "a_b_c", "boolean"), ("ratio", "ratio", "number"), ("tier", "tier", "string"), ("blob", "blob", "json")]


def test_table_names():
    assert [table_name(n) for n in ("Order Completed", "$pageview", "checkout.Step-2", "signUp")] == [
        "evt_order_completed", "evt_pageview", "evt_checkout_step_2", "evt_sign_up"]


def test_no_subjects_no_tables(home):
    land(home, [event(0, D1, "Order Completed", {"orderId": "o1"}, version=None)])
    assert typed_models(home) == () and run(home, D1, D1) == {}
    elsewhere = Home(home.root / "elsewhere")
    Registry.from_home(elsewhere).register("Order Completed", ORDER_V1)
    with pytest.raises(NotFoundError, match="silver.evt_order_completed: input table silver.events is not built yet"):
        run(elsewhere, D1, D1)


def test_batch_build_writes_typed_tables_from_bronze(home):
    Registry.from_home(home).register("Order Completed", ORDER_V1)
    land(home, [event(0, D1, "Order Completed", {"orderId": "o1", "revenue": 5}),
                event(1, D2, "Order Completed", {"orderId": "o2", "revenue": 6}),
                event(2, D2, "Order Completed", {"orderId": "o2", "revenue": 6}) | {"event_id": "Order Completed-2024-03-02-1"}],  # a re-send
         layer="bronze")
    written = build(home, D1, D2)
    assert written["silver.evt_order_completed"] == 2  # deduplicated by silver.events
    assert [(r["order_id"], r["revenue"], r["ds"]) for r in typed(home).to_pylist()] == [("o1", 5.0, D1), ("o2", 6.0, D2)]

    # A new optional field, then `headwater batch --start D3 --end D3`: a new column; the
    # files of D1 and D2 are neither replaced nor rewritten.
    path = table_dir(home, "silver.evt_order_completed")
    before = {f: (path / f).stat().st_mtime_ns for f in DeltaTable(str(path)).file_uris()}
    v2 = copy.deepcopy(ORDER_V1)
    v2["properties"]["coupon"] = {"type": "string"}
    Registry.from_home(home).register("Order Completed", v2)
    d3 = dt.date(2024, 3, 3)
    land(home, [event(0, d3, "Order Completed", {"orderId": "o3", "coupon": "C"}, version="2")], layer="bronze")
    assert build(home, d3, d3)["silver.evt_order_completed"] == 1
    assert set(before) <= set(DeltaTable(str(path)).file_uris())
    assert all((path / f).stat().st_mtime_ns == m for f, m in before.items())
    assert [(r["order_id"], r["coupon"]) for r in typed(home).to_pylist()] == [("o1", None), ("o2", None), ("o3", "C")]
