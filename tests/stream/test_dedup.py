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
    state.add(0, pl.Series(["a", "b"]), 10 * US)
    assert state.filter_new(frame(["a", "c", "b", "d"]))["event_id"].to_list() == ["c", "d"]


def test_ttl_expires_old_batches_by_received_at(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(seconds=60))
    state.add(0, pl.Series(["a"]), 0)
    state.add(1, pl.Series(["b"]), 30 * US)
    assert len(state) == 2
    state.add(2, pl.Series(["c"]), 61 * US)  # batch 0 is now more than 60 s behind
    assert len(state) == 2
    assert not (tmp_path / "0.parquet").exists()
    assert state.filter_new(frame(["a", "b", "c"]))["event_id"].to_list() == ["a"]


def test_load_restores_state_of_last_committed_batch_only(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series(["a"]), US)
    state.add(1, pl.Series(["b"]), 2 * US)  # batch 1 never committed
    recovered = DedupState(tmp_path, dt.timedelta(hours=1))
    recovered.load(upto=0)
    assert recovered.filter_new(frame(["a", "b"]))["event_id"].to_list() == ["b"]
    assert not (tmp_path / "1.parquet").exists()
    fresh = DedupState(tmp_path, dt.timedelta(hours=1))
    fresh.load(upto=None)
    assert len(fresh) == 0
