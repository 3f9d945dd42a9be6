"""Partitioning by identity key: a stable function of the token, request order kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from headwater.errors import InvalidInputError
from headwater.ingest.canonical import EventColumns, build_events
from headwater.ingest.partitioning import (
    event_appends,
    partition_of,
    split_by_partition,
)

from .conftest import RECEIVED_US


def events(tokenizer, n=200):
    rows = [(f"m{i}", "track", "x", tokenizer(f"anon-{i}"), tokenizer(f"user-{i % 13}") if i % 3 else None,
             None, None, None, "server", "server", "{}", "{}") for i in range(n)]
    return build_events(EventColumns.from_rows(rows), source="s", received_at_us=RECEIVED_US).events


def test_partition_is_stable_hash_of_identity_token(tokenizer):
    t = events(tokenizer)
    keys = [r["user_id"] or r["anonymous_id"] for r in t.to_pylist()]
    assert partition_of(pa.array(keys), 4).tolist() == [int(k[:8], 16) % 4 for k in keys]
    assert partition_of(pa.array(keys).slice(7, 50), 7).tolist() == [int(k[:8], 16) % 7 for k in keys[7:57]]
    assert np.all(partition_of(pa.array([], pa.string()), 4) == np.zeros(0))
    with pytest.raises(InvalidInputError):
        partition_of(pa.array(["0123abcd", None]), 4)

    parts = split_by_partition(t, 4)
    assert [p for p, _ in parts] == sorted({int(k[:8], 16) % 4 for k in keys})
    seen = []
    for p, part in parts:
        ids = part.column("event_id").to_pylist()
        assert ids == [f"m{i}" for i in range(200) if int(keys[i][:8], 16) % 4 == p]  # request order kept
        seen += ids
    assert sorted(seen) == sorted(f"m{i}" for i in range(200))


def test_one_append_per_non_empty_partition(tokenizer):
    t = events(tokenizer)
    appends = event_appends(t, 4)
    assert sum(a.events.num_rows for a in appends) == 200
    assert all(a.topic == "events" for a in appends) and len({a.partition for a in appends}) == len(appends)
    assert event_appends(t.slice(0, 0), 4) == []
