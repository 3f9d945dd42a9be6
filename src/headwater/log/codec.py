"""Payload codec of log records: one Arrow IPC stream per record.

Columns travel as they are (no per-event encoding), so the stream processor gets Arrow
batches straight from the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from headwater.log.base import Record


def encode(table: pa.Table) -> bytes:
    """``table`` as Arrow IPC stream bytes."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class Undecodable:
    """A record whose payload is not a readable Arrow IPC stream of ``count`` rows."""

    record: Record
    error: str


def decode(records: Sequence[Record], start: int, end: int) -> tuple[pa.Table | None, list[Undecodable]]:
    """Rows with offsets in ``[start, end)`` of ``records`` (one topic/partition, in offset order).

    Returns the decoded rows with two extra columns, ``_partition`` (int32) and ``_offset``
    (int64), and the records that could not be decoded (they are never raised: the caller
    dead-letters them and moves on). ``None`` when no row decoded."""
    tables, bad, firsts, counts, parts = [], [], [], [], []
    for rec in records:
        try:
            t = pa.ipc.open_stream(rec.payload).read_all()
            if t.num_rows != rec.count:
                raise ValueError(f"payload has {t.num_rows} rows, record header says {rec.count}")
        except (pa.ArrowException, ValueError) as e:
            bad.append(Undecodable(rec, f"{type(e).__name__}: {e}"))
            continue
        lo, hi = max(start - rec.offset, 0), min(end - rec.offset, rec.count)
        if hi <= lo:
            continue
        tables.append(t.slice(lo, hi - lo) if (lo, hi) != (0, rec.count) else t)
        firsts.append(rec.offset + lo)
        counts.append(hi - lo)
        parts.append(rec.partition)
    if not tables:
        return None, bad
    # _partition/_offset for all rows at once: row j of record i has offset firsts[i] + j.
    counts_np = np.asarray(counts, dtype=np.int64)
    row_start = np.cumsum(counts_np) - counts_np
    offsets = np.arange(int(counts_np.sum()), dtype=np.int64) + np.repeat(np.asarray(firsts, dtype=np.int64) - row_start, counts_np)
    out = pa.concat_tables(tables, promote_options="default")
    out = out.append_column("_partition", pa.array(np.repeat(np.asarray(parts, dtype=np.int32), counts_np)))
    return out.append_column("_offset", pa.array(offsets)), bad
