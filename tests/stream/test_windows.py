import polars as pl

from headwater.stream.pipeline import Hopping, Tumbling
from headwater.stream.windows import assign, session_ids

import datetime as dt

M = 60_000_000  # one minute in µs


def test_tumbling_windows_are_epoch_aligned_and_half_open():
    df = assign(pl.DataFrame({"_ts": [0, M - 1, M, 5 * M + 7]}), Tumbling(dt.timedelta(minutes=1)))
    assert df["window_start"].to_list() == [0, 0, M, 5 * M]
    assert df["window_end"].to_list() == [M, M, 2 * M, 6 * M]


def test_hopping_window_puts_each_event_in_size_over_slide_windows():
    df = assign(pl.DataFrame({"_ts": [7 * M + 30], "id": ["a"]}), Hopping(dt.timedelta(minutes=3), dt.timedelta(minutes=1)))
    assert sorted(df["window_start"].to_list()) == [5 * M, 6 * M, 7 * M]
    assert all(s <= 7 * M + 30 < e for s, e in zip(df["window_start"], df["window_end"]))
    assert df["id"].to_list() == ["a"] * 3


def test_sessions_merge_overlapping_intervals_per_key_and_split_at_exactly_gap():
    gap = 10
    ts = {"a": [0, 5, 14, 24, 40], "b": [3]}
    items = pl.DataFrame(
        {"k": [k for k, v in ts.items() for _ in v], "window_start": [t for v in ts.values() for t in v]}
    ).with_columns(window_end=pl.col("window_start") + gap)
    out = session_ids(items, ["k"])
    got = out.group_by("k", "_session").agg(pl.col("window_start").min(), pl.col("window_end").max()).sort("k", "window_start")
    # a: 0,5,14 chain (each < previous end); 24 == 14 + gap starts a new session; 40 alone.
    assert got.select("k", "window_start", "window_end").rows() == [("a", 0, 24), ("a", 24, 34), ("a", 40, 50), ("b", 3, 13)]


def test_an_existing_session_and_a_gap_filling_event_merge_into_one():
    items = pl.DataFrame({"k": ["a", "a", "a"], "window_start": [0, 30, 12], "window_end": [15, 45, 22]})
    out = session_ids(items, ["k"])
    assert out["_session"].n_unique() == 2  # [0,15) + [12,22) merge; [30,45) stays apart
    items = items.vstack(pl.DataFrame({"k": ["a"], "window_start": [21], "window_end": [31]}))
    assert session_ids(items, ["k"])["_session"].n_unique() == 1


def test_a_long_session_of_one_key_never_absorbs_another_keys_events():
    # b's events fall inside a's long session, and c's end is the largest of all: the running
    # maximum end must restart at each key.
    items = pl.DataFrame(
        {"k": ["a", "b", "b", "c", "a"], "window_start": [0, 50, 80, 10, 200], "window_end": [150, 60, 90, 1_000, 210]}
    )
    got = session_ids(items, ["k"])
    sessions = got.group_by("_session").agg(pl.col("k").unique(), pl.col("window_start").min(), pl.col("window_end").max()).sort("window_start", "k")
    assert [(s["k"], s["window_start"], s["window_end"]) for s in sessions.iter_rows(named=True)] == [
        (["a"], 0, 150), (["c"], 10, 1_000), (["b"], 50, 60), (["b"], 80, 90), (["a"], 200, 210)
    ]
    assert got["_session"].n_unique() == 5  # ids are unique across keys
