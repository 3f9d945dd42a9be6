"""Late side output: ``bronze.late_events``.

An event is too late for an aggregate when ``event_ts <= watermark − allowed_lateness``
(:mod:`headwater.stream.pipeline`). Such an event still lands in ``bronze.events`` (the
batch layer, the source of truth, rebuilds its daily partition) and is recorded once here,
with the watermark that decided and the aggregates it was left out of.

Schema: the canonical event columns (:data:`headwater.events.EVENT_SCHEMA`) + ``watermark``
(``timestamp[us, UTC]``: the global watermark batch N used, i.e. as of the end of batch N−1)
+ ``reason`` (string, e.g. ``"event_ts <= watermark - allowed_lateness for
realtime.events_per_minute (lateness 0s), realtime.sessions (lateness 0s)"``); partitioned by
``ds`` (of ``event_ts``).
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from headwater.lake.schemas import LATE_SCHEMA
from headwater.events import EVENT_SCHEMA, TS
from headwater.stream.pipeline import Aggregate, us



def too_late(agg: Aggregate, watermark_us: int | None) -> pl.Expr:
    """Boolean expression over ``_ts`` (µs): the event is dropped from ``agg``."""
    if watermark_us is None:
        return pl.lit(False)
    return pl.col("_ts") <= watermark_us - us(agg.allowed_lateness)


def split(
    frame: pl.DataFrame, events: pa.Table, aggregates: tuple[Aggregate, ...], watermark_us: int | None
) -> tuple[pl.DataFrame, pa.Table | None]:
    """``frame`` (events with ``_ts`` and ``_row``, the row of ``events``) with one boolean
    ``_late_<i>`` per aggregate, and the ``late_events`` rows (``None`` if none)."""
    flags = [too_late(a, watermark_us).alias(f"_late_{i}") for i, a in enumerate(aggregates)]
    frame = frame.with_columns(flags)
    if watermark_us is None or not aggregates:
        return frame, None
    names = [
        pl.when(pl.col(f"_late_{i}")).then(pl.lit(f"{a.table} (lateness {a.allowed_lateness.total_seconds():g}s)"))
        for i, a in enumerate(aggregates)
    ]
    late = frame.filter(pl.any_horizontal([f"_late_{i}" for i in range(len(aggregates))])).select(
        "_row", reason=pl.concat_str([pl.lit("event_ts <= watermark - allowed_lateness for "), pl.concat_str(names, separator=", ", ignore_nulls=True)])
    )
    if late.height == 0:
        return frame, None
    rows = events.take(late.get_column("_row").to_arrow()).select(EVENT_SCHEMA.names)
    watermark = pa.array([watermark_us] * late.height, pa.int64()).cast(TS)
    rows = rows.append_column("watermark", watermark).append_column("reason", late.get_column("reason").to_arrow().cast(pa.string()))
    return frame, rows.cast(LATE_SCHEMA)
