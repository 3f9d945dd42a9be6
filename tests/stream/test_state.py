import pyarrow as pa
import pytest

from headwater.stream.state import StateStore


def test_versions_round_trip_and_old_ones_are_dropped(tmp_path):
    store = StateStore(tmp_path)
    for v in range(4):
        store.save(v, {"a": pa.table({"x": [v]}), "empty": pa.table({})}, {"wm": v})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2.arrow", "3.arrow"]
    tables, meta = store.load(3)
    assert tables["a"].to_pydict() == {"x": [3]} and meta == {"wm": 3}


def test_load_discards_versions_of_uncommitted_batches(tmp_path):
    store = StateStore(tmp_path)
    store.save(0, {"a": pa.table({"x": [0]})}, {})
    store.save(1, {"a": pa.table({"x": [1]})}, {})  # batch 1 never committed
    tables, _ = store.load(0)
    assert tables["a"].to_pydict() == {"x": [0]}
    assert not (tmp_path / "1.arrow").exists()
    assert store.load(None) == ({}, {})
    assert list(tmp_path.iterdir()) == []


def test_missing_version_of_a_committed_batch_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        StateStore(tmp_path).load(5)
