"""Event-time window assignment, vectorised with Polars (times are int64 µs since epoch, UTC).

* Tumbling ``size``: ``start = ts − ts mod size`` — the window ``[start, start + size)``.
* Hopping ``size``/``slide`` (``size = n·slide``): the ``n`` windows holding ``ts`` start at
  ``ts − ts mod slide − k·slide`` for ``k = 0..n−1`` (each contains ``ts`` because
  ``k·slide + ts mod slide < n·slide``); one exploded row per (event, window).
* Session ``gap``: each item is an interval (an event ``[ts, ts + gap)`` or an existing
  session ``[start, end)``); sorted per key by start, an item opens a new session unless it
  starts before the running maximum end of the items before it (half-open intervals that
  overlap merge — events exactly ``gap`` apart are two sessions, as in Spark's
  ``session_window``). This is the interval-merging rule of Spark and Flink session windows,
  written as a cumulative max + cumulative sum over a sort, not a loop.
"""

from __future__ import annotations

import polars as pl

from headwater.stream.pipeline import Hopping, Tumbling, us


def assign(df: pl.DataFrame, window: Tumbling | Hopping, ts: str = "_ts") -> pl.DataFrame:
    """``df`` with int64 ``window_start``/``window_end`` (µs) added; a hopping window repeats
    each row once per window it falls into."""
    size = us(window.size)
    slide = us(window.slide) if isinstance(window, Hopping) else size
    base = pl.col(ts) - pl.col(ts).mod(slide)
    n = size // slide
    if n == 1:
        return df.with_columns(window_start=base, window_end=base + size)
    hops = pl.int_ranges(0, n, dtype=pl.Int64) * slide
    out = df.with_columns(window_start=base - hops).explode("window_start")
    return out.with_columns(window_end=pl.col("window_start") + size)


def session_ids(items: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``items`` (int64 ``window_start``/``window_end`` intervals, any key columns) sorted by
    start, with ``_session`` (int) numbering the merged sessions within each key."""
    # Sorting by time alone is enough: ``over(keys)`` runs each key's rows in frame order.
    items = items.sort(["window_start", "window_end"])
    prev_end = pl.col("window_end").cum_max().shift(1).over(keys)
    items = items.with_columns(_opens=prev_end.is_null() | (pl.col("window_start") >= prev_end))
    return items.with_columns(_session=pl.col("_opens").cum_sum().over(keys)).drop("_opens")
