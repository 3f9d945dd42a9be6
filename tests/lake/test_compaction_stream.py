"""No small-file build-up: a long run of small micro-batches through the real stream processor
keeps the file count of every partition of every table it appends to bounded, and each
compaction leaves the table's rows exactly as they were."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from headwater.config import Home
from headwater.errors import TransientError
from headwater.events import BAD_ROW_SCHEMA
from headwater.lake.store import CommitConflictError, Lake
from headwater.log import Append, open_log
from headwater.settings import load
from headwater.stream.processor import BronzeStream, StreamConfig
from tests.stream.conftest import canonical

THRESHOLD = 6  # lake.compact_min_files of the run under test
BATCHES = 300
T0 = dt.datetime(2024, 3, 1, 23, 30, tzinfo=dt.timezone.utc)  # the run crosses midnight: two ds partitions
STEP = dt.timedelta(seconds=12)


def bad_row(i: int, at: dt.datetime) -> pa.Table:
    return pa.Table.from_pylist(
        [{"received_at": at, "source": "test", "error_type": "envelope_violation", "reason": f"bad {i}",
          "payload": "{}", "protocol": "segment", "ds": at.date()}],
        schema=BAD_ROW_SCHEMA,
    )


def files_per_partition(lake: Lake, table: str) -> dict:
    adds = lake.add_actions(table)
    keys = adds.column("partition.ds").to_pylist() if "partition.ds" in adds.column_names else [None] * adds.num_rows
    out: dict = {}
    for k in keys:
        out[k] = out.get(k, 0) + 1
    return out


def rows(lake: Lake, table: str) -> list[dict]:
    t = DeltaTable(lake.uri(table)).to_pyarrow_table()
    return sorted(t.to_pylist(), key=lambda r: tuple((v is not None, str(v)) for v in r.values()))


@pytest.mark.slow
def test_a_long_run_of_small_batches_keeps_files_bounded_in_every_stream_table_and_rows_unchanged(tmp_path):
    run = Home(tmp_path / "run", load(home=tmp_path / "run", **{"lake.compact_min_files": THRESHOLD}))
    log = open_log(run.settings.log_url)
    log.ensure_topic("events", 4)
    log.ensure_topic("bad_rows", 1)
    now = [T0]
    clock = lambda: int(now[0].timestamp() * 1000)  # noqa: E731
    stream = BronzeStream(run, StreamConfig(compact_every=1), event_log=log, clock=clock)
    lake = Lake.of(run)
    compacted: dict[str, int] = {}
    compact = stream.files.compact

    def checked(table, keys):  # every compaction of the run: same rows before and after
        before = rows(lake, table)
        metrics = compact(table, keys)
        assert rows(lake, table) == before, table
        compacted[table] = compacted.get(table, 0) + (metrics["files_removed"] > 0)
        return metrics

    stream.files.compact = checked
    worst: dict[str, int] = {}
    for i in range(BATCHES):
        at = T0 + i * STEP
        now[0] = at + dt.timedelta(seconds=1)
        log.append([Append("events", i % 4, canonical([f"e{i}-{j}" for j in range(3)], received_at=at))])
        if i % 7 == 3:  # behind the watermark (10 min): bronze.late_events
            log.append([Append("events", i % 4, canonical([f"late{i}"], received_at=at, event_ts=at - dt.timedelta(hours=1)))])
        if i % 11 == 5:
            log.append([Append("bad_rows", 0, bad_row(i, at))])
        if i % 13 == 7:  # unreadable: bronze.dead_letter
            log._insert([("events", (i + 1) % 4, 1, b"junk")])
        stream.run_once()
        if i % 10 == 9 or i == BATCHES - 1:
            for table in stream.tables.values():
                if lake.exists(table):
                    worst[table] = max(worst.get(table, 0), *files_per_partition(lake, table).values())

    assert set(worst) == set(stream.tables.values()), "every stream table was written"
    assert all(n <= THRESHOLD for n in worst.values()), worst  # compacted when the THRESHOLD-th small file lands
    # the append-only tables get a file per micro-batch and partition: compacted many times
    # (BATCHES / THRESHOLD for bronze.events); the realtime MERGEs rewrite their files as they go
    assert compacted["bronze.events"] >= BATCHES // THRESHOLD
    assert all(compacted.get(t, 0) >= 2 for t in ("bronze.late_events", "bronze.bad_rows", "bronze.dead_letter")), compacted
    assert len(files_per_partition(lake, "bronze.events")) == 2  # 2024-03-01 and 2024-03-02
    assert lake.row_count("bronze.events") == 3 * BATCHES + len(range(3, BATCHES, 7))
    stream.close()
    log.close()


def test_a_sink_commit_that_loses_a_race_to_maintain_is_retried(tmp_path):
    """``headwater maintain`` compacting or expiring a realtime table while the stream MERGEs
    into it fails one of the two commits; the stream's is re-run on the new snapshot."""
    home = Home(tmp_path / "home")
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 4)
    log.ensure_topic("bad_rows", 1)
    stream = BronzeStream(home, event_log=log)
    real, lost = stream.lake.upsert_once, []

    def racing(table, *args, **kw):
        if table == "realtime.users_per_minute" and not lost:
            lost.append(table)
            raise CommitConflictError(f"{table}: a concurrent commit won, retry", field="table")
        return real(table, *args, **kw)

    stream.lake.upsert_once = racing
    log.append([Append("events", 0, canonical(["a", "b"]))])
    assert stream.run_once().written_events == 2
    assert lost and Lake.of(home).row_count("realtime.users_per_minute") == 1
    stream.close()
    log.close()


def test_a_failed_compaction_is_logged_and_retried_without_failing_the_batch(tmp_path, caplog):
    home = Home(tmp_path / "home", load(home=tmp_path / "home", **{"lake.compact_min_files": 2}))
    log = open_log(home.settings.log_url)
    log.ensure_topic("events", 4)
    log.ensure_topic("bad_rows", 1)
    stream = BronzeStream(home, StreamConfig(compact_every=1), event_log=log)
    real = stream.lake.compact
    stream.lake.compact = lambda *a: (_ for _ in ()).throw(TransientError("bronze.events: disk full (ENOSPC)"))
    for i in range(2):
        log.append([Append("events", 0, canonical([f"e{i}"]))])
        assert stream.run_once().written_events == 1
    assert "compaction after batch 1 failed" in caplog.text and "disk full" in caplog.text
    assert files_per_partition(Lake.of(home), "bronze.events") == {T0.date(): 2}
    stream.lake.compact = real
    log.append([Append("events", 1, canonical(["e2"]))])  # another log partition, the same ds
    stream.run_once()
    assert files_per_partition(Lake.of(home), "bronze.events") == {T0.date(): 1}
    stream.close()
    log.close()
