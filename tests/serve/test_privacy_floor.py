"""The privacy floor (headwater.serve.privacy): a cell with k-1 persons is suppressed, one with k shown."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from headwater.errors import ForbiddenError, InvalidInputError
from headwater.serve.privacy import apply_floor, viewer_result
from headwater.settings import load

K = 10


def breakdown() -> pa.Table:
    return pa.table({"platform": ["web", "ios", "android", "tv"], "events": [500, 40, 12, 3],
                     "persons": pa.array([K, K - 1, K + 5, None], pa.int64())})


def test_k_minus_one_persons_is_suppressed_k_is_shown():
    shown = apply_floor(breakdown(), K)
    assert shown.to_pylist() == [{"platform": "web", "events": 500, "persons": K},
                                 {"platform": "android", "events": 12, "persons": K + 5}]
    assert shown.schema == breakdown().schema  # ios (k-1) and tv (unknown size) are dropped, row and all


def test_the_floor_applies_to_a_duckdb_relation_lazily():
    con = duckdb.connect()
    try:
        rel = con.from_arrow(breakdown())
        floored = apply_floor(rel, K)
        assert isinstance(floored, duckdb.DuckDBPyRelation)
        assert sorted(floored.fetchall()) == [("android", 12, K + 5), ("web", 500, K)]
    finally:
        con.close()


def test_k_of_one_keeps_every_row_and_a_result_without_persons_is_refused():
    assert apply_floor(breakdown(), 1).num_rows == 4
    with pytest.raises(InvalidInputError, match="persons: the privacy floor needs"):
        apply_floor(breakdown().drop_columns(["persons"]), K)
    assert apply_floor(breakdown().rename_columns(["platform", "events", "users"]), K, persons="users").num_rows == 2


def test_viewers_never_see_identifiers():
    with pytest.raises(ForbiddenError, match="person_id"):
        viewer_result(breakdown().append_column("person_id", pa.array(["a", "b", "c", "d"])), K)
    assert viewer_result(breakdown(), K).num_rows == 2


def test_k_is_the_setting_serve_k_anonymity(tmp_path):
    assert load(home=tmp_path).serve.k_anonymity == 10
    (tmp_path / "headwater.toml").write_text("[serve]\nk_anonymity = 25\n")
    assert load(home=tmp_path).serve.k_anonymity == 25
    with pytest.raises(InvalidInputError, match="serve.k_anonymity"):
        load(home=tmp_path, **{"serve.k_anonymity": 0})
