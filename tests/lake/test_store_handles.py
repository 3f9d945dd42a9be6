"""``Lake(keep_open=True)``: one DeltaTable per table, brought up to date instead of reopened,
sees every commit (its own, another writer's, a rewrite of the table) and keeps txns exact."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from deltalake import DeltaTable

from headwater.lake.store import Lake

D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def hourly(ds: list[dt.date], events: list[int]) -> pa.Table:
    return pa.table({"events": pa.array(events, pa.int64()), "ds": pa.array(ds, pa.date32())})


def rows(lake: Lake) -> list[int]:
    return sorted(lake.dataset("gold.events_hourly").to_table().column("events").to_pylist())


def test_a_kept_handle_sees_every_commit_and_the_txns(tmp_path):
    kept, other = Lake(tmp_path / "lake", keep_open=True), Lake(tmp_path / "lake")
    kept.append_once("gold.events_hourly", hourly([D1], [1]), app_id="q", batch_id=0)
    handle = kept._open("gold.events_hourly")
    kept.append_once("gold.events_hourly", hourly([D1], [2]), app_id="q", batch_id=1)
    assert kept._open("gold.events_hourly") is handle  # reused, not reopened
    other.append_once("gold.events_hourly", hourly([D2], [3]), app_id="q", batch_id=2)  # another writer
    assert kept.committed_batch("gold.events_hourly", "q") == 2
    kept.append_once("gold.events_hourly", hourly([D2], [4]), app_id="q", batch_id=3)
    assert rows(other) == [1, 2, 3, 4] and other.committed_batch("gold.events_hourly", "q") == 3
    other.compact("gold.events_hourly")  # a rewrite under the handle
    kept.append_once("gold.events_hourly", hourly([D1], [5]), app_id="q", batch_id=4)
    assert rows(other) == [1, 2, 3, 4, 5]


def test_a_pinned_scope_reads_one_version_and_its_own_writes(tmp_path, monkeypatch):
    lake, other = Lake(tmp_path / "lake"), Lake(tmp_path / "lake")
    table = "gold.events_hourly"
    with lake.pinned():
        assert not lake.exists(table)
        other.append_once(table, hourly([D1], [1]), app_id="q", batch_id=0)  # another writer creates it
        assert not lake.exists(table)  # the scope's answer holds
        lake.append(table, hourly([D1], [2]))  # created here as far as the scope knows: asked again
        assert lake.exists(table) and rows(lake) == [1, 2]
        other.append_once(table, hourly([D2], [3]), app_id="q", batch_id=1)
        assert rows(lake) == [1, 2] and lake.ds_days(table) == [D1]  # pinned: not seen

        calls = {"listings": 0}
        real_update, real_is = DeltaTable.update_incremental, DeltaTable.is_deltatable

        def update(self):
            calls["listings"] += 1
            real_update(self)

        def is_table(uri, storage_options=None):
            calls["listings"] += 1
            return real_is(uri, storage_options)

        monkeypatch.setattr(DeltaTable, "update_incremental", update)
        monkeypatch.setattr(DeltaTable, "is_deltatable", staticmethod(is_table))
        for _ in range(3):  # what a build asks about a table, again and again: no listing
            assert lake.exists(table) and lake.ds_days(table) == [D1] and lake.version(table) == 1
            lake.dataset(table)
        assert calls["listings"] == 0
        monkeypatch.undo()

        # its own writes are seen at once, on top of what they were committed over
        lake.overwrite_partitions(table, hourly([D1], [4]), D1, D1)
        assert rows(lake) == [3, 4] and lake.ds_days(table) == [D1, D2]
        lake.delete(table, "events = 4")
        lake.compact(table)
        assert rows(lake) == [3] and lake.ds_days(table) == [D2]
    other.append_once(table, hourly([D2], [5]), app_id="q", batch_id=2)
    assert rows(lake) == [3, 5] and lake.exists(table)  # outside the scope: up to date again
