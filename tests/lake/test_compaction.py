"""Lake upkeep (headwater.lake.maintenance): small files counted from the Delta log, the
stream's file counter, sorted clustering of closed days, realtime retention, and
``maintain`` putting them together."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from headwater.errors import InvalidInputError, TransientError
from headwater.lake import maintenance
from headwater.lake.maintenance import ClusterState, FileCounter, Policy, maintain, small_files
from headwater.lake.store import CommitConflictError, Lake
from headwater.settings import LakeSettings

D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
NOW = dt.datetime(2024, 3, 3, 12, tzinfo=dt.timezone.utc)  # D3 is today: D1 and D2 are closed
UTC = pa.timestamp("us", tz="UTC")
NAMES = [f"event_{i}" for i in range(8)]


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


def hourly(day: dt.date, n: int = 1) -> pa.Table:
    return pa.table({"events": pa.array(range(n), pa.int64()), "ds": pa.array([day] * n, pa.date32())})


def silver(day: dt.date, n: int, seed: int = 0) -> pa.Table:
    """``n`` silver.events-like rows of ``day``, event names and persons interleaved."""
    return pa.table({
        "event_id": [f"{day}-{seed}-{i}" for i in range(n)],
        "event_name": [NAMES[(i * 5 + seed) % len(NAMES)] for i in range(n)],
        "person_id": [f"p{(i * 7919) % 1000:04d}" for i in range(n)],
        "ds": pa.array([day] * n, pa.date32()),
    })


def windows(ends: list[dt.datetime]) -> pa.Table:
    return pa.table({"window_start": pa.array([e - dt.timedelta(minutes=1) for e in ends], UTC),
                     "window_end": pa.array(ends, UTC), "events": pa.array([1] * len(ends), pa.int64())})


def content(lake: Lake, table: str) -> list[dict]:
    return sorted(DeltaTable(lake.uri(table)).to_pyarrow_table().to_pylist(), key=str)


def test_small_files_are_counted_per_partition_from_the_log(lake):
    for day, n in ((D1, 3), (D2, 1)):
        for _ in range(n):
            lake.append("gold.events_hourly", hourly(day))
    assert small_files(lake, "gold.events_hourly", 1 << 20) == {D1: 3, D2: 1}
    assert small_files(lake, "gold.events_hourly", 10) == {}  # no file is under 10 bytes
    lake.append("realtime.events_per_minute", windows([NOW]))
    assert small_files(lake, "realtime.events_per_minute", 1 << 20) == {None: 1}


def test_the_file_counter_reads_the_log_only_to_confirm_and_compacts_what_is_due(lake, monkeypatch):
    counter = FileCounter(lake, Policy(min_files=3, target_bytes=1 << 20))
    reads = []
    real = maintenance.small_files
    monkeypatch.setattr(maintenance, "small_files", lambda *a: reads.append(a[1]) or real(*a))
    for i in range(2):
        lake.append("gold.events_hourly", hourly(D1))
        counter.appended("gold.events_hourly", hourly(D1))
        assert counter.due() == {}
    assert len(reads) == 1  # the table's first check; the second append is counted in memory
    lake.append("gold.events_hourly", pa.concat_tables([hourly(D1), hourly(D2)]))
    counter.appended("gold.events_hourly", pa.concat_tables([hourly(D1), hourly(D2)]))
    assert counter.due() == {"gold.events_hourly": [D1]} and len(reads) == 2  # confirmed from the log
    before = content(lake, "gold.events_hourly")
    assert counter.compact("gold.events_hourly", [D1]) == {"files_removed": 3, "files_added": 1}
    assert content(lake, "gold.events_hourly") == before
    assert small_files(lake, "gold.events_hourly", 1 << 20) == {D1: 1, D2: 1}
    assert counter.due() == {}


def test_a_partition_whose_compaction_failed_stays_due(lake, monkeypatch):
    counter = FileCounter(lake, Policy(min_files=2, target_bytes=1 << 20))
    for _ in range(2):
        lake.append("bronze.late_events", hourly(D1))
        counter.appended("bronze.late_events", hourly(D1))
    monkeypatch.setattr(lake, "compact", lambda *a: (_ for _ in ()).throw(TransientError("disk full")))
    with pytest.raises(TransientError):
        counter.compact("bronze.late_events", counter.due()["bronze.late_events"])
    assert counter.due() == {"bronze.late_events": [D1]}  # no new append needed to retry
    monkeypatch.undo()
    counter.compact("bronze.late_events", [D1])
    assert counter.due() == {}


def test_cluster_sorts_a_day_into_row_groups_that_a_filter_on_event_name_skips(lake):
    for seed in range(4):
        lake.append("silver.events", silver(D1, 2_000, seed))
    before = content(lake, "silver.events")

    def groups_to_read() -> tuple[int, int]:
        """(row groups whose event_name statistics admit event_3, all row groups)."""
        hit = total = 0
        for path in DeltaTable(lake.uri("silver.events")).file_uris():
            meta = pq.ParquetFile(path).metadata
            col = meta.schema.names.index("event_name")
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(col).statistics
                total += 1
                hit += stats.min <= "event_3" <= stats.max
        return hit, total

    assert groups_to_read() == (4, 4)  # every appended file holds every name
    assert lake.cluster("silver.events", ("event_name", "person_id"), [D1], row_group_rows=500) == {"files_removed": 4, "files_added": 1}
    hit, total = groups_to_read()
    assert total == 16 and hit <= 3  # 1/8 of the rows: 1000 rows in 500-row groups, 2 or 3 of 16
    assert content(lake, "silver.events") == before
    names = DeltaTable(lake.uri("silver.events")).to_pyarrow_table().column("event_name").to_pylist()
    assert names == sorted(names)
    lake.append("silver.events", silver(D2, 10))
    assert lake.cluster("silver.events", ("event_name",), [D3]) == {"files_removed": 0, "files_added": 0}  # no such day


def test_cluster_fails_rather_than_lose_a_concurrent_write_to_the_day(lake, monkeypatch):
    lake.append("silver.events", silver(D1, 100))
    real = Lake._snapshot

    def racing(self, handle, table):  # a write to the day lands after the sort read its version
        self.append("silver.events", silver(D1, 1, seed=9))
        return real(self, handle, table)

    monkeypatch.setattr(Lake, "_snapshot", racing)
    with pytest.raises(CommitConflictError):
        lake.cluster("silver.events", ("event_name", "person_id"), [D1])
    assert lake.row_count("silver.events") == 101


def test_delete_counts_rows_and_names_a_bad_predicate(lake):
    lake.append("realtime.events_per_minute", windows([NOW - dt.timedelta(days=9), NOW]))
    assert lake.delete("realtime.events_per_minute", f"window_end < '{(NOW - dt.timedelta(days=7)).isoformat()}'") == 1
    assert lake.row_count("realtime.events_per_minute") == 1
    with pytest.raises(InvalidInputError, match="realtime.events_per_minute"):
        lake.delete("realtime.events_per_minute", "no_such_column < 3")


def settings(**kw) -> LakeSettings:
    return LakeSettings(**{"compact_min_files": 3, "vacuum_retention_h": 0, **kw})


def test_maintain_expires_realtime_windows_compacts_due_partitions_and_reports(lake):
    lake.append("realtime.events_per_minute", windows([NOW - dt.timedelta(days=8), NOW - dt.timedelta(days=6)]))
    lake.append("realtime.events_per_minute", windows([NOW]))
    for _ in range(3):
        lake.append("gold.events_hourly", hourly(D1))
    lake.append("gold.events_hourly", hourly(D2))
    gold = content(lake, "gold.events_hourly")
    got = {r.table: r for r in maintain(lake, settings(), NOW)}
    rt, g = got["realtime.events_per_minute"], got["gold.events_hourly"]
    assert (rt.rows_deleted, rt.files_before) == (1, 2)
    assert lake.row_count("realtime.events_per_minute") == 2
    assert (g.files_before, g.files_after, g.partitions_compacted, g.rows_deleted) == (4, 2, 1, 0)
    assert g.files_vacuumed == 3 and all(p.startswith("ds=2024-03-01/") for p in g.paths)  # retention 0 h
    assert content(lake, "gold.events_hourly") == gold
    again = {r.table: r for r in maintain(lake, settings(), NOW)}
    assert again["gold.events_hourly"].partitions_compacted == 0 and again["realtime.events_per_minute"].rows_deleted == 0


def test_maintain_clusters_each_closed_day_once_until_its_files_change(lake, tmp_path):
    for day in (D1, D2, D3):
        lake.append("silver.events", silver(day, 300))
    state_path = tmp_path / "clustered.json"
    first = maintain(lake, settings(), NOW, ClusterState(state_path), tables=["silver.events"])[0]
    assert first.partitions_clustered == 2  # D1, D2; D3 (today) is still being written
    assert ClusterState(state_path).stale("silver.events", lake.add_actions("silver.events"), NOW.date()) == []
    assert maintain(lake, settings(), NOW, ClusterState(state_path), tables=["silver.events"])[0].partitions_clustered == 0
    lake.append("silver.events", silver(D2, 10, seed=1))  # a restatement or a late write
    again = maintain(lake, settings(), NOW, ClusterState(state_path), tables=["silver.events"])[0]
    assert again.partitions_clustered == 1
    assert lake.row_count("silver.events") == 910
    # a lost state file: every closed day once more, nothing else
    assert maintain(lake, settings(), NOW, ClusterState(None), tables=["silver.events"])[0].partitions_clustered == 2
