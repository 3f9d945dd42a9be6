"""A micro-batch that keeps failing the same way is quarantined, counted across restarts,
and only an operator's explicit command moves the stream past it (never silently)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from headwater.cli.main import cli
from headwater.events import EVENT_SCHEMA
from headwater.lake.store import Lake
from headwater.stream.checkpoint import BatchQuarantinedError, Checkpoint
from headwater.stream.processor import QUERY, BronzeStream, StreamConfig

from .conftest import append_events, table_rows

CONFIG = StreamConfig(quarantine_after=3, compact_every=0)


@pytest.fixture
def disk_full(monkeypatch):
    """Every commit to ``bronze.events`` fails as on a full disk; ``calls`` counts the attempts."""
    original = Lake.append_once
    calls = []

    def append_once(self, table, data, **kw):
        if table == "bronze.events":
            calls.append(table)
            raise OSError(28, "No space left on device")
        return original(self, table, data, **kw)

    monkeypatch.setattr(Lake, "append_once", append_once)
    yield calls
    monkeypatch.setattr(Lake, "append_once", original)


def cli_run(home, *args):
    return CliRunner().invoke(cli, list(args), env={"HEADWATER_HOME": str(home.root)})


def bronze_ids(home) -> list[str]:
    return sorted(r["event_id"] for r in table_rows(home, "bronze.events"))


def quarantine_after_three_restarts(home) -> None:
    """Batch 0 fails once live and twice on replay (each a new processor: a restart)."""
    with pytest.raises(OSError, match="No space left"):
        BronzeStream(home, CONFIG).run_once()
    with pytest.raises(OSError, match="No space left"):
        BronzeStream(home, CONFIG)  # the restart re-runs batch 0: failure 2
    with pytest.raises(BatchQuarantinedError, match="batch 0 is quarantined: it failed 3 times"):
        BronzeStream(home, CONFIG)  # failure 3: quarantined


def test_a_batch_failing_the_same_way_n_times_is_quarantined_and_the_stream_refuses_to_pass_it(home, event_log, disk_full):
    append_events(event_log, 0, ["a", "b"])
    quarantine_after_three_restarts(home)
    assert len(disk_full) == 3
    rec = Checkpoint(home.checkpoint_dir(QUERY)).failure(0)
    assert rec["count"] == 3 and rec["error"] == "OSError: [Errno 28] No space left on device"
    assert rec["offsets"]["events"]["0"] == [0, 2] and rec["quarantined_ms"] >= rec["first_failed_ms"]

    # Later starts refuse at once, without touching the batch, even once the disk has room.
    with pytest.raises(BatchQuarantinedError):
        BronzeStream(home, CONFIG)
    assert len(disk_full) == 3
    assert Checkpoint(home.checkpoint_dir(QUERY)).recover() == (0, None)

    # The command line: exit 4 (ConflictError) with a message saying what to do.
    result = cli_run(home, "stream", "--available-now")
    assert result.exit_code == 4
    assert "batch 0 is quarantined" in result.output and "headwater quarantine skip 0" in result.output


def test_a_different_error_restarts_the_count_and_a_success_clears_it(home, event_log, monkeypatch):
    append_events(event_log, 0, ["a"])
    errors = iter([OSError("disk"), OSError("disk"), RuntimeError("other"), RuntimeError("other"), None])
    original = Lake.append_once

    def flaky(self, table, data, **kw):
        if table == "bronze.events" and (e := next(errors)) is not None:
            raise e
        return original(self, table, data, **kw)

    monkeypatch.setattr(Lake, "append_once", flaky)
    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    with pytest.raises(OSError):
        BronzeStream(home, CONFIG).run_once()
    for expected in (2, 1, 2):
        with pytest.raises((OSError, RuntimeError)):
            BronzeStream(home, CONFIG)
        assert checkpoint.failure(0)["count"] == expected
    BronzeStream(home, CONFIG)  # succeeds on the fifth attempt
    assert checkpoint.failure(0) is None and checkpoint.recover() == (None, 0)
    assert bronze_ids(home) == ["a"]


def test_list_and_skip_record_the_skipped_offsets_and_keep_the_events_inspectable(home, event_log, disk_full, monkeypatch):
    append_events(event_log, 0, ["a", "b"])
    append_events(event_log, 1, ["c"])
    quarantine_after_three_restarts(home)

    listed = cli_run(home, "quarantine", "list", "--format", "json")
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert (row["batch"], row["status"], row["failures"]) == (0, "quarantined", 3)
    assert "events/0:[0,2)" in row["offsets"] and "events/1:[0,1)" in row["offsets"]
    assert "No space left" in row["error"]

    monkeypatch.undo()  # the disk has room again; the operator still decides to skip
    skipped = cli_run(home, "quarantine", "skip", "0")
    assert skipped.exit_code == 0, skipped.output
    assert "batch 0 skipped" in skipped.output and "3 events in" in skipped.output

    checkpoint = Checkpoint(home.checkpoint_dir(QUERY))
    commit = checkpoint.read_commit(0)
    assert commit["skipped"]["offsets"]["events"] == {"0": [0, 2], "1": [0, 1], "2": [0, 0], "3": [0, 0]}
    assert commit["totals"]["skipped_batches"] == 1
    exported = pq.read_table(commit["skipped"]["export"]["events"]["path"])
    assert sorted(exported.column("event_id").to_pylist()) == ["a", "b", "c"]
    assert exported.schema.names[: len(EVENT_SCHEMA)] == EVENT_SCHEMA.names
    assert event_log.read("events", 0, 0, 2, EVENT_SCHEMA).events.num_rows == 2  # the log keeps them too
    assert json.loads(cli_run(home, "quarantine", "list", "--format", "json").output)[0]["status"] == "skipped"
    assert cli_run(home, "quarantine", "skip", "0").exit_code == 4  # once only

    # The stream resumes after the skipped batch; its events were never written (nor deduped).
    append_events(event_log, 2, ["d", "a"])
    stream = BronzeStream(home, CONFIG)
    assert stream.run_once().written_events == 2
    assert bronze_ids(home) == ["a", "d"]
    assert stream.checkpoint.read_commit(1)["totals"]["skipped_batches"] == 1


def test_retry_lifts_the_quarantine_once_the_cause_is_fixed(home, event_log, disk_full, monkeypatch):
    append_events(event_log, 0, ["a"])
    quarantine_after_three_restarts(home)
    assert cli_run(home, "quarantine", "retry", "7").exit_code == 4  # not a quarantined batch
    monkeypatch.undo()
    result = cli_run(home, "quarantine", "retry", "0")
    assert result.exit_code == 0, result.output
    BronzeStream(home, CONFIG)  # re-runs batch 0, which now succeeds
    assert bronze_ids(home) == ["a"]
    assert Checkpoint(home.checkpoint_dir(QUERY)).failures() == []
