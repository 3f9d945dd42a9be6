import datetime as dt
import shutil

import numpy as np
import polars as pl
import pyarrow as pa

from headwater.stream import dedup
from headwater.stream.dedup import DedupState

US = 1_000_000


def frame(ids):
    return pl.DataFrame({"event_id": ids, "n": list(range(len(ids)))})


def new(state: DedupState, ids: list[str]) -> list[str]:
    return state.filter_new(frame(ids))["event_id"].to_list()


def test_first_occurrence_in_batch_wins_and_order_is_kept(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    out = state.filter_new(frame(["b", "a", "b", "c", "a"]))
    assert out["event_id"].to_list() == ["b", "a", "c"]
    assert out["n"].to_list() == [0, 1, 3]


def test_ids_of_earlier_batches_are_dropped(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series(["a", "b"]), 10 * US, 10 * US)
    assert new(state, ["a", "c", "b", "d"]) == ["c", "d"]


def test_ttl_expires_old_batches_by_received_at(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(seconds=60))
    state.add(0, pl.Series(["a"]), 0, 0)
    state.add(1, pl.Series(["b"]), 30 * US, 30 * US)
    assert len(state) == 2
    state.add(2, pl.Series(["c"]), 61 * US, 61 * US)  # batch 0 is now more than 60 s behind
    assert len(state) == 2
    assert (tmp_path / "0-0.arrow").exists()  # until batch 2 has committed (a crash replays 2 on state 1)
    state.add(3, pl.Series(["d"]), 62 * US, 62 * US)
    assert not (tmp_path / "0-0.arrow").exists()
    assert new(state, ["a", "b", "c", "d"]) == ["a"]


def test_load_restores_state_of_last_committed_batch_only(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series(["a"]), US, US)
    state.add(1, pl.Series(["b"]), 2 * US, 2 * US)  # batch 1 never committed
    recovered = DedupState(tmp_path, dt.timedelta(hours=1))
    recovered.load(upto=0)
    assert new(recovered, ["a", "b"]) == ["b"]
    assert not (tmp_path / "1-1.arrow").exists()
    fresh = DedupState(tmp_path, dt.timedelta(hours=1))
    fresh.load(upto=None)
    assert len(fresh) == 0


def test_merges_bound_the_runs_and_recovery_answers_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(dedup, "FAN_IN", 3)
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    for b in range(20):
        state.add(b, pl.Series([f"id{b}", f"x{b}"]), b * US, b * US)
    runs = sorted(p.name for p in tmp_path.glob("*.arrow"))
    assert len(runs) < 8 and "0-8.arrow" in runs  # 9 batches merged twice over (3 x 3)
    for upto in (19, 18):  # batch 19 may not have committed: merges never include the newest batch
        again = DedupState(tmp_path, dt.timedelta(hours=1))
        again.load(upto)
        assert len(again) == 2 * (upto + 1)
        assert new(again, [f"id{b}" for b in range(21)]) == [f"id{b}" for b in range(upto + 1, 21)]


def test_a_merge_killed_before_it_deleted_its_inputs_is_completed_by_load(tmp_path, monkeypatch):
    monkeypatch.setattr(dedup, "FAN_IN", 2)
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series(["a"]), US, US)
    state.add(1, pl.Series(["b"]), 2 * US, 2 * US)
    shutil.copy(tmp_path / "1-1.arrow", tmp_path / "keep")
    state.add(2, pl.Series(["c"]), 3 * US, 3 * US)  # merges 0 and 1 into 0-1
    assert (tmp_path / "0-1.arrow").exists()
    shutil.move(tmp_path / "keep", tmp_path / "1-1.arrow")  # as if killed between the merge and the deletions
    again = DedupState(tmp_path, dt.timedelta(hours=1))
    again.load(2)
    assert not (tmp_path / "1-1.arrow").exists()
    assert len(again) == 3 and new(again, ["a", "b", "c", "d"]) == ["d"]


