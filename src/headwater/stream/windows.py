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
  written as a running max + cumulative sum over one sort by key and start, not a loop
  and not a group-by.
"""

from __future__ import annotations

import numpy as np
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
    """``items`` (int64 ``window_start``/``window_end`` intervals, non-null key columns
    ``keys``) sorted by ``(*keys, window_start, window_end)``, with ``_session`` (int64)
    numbering the merged sessions: one id per session, unique across keys, increasing in
    that order."""
    items = items.sort([*keys, "window_start", "window_end"])
    first = np.ones(items.height, bool)  # the first item of its key
    if items.height > 1:
        differs = items.select(pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys]).fill_null(True))
        first = differs.to_series().to_numpy()
    start = items.get_column("window_start").to_numpy()
    # The running maximum end within each key, without a group-by: ends are replaced by
    # their rank among the distinct ends (order-preserving, < n), and key number g adds g·n,
    # so one global running maximum never crosses a key (no overflow while n² < 2⁶³).
    ends, rank = np.unique(items.get_column("window_end").to_numpy(), return_inverse=True)
    offset = (np.cumsum(first) - 1) * len(ends)
    running = ends[np.maximum.accumulate(rank + offset) - offset]
    opens = first.copy()
    opens[1:] |= start[1:] >= running[:-1]
    return items.with_columns(_session=pl.Series(np.cumsum(opens), dtype=pl.Int64))
