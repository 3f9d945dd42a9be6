"""headwater.lake.store.Lake: tables by name, idempotent writes, snapshots, error wrapping."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.errors import ConflictError, InvalidInputError, NotFoundError, TransientError
from headwater.lake import store
from headwater.lake.store import Lake

D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)


def hourly(ds: list[dt.date], events: list[int]) -> pa.Table:
    return pa.table({"events": pa.array(events, pa.int64()), "ds": pa.array(ds, pa.date32())})


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


def test_tables_are_addressed_by_declared_name(lake, tmp_path):
    assert lake.uri("bronze.events") == str(tmp_path / "lake" / "bronze" / "events")
    assert lake.uri("silver.evt_order_completed") == str(tmp_path / "lake" / "silver" / "evt_order_completed")
    assert Lake("s3://bucket/lake/", {"conditional_put": "etag"}).uri("gold.sessions") == "s3://bucket/lake/gold/sessions"
    assert Lake.of(Home(tmp_path / "h")).uri("gold.sessions") == str(tmp_path / "h" / "lake" / "gold" / "sessions")
    with pytest.raises(NotFoundError, match="not declared"):
        lake.uri("gold.nope")
    with pytest.raises(InvalidInputError, match="layer"):
        lake.uri("events")
    assert not lake.exists("bronze.events")


def test_tables_lists_fixed_tables_and_family_members(lake, tmp_path):
    lake.append("gold.events_hourly", hourly([D1], [1]))
    lake.append("realtime.per_minute", pa.table({"n": [1]}))
    lake.overwrite_partitions("silver.evt_signed_up", hourly([D1], [1]), D1, D1)
    (tmp_path / "lake" / "silver" / "evt_empty_dir").mkdir()  # no Delta log: not a table
    (tmp_path / "lake" / "attic" / "old").mkdir(parents=True)  # undeclared layer: ignored
    assert lake.tables() == ["gold.events_hourly", "realtime.per_minute", "silver.evt_signed_up"]


def test_append_once_records_the_batch_and_partitions_as_declared(lake):
    assert lake.committed_batch("gold.events_hourly", "app") is None
    lake.append_once("gold.events_hourly", hourly([D1, D2], [1, 2]), app_id="app", batch_id=7)
    assert lake.committed_batch("gold.events_hourly", "app") == 7
    assert lake.committed_batch("gold.events_hourly", "other") is None
    assert DeltaTable(lake.uri("gold.events_hourly")).metadata().partition_columns == ["ds"]
    assert (lake.version("gold.events_hourly"), lake.row_count("gold.events_hourly")) == (0, 2)
    assert lake.ds_range("gold.events_hourly") == (D1, D2)
    assert lake.ds_range("gold.sessions") is None


def test_overwrite_partitions_replaces_the_range_only(lake):
    lake.overwrite_partitions("gold.events_hourly", hourly([D1, D2, D3], [1, 2, 3]), D1, D3)
    lake.overwrite_partitions("gold.events_hourly", hourly([D2], [20]), D2, D2)
    rows = sorted(lake.dataset("gold.events_hourly").to_table().to_pylist(), key=lambda r: r["ds"])
    assert [r["events"] for r in rows] == [1, 20, 3]
    with pytest.raises(InvalidInputError, match="gold.events_hourly"):  # a row outside the range
        lake.overwrite_partitions("gold.events_hourly", hourly([D3], [9]), D1, D2)


def test_upsert_and_merge_carry_the_txn(lake):
    t = "realtime.counts"
    rows = pa.table({"k": ["a", "b"], "n": [1, 2], "_delete": [False, False]})
    lake.upsert_once(t, rows, ("k",), app_id="s", batch_id=0)
    lake.upsert_once(t, pa.table({"k": ["a", "b", "c"], "n": [10, 0, 3], "_delete": [False, True, False]}), ("k",), app_id="s", batch_id=1)
    assert sorted(lake.dataset(t).to_table().to_pylist(), key=lambda r: r["k"]) == [{"k": "a", "n": 10}, {"k": "c", "n": 3}]
    assert lake.committed_batch(t, "s") == 1
    lake.merge(t, pa.table({"k": ["c"], "n": [30]}), "t.k = s.k", app_id="m", batch_id=5, update={"n": "s.n"})
    assert sorted(r["n"] for r in lake.dataset(t).to_table().to_pylist()) == [10, 30]
    assert lake.committed_batch(t, "m") == 5
    with pytest.raises(NotFoundError):
        lake.merge("realtime.absent", rows, "t.k = s.k", app_id="m", batch_id=0, insert={"k": "s.k"})


def test_replace_table_replaces_the_schema_and_compact_keeps_rows(lake):
    t = "silver.identity_map"
    lake.replace_table(t, pa.table({"a": [1]}))
    lake.replace_table(t, pa.table({"b": ["x", "y"]}), app_id="build", batch_id=3)
    assert lake.schema(t).names == ["b"] and lake.committed_batch(t, "build") == 3
    for i in range(3):
        lake.append("gold.events_hourly", hourly([D1], [i]))
    lake.compact("gold.events_hourly", days=[D1])
    assert len(lake.add_actions("gold.events_hourly")) == 1 and lake.row_count("gold.events_hourly") == 3
    lake.compact("gold.sessions")  # absent: nothing to do


def test_dataset_is_reused_until_the_version_changes(lake):
    lake.append("gold.events_hourly", hourly([D1], [1]))
    first = lake.dataset("gold.events_hourly")
    assert lake.dataset("gold.events_hourly") is first
    Lake(lake.root).append("gold.events_hourly", hourly([D2], [2]))  # another writer
    second = lake.dataset("gold.events_hourly")
    assert second is not first and second.count_rows() == 2 and first.count_rows() == 1
    assert lake.dataset("gold.events_hourly") is second


def test_errors_are_headwater_errors(lake):
    with pytest.raises(NotFoundError, match="does not exist"):
        lake.dataset("bronze.events")
    with pytest.raises(NotFoundError):
        lake.version("bronze.events")
    lake.append("gold.events_hourly", hourly([D1], [1]))
    with pytest.raises(InvalidInputError, match="events: string") as e:
        lake.append("gold.events_hourly", pa.table({"events": ["x"], "ds": [D1]}))
    assert e.value.field == "events"
    with pytest.raises(InvalidInputError, match="extra: not a column") as e:
        lake.append("gold.events_hourly", hourly([D1], [1]).append_column("extra", pa.array([1])))
    assert e.value.field == "extra"
    with pytest.raises(InvalidInputError, match="events: missing") as e:
        lake.append("gold.events_hourly", pa.table({"ds": [D1]}))
    with pytest.raises(NotFoundError) as e:
        lake.add_actions("gold.events_hourly", version=9)
    assert e.value.field == "version"


def test_commit_conflicts_are_transient(lake, monkeypatch):
    """Two writers replacing the same table at once: the loser gets TransientError (retry)."""
    from deltalake.exceptions import CommitFailedError, DeltaProtocolError

    def fail(exc):
        def write(*a, **kw):
            raise exc("conflict")
        return write

    monkeypatch.setattr(store, "write_deltalake", fail(CommitFailedError))
    with pytest.raises(TransientError) as e:
        lake.append("gold.events_hourly", hourly([D1], [1]))
    assert e.value.retry_after_s is not None
    monkeypatch.setattr(store, "write_deltalake", fail(DeltaProtocolError))
    with pytest.raises(ConflictError):
        lake.append("gold.events_hourly", hourly([D1], [1]))


def test_dataset_cache_is_thread_safe(lake):
    lake.append("gold.events_hourly", hourly([D1], [1]))
    got, errors = [], []

    def read():
        try:
            got.append(lake.dataset("gold.events_hourly").count_rows())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and got == [1] * 8


def test_dataset_reads_what_delta_rs_reads(lake, monkeypatch):
    """The Hive-layout fast path gives the rows delta-rs' own dataset gives: null partition
    values, a column added by a later write (null in older files), ``ds`` pruning."""
    t = "gold.events_hourly"
    lake.append(t, pa.table({"events": pa.array([1, 2], pa.int64()), "ds": pa.array([D1, None], pa.date32())}))
    lake.overwrite_partitions(t, pa.table({"events": pa.array([3], pa.int64()), "note": ["new"], "ds": pa.array([D2], pa.date32())}), D2, D2)
    fast = lake.dataset(t)
    monkeypatch.setattr(store, "_hive_layout", lambda adds, columns: False)
    exact = Lake(lake.root).dataset(t)
    assert fast.schema.equals(exact.schema)
    rows = lambda d, **kw: sorted(d.to_table(**kw).to_pylist(), key=repr)  # noqa: E731
    assert rows(fast) == rows(exact) == sorted([{"events": 1, "note": None, "ds": D1}, {"events": 2, "note": None, "ds": None},
                                                {"events": 3, "note": "new", "ds": D2}], key=repr)
    import pyarrow.dataset as pads

    assert rows(fast, filter=pads.field("ds") == pa.scalar(D2)) == [{"events": 3, "note": "new", "ds": D2}]


def _age_removes(lake: Lake, table: str, version: int, hours: float) -> None:
    """Backdate the ``remove`` actions of commit ``version`` by ``hours`` (as if it had been
    made that long ago): the Delta log is JSON lines; vacuum reads deletionTimestamp."""
    import json
    import time
    from pathlib import Path

    path = Path(lake.uri(table)) / "_delta_log" / f"{version:020d}.json"
    actions = [json.loads(line) for line in path.read_text().splitlines()]
    for a in actions:
        if "remove" in a:
            a["remove"]["deletionTimestamp"] = int((time.time() - hours * 3600) * 1000)
    path.write_text("".join(json.dumps(a) + "\n" for a in actions))


def test_vacuum_removes_files_superseded_before_the_retention_and_time_travel_within_it_works(lake):
    name = "gold.events_hourly"
    days = [D1, D2]
    for n in (1, 2, 3):  # versions 0, 1, 2: each replaces the last
        lake.overwrite_partitions(name, hourly(days, [n, n]), D1, D2)
    old_files = set(lake.add_actions(name, 0).column("path").to_pylist())
    v1_files = set(lake.add_actions(name, 1).column("path").to_pylist())
    _age_removes(lake, name, 1, hours=10)  # version 0's files were superseded 10 h ago, version 1's just now
    assert lake.vacuum(name, 5) == sorted(old_files)
    assert lake.vacuum(name, 5) == []  # nothing more to do
    for path in v1_files | set(lake.add_actions(name).column("path").to_pylist()):
        assert (Path(lake.uri(name)) / path).exists()
    # time travel within the retention: version 1 reads in full
    assert DeltaTable(lake.uri(name), version=1).to_pyarrow_table().column("events").to_pylist() == [2, 2]
    assert lake.dataset(name).to_table().column("events").to_pylist() == [3, 3]
    with pytest.raises(Exception):  # beyond it: version 0's files are gone
        DeltaTable(lake.uri(name), version=0).to_pyarrow_table()
    assert lake.vacuum_all(5) == {name: []}
    assert lake.vacuum("gold.sessions", 5) == []  # a table not written yet
    with pytest.raises(InvalidInputError, match="retention_h"):
        lake.vacuum(name, -1)


def test_vacuum_removes_files_no_commit_references(lake):
    """What a failed write or compaction leaves (data files never committed) goes once older
    than the retention; younger ones stay (a write in progress may still commit them)."""
    import os
    import time

    name = "gold.events_hourly"
    lake.overwrite_partitions(name, hourly([D1], [1]), D1, D1)
    root = Path(lake.uri(name))
    orphan, fresh = root / "ds=2024-03-01" / "part-orphan.parquet", root / "ds=2024-03-01" / "part-fresh.parquet"
    orphan.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    old = time.time() - 10 * 3600
    os.utime(orphan, (old, old))
    assert lake.vacuum(name, 5) == ["ds=2024-03-01/part-orphan.parquet"]
    assert fresh.exists() and lake.dataset(name).to_table().num_rows == 1