def test_merges_leave_expired_keys_out(tmp_path, monkeypatch):
    monkeypatch.setattr(dedup, "FAN_IN", 2)
    state = DedupState(tmp_path, dt.timedelta(seconds=10))
    state.add(0, pl.Series(["old"]), 0, 0)
    state.add(1, pl.Series(["new"]), 11 * US, 11 * US)  # "old" expires
    state.add(2, pl.Series(["newer"]), 12 * US, 12 * US)  # batch 1 committed: 0 goes, no merge of one run
    assert sorted(p.name for p in tmp_path.glob("*.arrow")) == ["1-1.arrow", "2-2.arrow"]
    again = DedupState(tmp_path, dt.timedelta(seconds=10))
    again.load(2)
    assert len(again) == 2 and new(again, ["old", "new", "newer"]) == ["old"]


def test_a_crash_in_the_batch_that_expires_ids_recovers_them(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(seconds=60))
    state.add(0, pl.Series(["a"]), 0, 0)
    state.add(1, pl.Series(["b"]), 61 * US, 61 * US)  # expires batch 0 ... and the process dies before commits/1
    recovered = DedupState(tmp_path, dt.timedelta(seconds=60))
    recovered.load(upto=0)
    assert new(recovered, ["a", "b"]) == ["b"]


def test_every_bloom_maybe_is_confirmed_on_the_key_strings(tmp_path, monkeypatch):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.add(0, pl.Series([f"k{i}" for i in range(1000)]), US, US)
    monkeypatch.setattr(state._bloom, "may_contain", lambda h: np.ones(len(h), bool))  # all false positives
    assert new(state, ["k5", "z", "k999", "k1000"]) == ["z", "k1000"]


def test_a_run_hashed_by_another_polars_is_rehashed_on_load(tmp_path, monkeypatch):
    monkeypatch.setattr(dedup, "_SEED", 12345)
    monkeypatch.setattr(dedup, "HASH", "polars 0.0 hash seed 3039")
    DedupState(tmp_path, dt.timedelta(hours=1)).add(0, pl.Series(["a", "b"]), US, US)
    monkeypatch.undo()
    again = DedupState(tmp_path, dt.timedelta(hours=1))
    again.load(0)
    assert new(again, ["a", "b", "c"]) == ["c"]
    with pa.memory_map(str(tmp_path / "0-0.arrow")) as f:
        assert dedup.HASH.encode() in f.read()


def test_the_keys_live_on_disk_not_in_memory(tmp_path):
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    before = pa.total_allocated_bytes()
    for b in range(5):
        keys = pl.Series([f"8:source-{b}:{i:032x}" for i in range(100_000)])
        state.filter_new(pl.DataFrame({"event_id": keys}))
        state.add(b, keys, b * US, b * US)
        del keys
    assert len(state) == 500_000
    assert pa.total_allocated_bytes() - before < 1_000_000  # ~30 MB of keys are in the runs only
    assert state._bloom.nbytes <= 4 * 500_000  # the one per-key structure: a few bytes a key


def test_the_state_of_the_earlier_parquet_layout_is_carried_over(tmp_path):
    import pyarrow.parquet as pq

    def delta(b: int, keys: list[str], clock: int) -> None:
        t = pa.table({"key": keys}).replace_schema_metadata({"clock_us": str(clock), "batch_ts_us": str(clock)})
        pq.write_table(t, tmp_path / f"{b}.parquet")

    snap = pa.table({"key": ["a", "b"], "batch_id": [0, 1], "clock_us": [0, US], "batch_ts_us": [0, US]})
    pq.write_table(snap, tmp_path / "1.snapshot.parquet")
    delta(2, ["c"], 2 * US)
    delta(3, ["d"], 3 * US)  # never committed
    state = DedupState(tmp_path, dt.timedelta(hours=1))
    state.load(2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0-2.arrow"]
    assert len(state) == 3 and new(state, ["a", "b", "c", "d"]) == ["d"]
    state.add(3, pl.Series(["d"]), 4 * US, 4 * US)  # the clock goes on from batch 2's
    assert len(state) == 4
