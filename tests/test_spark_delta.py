"""The distributed writer's executor side (pure pyarrow: no Spark needed) and the driver's
commit (``Lake.commit_files``): files in delta-rs' layout with the statistics delta-rs
writes, one transaction, ``replaceWhere`` refusals, exactly-once bookkeeping."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.errors import InvalidInputError, NotFoundError
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.spark_delta import ADD_SCHEMA, Target, _headwater_error, num_records, write_files
from deltalake.transaction import AddAction

UTC = dt.timezone.utc
D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def events(n: int, day: dt.date, prefix: str = "e") -> pa.Table:
    ts = [dt.datetime.combine(day, dt.time(12), UTC) + dt.timedelta(seconds=i, microseconds=1500 * i) for i in range(n)]
    return pa.table(
        {
            "event_id": [f"{prefix}{i}" for i in range(n)],
            "event_type": ["track"] * n,
            "event_name": ["Viewed" if i % 2 else "x" * 40 for i in range(n)],  # long strings: bounds cut or left out
            "anonymous_id": [None] * n,
            "user_id": [f"u{i % 3}" for i in range(n)],
            "event_ts": ts,
            "received_at": ts,
            "source": ["web"] * n,
            "surface": ["client"] * n,
            "platform": ["web"] * n,
            "properties": ["{}"] * n,
            "context": ["{}"] * n,
            "schema_version": [None if i % 2 else "3" for i in range(n)],
            "ds": [day] * n,
        },
        schema=EVENT_SCHEMA,
    )


def adds_of(rows: list[pa.RecordBatch]) -> list[AddAction]:
    table = pa.Table.from_batches(rows, schema=ADD_SCHEMA)
    return [AddAction(r["path"], r["size"], json.loads(r["partition_values"]), r["modification_time"], True, r["stats"])
            for r in table.to_pylist()]


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake.of(Home(tmp_path))


def test_files_and_stats_are_delta_rs_s(lake):
    """Executor-written files read back like delta-rs' own: same rows through Lake.dataset's
    Hive fast path, same num_records / null counts / bounds in the log (timestamps at ms:
    the max rounded up, a bound; a string max over 32 characters left out)."""
    data = pa.concat_tables([events(5, D1), events(4, D2, "f")])
    target = Target.of(lake, "bronze.events", EVENT_SCHEMA)
    # two input batches, two partitions: one file per partition
    out = list(write_files(iter(data.to_batches(max_chunksize=3)), [target]))
    adds = adds_of(out)
    assert sorted(a.partition_values["ds"] for a in adds) == ["2024-03-01", "2024-03-02"]
    assert all(a.path.startswith(f"ds={a.partition_values['ds']}/part-") and a.path.endswith(".snappy.parquet") for a in adds)
    assert num_records(adds) == 9
    lake.commit_files("bronze.events", adds, EVENT_SCHEMA, app_id="t", batch_id=0)
    assert lake.dataset("bronze.events").to_table().sort_by("event_id").equals(data.sort_by("event_id"))

    ref = Lake.of(Home(lake.root + "-ref"))  # the same rows written by delta-rs
    ref.append("bronze.events", data)
    ours = lake.add_actions("bronze.events").sort_by("partition.ds")
    theirs = ref.add_actions("bronze.events").sort_by("partition.ds")
    for name in theirs.column_names:
        if name.startswith(("null_count.", "min.")) or name == "num_records":
            assert ours[name].equals(theirs[name]), name
    for name in ("max.event_id", "max.user_id", "max.source", "max.schema_version"):
        assert ours[name].equals(theirs[name]), name
    # timestamps: delta-rs truncates the max to ms (then no upper bound); ours rounds it up
    for day, got in zip((D1, D2), ours["max.event_ts"].to_pylist()):
        exact = pc.max(data.filter(pc.equal(data["ds"], day))["event_ts"]).as_py()
        assert exact <= got < exact + dt.timedelta(milliseconds=1)
    assert ours["min.event_name"].to_pylist() == ["Viewed", "Viewed"]  # "x" * 40 > "Viewed"
    assert "max.event_name" not in ours.column_names or ours["max.event_name"].null_count == 2  # 40 chars: left out


def test_transform_routes_rows_to_several_tables(lake):
    """One pass over the input writes each target's share; a target given nothing has no file."""
    data = events(6, D1)
    targets = [Target.of(lake, "bronze.events", EVENT_SCHEMA), Target.of(lake, "bronze.events", EVENT_SCHEMA, prefix="_staging/x")]
    out = pa.Table.from_batches(list(write_files(iter(data.to_batches()), targets, lambda b: (b.slice(0, 2), None))), schema=ADD_SCHEMA)
    assert out["target"].to_pylist() == [0] and json.loads(out["stats"][0].as_py())["numRecords"] == 2


