"""The stream's dedup state on disk (``stream/dedup.py``): exactly once across restarts, merges
of its runs and a crash between a merge and the batch's commit."""

from __future__ import annotations

import datetime as dt

import pytest

from headwater.lake.store import Lake
from headwater.stream import dedup
from headwater.stream.processor import BronzeStream

from .conftest import T0, append_events


@pytest.fixture(autouse=True)
def small_runs(monkeypatch):
    monkeypatch.setattr(dedup, "FAN_IN", 2)  # a merge every other batch


def bronze_ids(home) -> list[str]:
    lake = Lake.of(home)
    return sorted(lake.dataset("bronze.events").to_table(columns=["event_id"]).column("event_id").to_pylist())


def runs(stream: BronzeStream) -> list[str]:
    return sorted(p.name for p in (stream.checkpoint.state_dir / "dedup").glob("*.arrow"))


def test_resent_events_are_dropped_across_restarts_and_merges(home, event_log):
    sent = []
    for b in range(6):
        stream = BronzeStream(home)  # a restart before every batch
        ids = [f"e{b}-{i}" for i in range(3)]
        sent += ids
        append_events(event_log, b % 4, ids + sent[:2])  # and a re-send of the first two
        stream.run_once()
        stream.close()
    assert any(r.split("-")[0] != r.split("-")[1].removesuffix(".arrow") for r in runs(stream))  # merged runs
    stream = BronzeStream(home)
    append_events(event_log, 0, sent)  # everything again, in one batch
    assert stream.run_once().duplicates == len(sent)
    assert bronze_ids(home) == sorted(sent)


def test_a_crash_after_a_merge_and_before_the_commit_replays_the_batch_exactly(home, event_log):
    stream = BronzeStream(home)
    for b, ids in enumerate([["a", "b"], ["c", "d"], ["e", "a"]]):
        append_events(event_log, b, ids)
        stream.run_once()
    assert "0-1.arrow" in runs(stream)  # batch 2 merged the runs of 0 and 1 ...
    (stream.checkpoint.commits_dir / "2").unlink()  # ... and died before commits/2
    stream.close()
    recovered = BronzeStream(home)  # replays batch 2 on the state of batch 1: the merged run
    assert recovered.checkpoint.recover() == (None, 2)
    assert bronze_ids(home) == ["a", "b", "c", "d", "e"]
    append_events(event_log, 3, ["e", "f"])
    assert recovered.run_once().duplicates == 1
    assert bronze_ids(home) == ["a", "b", "c", "d", "e", "f"]


def test_ids_older_than_the_ttl_are_new_again_after_a_restart(home, event_log):
    clock = [int(T0.timestamp() * 1000)]
    stream = BronzeStream(home, clock=lambda: clock[0])
    append_events(event_log, 0, ["old"])
    stream.run_once()
    for i in range(1, 4):  # a day and more later (in received_at and processing time)
        clock[0] += 13 * 3600 * 1000
        append_events(event_log, i, [f"later{i}"], received_at=T0 + dt.timedelta(hours=13 * i))
        stream.run_once()
    stream.close()
    stream = BronzeStream(home, clock=lambda: clock[0])
    assert len(stream.dedup) == 2  # "old" and the first "later" expired
    append_events(event_log, 0, ["old", "later3"], received_at=T0 + dt.timedelta(hours=40))
    assert stream.run_once().duplicates == 1
    assert bronze_ids(home).count("old") == 2
