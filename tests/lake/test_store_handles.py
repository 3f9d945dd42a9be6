"""``Lake(keep_open=True)``: one DeltaTable per table, brought up to date instead of reopened,
sees every commit (its own, another writer's, a rewrite of the table) and keeps txns exact."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

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