def test_rows_that_do_not_fit_fail_the_task(lake):
    bad = events(2, D1).set_column(0, pa.field("event_id", pa.string()), pa.array([None, "x"]))
    with pytest.raises(InvalidInputError, match="bronze.events: the rows do not fit the table"):
        list(write_files(iter(bad.to_batches()), [Target.of(lake, "bronze.events", EVENT_SCHEMA)]))


def test_commit_overwrite_is_replace_where(lake):
    """A partition overwrite replaces [start, end] only, adds new columns, refuses files
    outside the range (nothing committed); without days it replaces the whole table."""
    schema = pa.schema([pa.field("ds", pa.date32()), pa.field("n", pa.int64())])
    target = Target.of(lake, "gold.active_users", schema)

    def files(rows: dict, schema: pa.Schema = schema, t: Target = target) -> list[AddAction]:
        return adds_of(list(write_files(iter(pa.table(rows, schema=schema).to_batches()), [t])))

    lake.commit_files("gold.active_users", files({"ds": [D1, D2], "n": [1, 2]}), schema, mode="overwrite", days=(D1, D2))
    wider = schema.append(pa.field("m", pa.string()))
    lake.commit_files("gold.active_users", files({"ds": [D2], "n": [5], "m": ["x"]}, wider, Target.of(lake, "gold.active_users", wider)),
                      wider, mode="overwrite", days=(D2, D2))
    rows = lambda: sorted(lake.dataset("gold.active_users").to_table().to_pylist(), key=lambda r: r["ds"])  # noqa: E731
    assert rows() == [{"ds": D1, "n": 1, "m": None}, {"ds": D2, "n": 5, "m": "x"}]
    version = lake.version("gold.active_users")
    with pytest.raises(InvalidInputError, match=r"rows with ds \['2024-03-02'\] outside 2024-03-01..2024-03-01"):
        lake.commit_files("gold.active_users", files({"ds": [D2], "n": [9]}), schema, mode="overwrite", days=(D1, D1))
    assert lake.version("gold.active_users") == version
    with pytest.raises(InvalidInputError, match="mode"):
        lake.commit_files("gold.active_users", [], schema, mode="append", days=(D1, D1))
    lake.commit_files("gold.active_users", files({"ds": [D1], "n": [7]}), schema, mode="overwrite")
    assert rows() == [{"ds": D1, "n": 7}]
    assert DeltaTable(lake.uri("gold.active_users")).history(1)[0]["operation"] == "WRITE"


def test_commit_carries_the_txn(lake):
    target = Target.of(lake, "bronze.events", EVENT_SCHEMA)
    for epoch in (0, 1):
        adds = adds_of(list(write_files(iter(events(2, D1, f"e{epoch}-").to_batches()), [target])))
        lake.commit_files("bronze.events", adds, EVENT_SCHEMA, app_id="spark-x-bronze", batch_id=epoch)
    assert lake.committed_batch("bronze.events", "spark-x-bronze") == 1
    assert lake.row_count("bronze.events") == 4


def test_executor_errors_come_back_as_their_class():
    trace = 'Traceback ...\n  File "x.py"\nheadwater.errors.InvalidInputError: gold.out: the rows do not fit the table: total\n'
    err = _headwater_error(RuntimeError(trace))
    assert isinstance(err, InvalidInputError) and str(err) == "gold.out: the rows do not fit the table: total"
    assert isinstance(_headwater_error(RuntimeError("headwater.errors.NotFoundError: t")), NotFoundError)
    plain = RuntimeError("ZeroDivisionError: division by zero")
    assert _headwater_error(plain) is plain


def test_the_writer_works_on_an_object_store(s3):
    """Through ``Lake.filesystem`` the executors' files land in S3 (the local S3-compatible
    server) and the driver's commit references them."""
    lake = Lake(f"s3://{s3.create_bucket()}/lake", s3.storage_options())
    data = pa.concat_tables([events(3, D1), events(2, D2, "f")])
    adds = adds_of(list(write_files(iter(data.to_batches()), [Target.of(lake, "bronze.events", EVENT_SCHEMA)])))
    lake.commit_files("bronze.events", adds, EVENT_SCHEMA, app_id="t", batch_id=0)
    assert lake.committed_batch("bronze.events", "t") == 0
    assert lake.dataset("bronze.events").to_table().sort_by("event_id").equals(data.sort_by("event_id"))
