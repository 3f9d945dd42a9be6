"""Windowed aggregation operator with bounded state: one per :class:`~headwater.stream.pipeline.Aggregate`.

State: one row per *open* window (tumbling / hopping: per ``(window_start, window_end,
*group_by)``; session: per ``(*group_by, window_start)``) holding the partial measures —
``count`` (int64), ``sum`` (float64) and, for ``distinct``, ``<name>_sketch`` (a serialized
HLL sketch, :mod:`headwater.stream.sketches`). Per micro-batch (semantics in
:mod:`headwater.stream.pipeline`):

1. the caller has removed events too late for this aggregate (``ts <= watermark − lateness``);
2. the batch is reduced to one partial row per window and group (Polars ``group_by``) and
   folded into the state (a join on the window key; sketches unioned once per touched window);
3. with the new watermark, windows with ``window_end <= watermark − lateness`` close: they
   leave the state (append mode emits them now).

Memory is bounded by open windows × groups (× sketch size ≤ 2**lg_k bytes), never by events:
a hot key adds to a counter and a fixed-size sketch, not rows.

Times inside the operator are int64 µs since epoch (UTC); :meth:`WindowOperator.output`
converts to ``timestamp[us, UTC]``.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from headwater.stream import sketches, windows
from headwater.stream.pipeline import Aggregate, Session, us


class WindowOperator:
    """Open-window state of one aggregate and its per-batch update."""

    def __init__(self, spec: Aggregate, state: pa.Table | None = None):
        self.spec = spec
        self.group = list(spec.group_by)
        self.keys = ["window_start", "window_end", *self.group]
        self.session = isinstance(spec.window, Session)
        self.state: pl.DataFrame | None = pl.from_arrow(state) if state is not None and state.num_rows else None
        self.lateness_us = us(spec.allowed_lateness)

    # -- measures ---------------------------------------------------------------------
    def _partial_exprs(self) -> list[pl.Expr]:
        """Per-event columns (``count`` = 1, ``sum`` = value) that add up into the state."""
        out = []
        for m in self.spec.measures:
            if m.kind == "count":
                out.append(pl.lit(1, pl.Int64).alias(m.name))
            elif m.kind == "sum":
                out.append(pl.col(m.column).cast(pl.Float64).fill_null(0.0).alias(m.name))
        return out

    def _additive(self) -> list[str]:
        return [m.name for m in self.spec.measures if m.kind != "distinct"]

    def _distinct(self):
        return [m for m in self.spec.measures if m.kind == "distinct"]

    def _sketches(self, result: pl.DataFrame, old: pl.DataFrame, new: pl.LazyFrame | None) -> pl.DataFrame:
        """Add ``<name>_sketch`` to ``result`` (output windows numbered by ``_row``): the union
        of the state's sketches in ``old`` (``_row`` + ``<name>_sketch``) and of the values in
        ``new`` (``_row`` + the measure's column), updated once per distinct (row, value)."""
        cols = []
        for m in self._distinct():
            sk = f"{m.name}_sketch"
            prior = old.select("_row", sketch=pl.col(sk)) if sk in old.columns else pl.DataFrame(schema={"_row": pl.UInt32, "sketch": pl.Binary})
            # Lazy: the join that numbers the events, the dedup and the sort run as one plan.
            values = new.select("_row", value=pl.col(m.column).cast(pl.String)).drop_nulls("value").unique().sort("_row", "value").collect()
            cols.append(pl.Series(sk, sketches.combine(result.height, prior, values, m.lg_k), pl.Binary))
        return result.with_columns(cols) if cols else result

    @property
    def merge_keys(self) -> tuple[str, ...]:
        """Key of an output row: a session's end moves as it grows, so it is not part of it."""
        return (*self.group, "window_start") if self.session else tuple(self.keys)

    def _state_columns(self) -> list[str]:
        return [*self.keys, *self._additive(), *[f"{m.name}_sketch" for m in self._distinct()]]

    # -- one batch --------------------------------------------------------------------
    def update(self, events: pl.DataFrame, watermark_us: int | None) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Fold ``events`` (on-time for this aggregate; int64 ``_ts`` µs + the group and
        measure columns) into the state, then close windows at ``watermark_us`` (the watermark
        after this batch). Returns ``(emit, deleted)``: window rows to upsert (state layout,
        sorted by key) and keys of session rows that merged away (update mode only)."""
        if self.session:
            changed, deleted = self._update_sessions(events)
        else:
            changed, deleted = self._update_windows(events), None
        closed = None
        if self.state is not None and watermark_us is not None:
            done = pl.col("window_end") <= watermark_us - self.lateness_us
            closed = self.state.filter(done)
            self.state = self.state.filter(~done)
        emit = changed if self.spec.output_mode == "update" else closed
        if emit is None:
            emit = changed.clear()
        if deleted is None or self.spec.output_mode == "append":
            deleted = emit.select(self.keys).clear()
        return emit.sort(self.keys, nulls_last=True), deleted

    def _update_windows(self, events: pl.DataFrame) -> pl.DataFrame:
        assigned = windows.assign(events.select(["_ts", *self.group, *self._columns()]), self.spec.window)
        partial = assigned.with_columns(self._partial_exprs()).group_by(self.keys).agg(
            [pl.col(c).sum() for c in self._additive()]
        )
        partial = partial.sort(self.keys, nulls_last=True).with_row_index("_row")
        if self.state is not None:
            partial = partial.join(self.state, on=self.keys, how="left", nulls_equal=True, suffix="_old", maintain_order="left")
            partial = partial.with_columns([(pl.col(c) + pl.col(f"{c}_old").fill_null(0)).alias(c) for c in self._additive()])
        new = assigned.lazy().join(partial.lazy().select([*self.keys, "_row"]), on=self.keys, nulls_equal=True) if self._distinct() else None
        changed = self._sketches(partial, partial, new).select(self._state_columns())
        self._replace(changed, [])
        return changed

    def _update_sessions(self, events: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        gap = us(self.spec.window.gap)
        events = events.drop_nulls(self.group)  # no key, no session
        new = events.select(
            [*self.group, pl.col("_ts").alias("window_start"), (pl.col("_ts") + gap).alias("window_end"), *self._partial_exprs()]
        ).with_columns(_new=pl.lit(True))
        old = pl.DataFrame()
        if self.state is not None:
            old = self.state.join(events.select(self.group).unique(), on=self.group, how="semi")
            old = old.with_columns(_new=pl.lit(False), _old_start=pl.col("window_start"))
        items = windows.session_ids(pl.concat([old, new], how="diagonal_relaxed") if old.height else new, self.group)
        if "_old_start" not in items.columns:
            items = items.with_columns(_old_start=pl.lit(None, pl.Int64))
        # Session ids are unique across keys and increase in (key, start) order: grouping by
        # the id alone keeps that order, which is the output order.
        merged = (
            items.group_by("_session", maintain_order=True)
            .agg(
                *[pl.col(g).first() for g in self.group],
                pl.col("window_start").min(),
                pl.col("window_end").max(),
                *[pl.col(c).sum() for c in self._additive()],
                pl.col("_new").any(),
            )
            .filter(pl.col("_new"))
            .with_row_index("_row")
        )
        target = merged.select(["_session", "_row", pl.col("window_start").alias("_start")])
        # Only the (few) state rows need their merged session; the batch's events only when a
        # distinct measure must find its session's row.
        olds = items.filter(~pl.col("_new")).join(target, on="_session")
        # Old sessions absorbed into a session that now starts earlier: their rows go away.
        deleted = olds.filter(pl.col("_old_start") != pl.col("_start")).select([pl.col("window_start"), pl.col("window_end"), *self.group])
        new = None
        if self._distinct():
            new = items.lazy().filter(pl.col("_new")).join(target.lazy(), on="_session")
            new = events.lazy().join(new.select(["_row", *self.group, pl.col("window_start").alias("_ts")]).unique(), on=[*self.group, "_ts"])
        changed = self._sketches(merged, olds, new).select(self._state_columns())
        self._replace(changed, [olds.select(self.group + ["window_start"])])
        return changed, deleted.select(self.keys)

    def _columns(self) -> list[str]:
        return sorted({m.column for m in self.spec.measures if m.column} - set(self.group))

    def _replace(self, changed: pl.DataFrame, removed: list[pl.DataFrame]) -> None:
        """State := state − removed keys − changed keys + changed."""
        if self.state is None:
            self.state = changed
            return
        key = list(self.merge_keys)
        state = self.state
        for r in [*removed, changed.select(key)]:
            state = state.join(r.select(key), on=key, how="anti", nulls_equal=True)
        self.state = pl.concat([state, changed], how="vertical_relaxed")

    # -- output -----------------------------------------------------------------------
    def output(self, rows: pl.DataFrame, deleted: pl.DataFrame) -> pa.Table:
        """Rows for ``realtime.<name>``: ``window_start``/``window_end`` as
        ``timestamp[us, UTC]``, the group columns, counts (int64), sums and distinct
        estimates (float64), ``<name>_sketch`` (binary); plus ``_delete`` (bool) marking
        keys to remove (merged sessions)."""
        est = [sketches.estimates(rows.get_column(f"{m.name}_sketch")).alias(m.name) for m in self._distinct()]
        rows = rows.with_columns(est, _delete=pl.lit(False))
        out = pl.concat([rows, deleted.with_columns(_delete=pl.lit(True))], how="diagonal_relaxed")
        order = [*self.keys]
        for m in self.spec.measures:
            order += [m.name] + ([f"{m.name}_sketch"] if m.kind == "distinct" else [])
        ts = [pl.from_epoch(c, "us").dt.replace_time_zone("UTC").alias(c) for c in ("window_start", "window_end")]
        return out.with_columns(ts).select([*order, "_delete"]).to_arrow()

    def snapshot(self) -> pa.Table:
        """The open-window state as Arrow (for :class:`headwater.stream.state.StateStore`)."""
        return self.state.to_arrow() if self.state is not None else pa.table({})

    def __len__(self) -> int:
        return 0 if self.state is None else self.state.height
