import datetime as dt

import polars as pl

from headwater.stream.dedup import DedupState

US = 1_000_000


def frame(ids):
    return pl.DataFrame({"event_id": ids, "n": list(range(len(ids)))})


def test_first_occurrence_in_batch_wins_and_order_is_kept(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    out = state.filter_new(frame(["b", "a", "b", "c", "a"]))
    assert out["event_id"].to_list() == ["b", "a", "c"]
    assert out["n"].to_list() == [0, 1, 3]


def test_ids_of_earlier_batches_are_dropped(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series(["a", "b"]), 10 * US, 10 * US)
    assert state.filter_new(frame(["a", "c", "b", "d"]))["event_id"].to_list() == ["c", "d"]


def test_ttl_expires_old_batches_by_received_at(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(seconds=60))
    state.add(0, pl.Series(["a"]), 0, 0)
    state.add(1, pl.Series(["b"]), 30 * US, 30 * US)
    assert len(state) == 2
    state.add(2, pl.Series(["c"]), 61 * US, 61 * US)  # batch 0 is now more than 60 s behind
    assert len(state) == 2
    assert (tmp_path / "0.parquet").exists()  # until batch 2 has committed (a crash replays 2 on state 1)
    state.add(3, pl.Series(["d"]), 62 * US, 62 * US)
    assert not (tmp_path / "0.parquet").exists()
    assert state.filter_new(frame(["a", "b", "c", "d"]))["event_id"].to_list() == ["a"]


def test_load_restores_state_of_last_committed_batch_only(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series(["a"]), US, US)
    state.add(1, pl.Series(["b"]), 2 * US, 2 * US)  # batch 1 never committed
    recovered = DedupState(tmp_path, dt.timedelta(hours=1))
    recovered.load(upto=0)
    assert recovered.filter_new(frame(["a", "b"]))["event_id"].to_list() == ["b"]
    assert not (tmp_path / "1.parquet").exists()
    fresh = DedupState(tmp_path, dt.timedelta(hours=1))
    fresh.load(upto=None)
    assert len(fresh) == 0


def test_snapshots_bound_the_files_and_recovery_uses_the_newest_committed_one(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1), snapshot_every=3)
    for b in range(10):
        state.add(b, pl.Series([f"id{b}"]), b * US, b * US)
    files = sorted(p.name for p in tmp_path.iterdir())
    # snapshots 6 and 9 (3 is gone); deltas after snapshot 6 only
    assert files == ["6.snapshot.parquet", "7.parquet", "8.parquet", "9.parquet", "9.snapshot.parquet"]
    for upto, expect in [(9, 10), (8, 9), (6, 7)]:  # batch 9 (or 7, 8) may not have committed
        again = DedupState(tmp_path, dt.timedelta(hours=1), snapshot_every=3)
        again.load(upto)
        assert len(again) == expect
        assert again.filter_new(frame([f"id{b}" for b in range(11)]))["event_id"].to_list() == [f"id{b}" for b in range(expect, 11)]


def test_expired_ids_in_a_snapshot_stay_expired(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(seconds=10), snapshot_every=2)
    state.add(1, pl.Series(["old"]), 0, 0)
    state.add(2, pl.Series(["new"]), 11 * US, 11 * US)  # "old" expires, then snapshot 2
    again = DedupState(tmp_path, dt.timedelta(seconds=10), snapshot_every=2)
    again.load(2)
    assert len(again) == 1 and again.filter_new(frame(["old", "new"]))["event_id"].to_list() == ["old"]


def test_a_crash_in_the_batch_that_expires_ids_recovers_them(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(seconds=60))
    state.add(0, pl.Series(["a"]), 0, 0)
    state.add(1, pl.Series(["b"]), 61 * US, 61 * US)  # expires batch 0 ... and the process dies before commits/1
    recovered = DedupState(tmp_path, dt.timedelta(seconds=60))
    recovered.load(upto=0)
    assert recovered.filter_new(frame(["a", "b"]))["event_id"].to_list() == ["b"]
