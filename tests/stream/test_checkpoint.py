import pytest

from headwater.stream.checkpoint import RETAIN, Checkpoint, CheckpointError


def test_new_checkpoint_has_nothing_to_recover(tmp_path):
    assert Checkpoint(tmp_path).recover() == (None, None)


def test_planned_but_uncommitted_batch_is_replayed_with_its_offsets(tmp_path):
    cp = Checkpoint(tmp_path)
    cp.write_offsets(0, {"events": {0: (0, 5)}})
    cp.write_commit(0, {"totals": {}})
    cp.write_offsets(1, {"events": {0: (5, 9), 1: (0, 2)}})
    assert cp.recover() == (1, 0)
    assert cp.read_offsets(1) == {"events": {0: (5, 9), 1: (0, 2)}}


def test_committed_batch_is_not_replayed(tmp_path):
    cp = Checkpoint(tmp_path)
    cp.write_offsets(0, {"events": {0: (0, 5)}})
    cp.write_commit(0, {"totals": {}})
    assert cp.recover() == (None, 0)


def test_gap_in_offset_log_is_an_error(tmp_path):
    cp = Checkpoint(tmp_path)
    cp.write_offsets(0, {"events": {0: (0, 1)}})
    cp.write_commit(0, {})
    cp.write_offsets(2, {"events": {0: (1, 2)}})
    with pytest.raises(CheckpointError, match="offsets/2 has no commits/1"):
        cp.recover()


def test_commit_without_offsets_is_an_error(tmp_path):
    cp = Checkpoint(tmp_path)
    cp.write_commit(0, {})
    with pytest.raises(CheckpointError, match="commit log ahead"):
        cp.recover()
    with pytest.raises(CheckpointError, match="offsets/0 is missing"):
        cp.read_offsets(0)


def test_old_batches_are_purged(tmp_path):
    cp = Checkpoint(tmp_path)
    for n in range(RETAIN + 3):
        cp.write_offsets(n, {"events": {0: (n, n + 1)}})
        cp.write_commit(n, {})
    assert not (cp.offsets_dir / "2").exists()
    assert (cp.offsets_dir / "3").exists()
    assert cp.recover() == (None, RETAIN + 2)
