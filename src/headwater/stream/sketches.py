"""Distinct counts with Apache DataSketches HLL sketches (mergeable, bounded size).

A window's distinct users is an HLL sketch (``datasketches.hll_sketch``, type HLL_8, ``lg_k``
from the :class:`~headwater.stream.pipeline.Measure`); its size is bounded by ``2**lg_k``
bytes whatever the traffic, so a hot user or a busy window cannot grow state. Sketches are
stored serialized (``binary``) in the state store and in the output tables, where readers
can union them (``hll_union``) into any coarser range.

The Python binding updates one value per call (no numpy/Arrow overload in datasketches
5.2), so callers update a sketch once per *distinct* ``(window, group, value)`` of a batch,
never once per event: :func:`combine` takes those distinct pairs.
"""

from __future__ import annotations

import datasketches as ds
import polars as pl

HLL_TYPE = ds.tgt_hll_type.HLL_8


def combine(n: int, old: pl.DataFrame, new: pl.DataFrame, lg_k: int) -> list[bytes]:
    """Serialized sketches for result rows ``0..n-1``.

    ``old``: columns ``_row`` (int, result row) and ``sketch`` (binary, a serialized sketch to
    union in; nulls ignored). ``new``: columns ``_row`` and ``value`` (string), one row per
    distinct pair, sorted (the update order fixes the sketch bytes, so a replay is identical).
    A result row with neither gets an empty sketch."""
    sketches = [ds.hll_sketch(lg_k, HLL_TYPE) for _ in range(n)]
    unions: dict[int, ds.hll_union] = {}
    for row, blob in old.drop_nulls("sketch").iter_rows():
        u = unions.get(row)
        if u is None:
            u = unions[row] = ds.hll_union(lg_k)
        u.update(ds.hll_sketch.deserialize(blob))
    rows = new.get_column("_row").to_list()
    values = new.get_column("value").to_list()
    for row, value in zip(rows, values):  # one call per distinct (window, group, value)
        sketches[row].update(value)
    out = []
    for i, sk in enumerate(sketches):
        u = unions.get(i)
        if u is not None:
            u.update(sk)
            sk = u.get_result(HLL_TYPE)
        out.append(sk.serialize_compact())
    return out


def estimates(blobs: pl.Series) -> pl.Series:
    """HLL estimate (float64) of each serialized sketch; one call per output row."""
    return pl.Series([ds.hll_sketch.deserialize(b).get_estimate() for b in blobs.to_list()], dtype=pl.Float64)
