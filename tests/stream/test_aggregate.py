import datetime as dt

import datasketches as ds
import polars as pl

from headwater.stream.aggregate import WindowOperator
from headwater.stream.pipeline import Aggregate, Measure, Session, Tumbling

M = 60_000_000  # one minute in µs
MINUTE = dt.timedelta(minutes=1)


def events(ts, users=None, group=None):
    n = len(ts)
    data = {"_ts": ts, "user": users or [f"u{i}" for i in range(n)], "g": group or ["x"] * n}
    return pl.DataFrame(data, schema={"_ts": pl.Int64, "user": pl.String, "g": pl.String})


def rows(df, *cols):
    return df.select(cols).rows()


def test_append_mode_emits_a_window_once_when_the_watermark_passes_its_end():
    op = WindowOperator(Aggregate("a", Tumbling(MINUTE), ("g",), (Measure.count("n"),), "append"))
    emit, _ = op.update(events([10, M + 5, M + 6]), watermark_us=M - 1)
    assert emit.height == 0 and len(op) == 2
    emit, _ = op.update(events([20]), watermark_us=M)  # window [0, M) closes at watermark M
    assert rows(emit, "window_start", "window_end", "g", "n") == [(0, M, "x", 2)]
    assert len(op) == 1
    emit, _ = op.update(events([]), watermark_us=10 * M)
    assert rows(emit, "window_start", "n") == [(M, 2)] and len(op) == 0


def test_update_mode_emits_changed_windows_and_keeps_them_until_lateness_has_passed():
    spec = Aggregate("u", Tumbling(MINUTE), (), (Measure.count("n"),), "update", allowed_lateness=MINUTE)
    op = WindowOperator(spec)
    emit, _ = op.update(events([1, 2, M + 1]), watermark_us=M)
    assert rows(emit, "window_start", "n") == [(0, 2), (M, 1)]
    emit, _ = op.update(events([3]), watermark_us=M + 1)  # within lateness: window 0 updates
    assert rows(emit, "window_start", "n") == [(0, 3)]
    assert len(op) == 2
    op.update(events([]), watermark_us=2 * M)  # end + lateness <= watermark: dropped
    assert len(op) == 1


def test_sum_and_null_groups():
    spec = Aggregate("s", Tumbling(MINUTE), ("g",), (Measure.sum("v", "v"),), "update")
    df = pl.DataFrame({"_ts": [1, 2, 3], "g": [None, None, "a"], "v": [1.5, None, 2.0]})
    emit, _ = WindowOperator(spec).update(df, None)
    assert sorted(rows(emit, "g", "v"), key=repr) == sorted([(None, 1.5), ("a", 2.0)], key=repr)


def test_session_growing_and_merging_emits_the_new_row_and_deletes_the_absorbed_one():
    spec = Aggregate("s", Session(dt.timedelta(minutes=30)), ("user",), (Measure.count("n"),), "update")
    op = WindowOperator(spec)
    emit, deleted = op.update(events([0, 40 * M], ["a", "a"]), watermark_us=None)
    assert rows(emit, "window_start", "window_end", "n") == [(0, 30 * M, 1), (40 * M, 70 * M, 1)]
    emit, deleted = op.update(events([20 * M], ["a"]), watermark_us=None)  # fills the gap
    assert rows(emit, "window_start", "window_end", "user", "n") == [(0, 70 * M, "a", 3)]
    assert rows(deleted, "window_start", "user") == [(40 * M, "a")]
    assert len(op) == 1
    op.update(events([]), watermark_us=70 * M)
    assert len(op) == 0


def test_distinct_sketches_of_minutes_union_into_the_hour():
    spec = Aggregate("d", Tumbling(MINUTE), (), (Measure.count("n"), Measure.distinct("users", "user")), "update")
    op = WindowOperator(spec)
    users = [f"u{i % 50}" for i in range(300)]
    emit, deleted = op.update(events([(i % 3) * M for i in range(300)], users), None)
    out = op.output(emit, deleted)
    assert [round(u) for u in out.column("users").to_pylist()] == [50, 50, 50]
    union = ds.hll_union(12)
    for blob in out.column("users_sketch").to_pylist():
        union.update(ds.hll_sketch.deserialize(blob))
    assert round(union.get_estimate()) == 50
    emit, _ = op.update(events([5, 6], ["new1", "u0"]), None)  # the state's sketch is extended
    assert [round(u) for u in op.output(emit, deleted.clear()).column("users").to_pylist()] == [51]


def test_hot_key_state_is_bounded_by_windows_and_keys_not_by_events():
    """A user with 30 % of the traffic: state rows and sketch bytes stay the same however
    many events arrive; only open windows x groups (and active sessions) are kept."""
    measures = (Measure.count("n"), Measure.distinct("users", "user"))
    ops = [
        WindowOperator(Aggregate("m", Tumbling(MINUTE), (), measures, "update")),
        WindowOperator(Aggregate("s", Session(dt.timedelta(minutes=30)), ("user",), (Measure.count("n"),), "update")),
    ]
    sizes = []
    for batch in range(20):
        n = 5_000
        ts = [batch * M + i * (M // n) for i in range(n)]
        users = ["hot" if i % 10 < 3 else f"u{i % 200}" for i in range(n)]
        for op in ops:
            op.update(events(ts, users), watermark_us=(batch - 2) * M)
        sizes.append((len(ops[0]), len(ops[1]), ops[0].snapshot().nbytes))
    assert max(s[0] for s in sizes) <= 3  # open minutes only
    assert sizes[-1][1] == 141  # one open session per user (140 + the hot one)
    assert sizes[-1][2] <= sizes[5][2] * 1.1  # no growth with the hot user's events
    hot = ops[1].state.filter(pl.col("user") == "hot")
    assert hot["n"].to_list() == [20 * 1500]
