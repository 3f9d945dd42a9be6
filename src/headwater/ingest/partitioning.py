"""Partitioning of canonical events over the ``events`` topic, by identity key.

Identity key = ``user_id`` token if present, else ``anonymous_id`` token (both are HMAC
hex tokens, :mod:`.tokens`). ``partition = int(key[:8], 16) % partitions``: a function
of the token alone, hence stable across collector restarts and processes (unlike
Python's salted ``hash``), and uniform because HMAC output is. All events of one user
land in one partition, in request order — what per-user state (sessions, funnels)
downstream relies on, as with a keyed Kafka topic.

Anonymous events of a user who later identifies sit in the anonymous id's partition;
identity stitching happens in the batch layer, not by re-partitioning.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from headwater.errors import InvalidInputError
from headwater.events import EVENTS_TOPIC
from headwater.log.base import Append

# ASCII code → hex nibble value (only 0-9a-f occur in tokens).
_HEX = np.zeros(256, dtype=np.uint32)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10, dtype=np.uint32)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16, dtype=np.uint32)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint32)
_SHIFTS = np.arange(28, -1, -4, dtype=np.uint32)  # nibble i of 8 → bits 28-4i


def partition_of(keys: pa.Array | pa.ChunkedArray, partitions: int) -> np.ndarray:
    """``int(key[:8], 16) % partitions`` for each key, as an int64 numpy array.

    ``keys``: string array of hex tokens (≥ 8 characters, no nulls). Vectorised: reads
    the first 8 bytes of every value straight from the Arrow data buffer."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if keys.null_count:
        raise InvalidInputError("identity keys must not be null (an event needs user_id or anonymous_id)", field="user_id")
    _, offsets_buf, data_buf = keys.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[keys.offset : keys.offset + n]
    data = np.frombuffer(data_buf, dtype=np.uint8)
    nibbles = _HEX[data[offsets[:, None] + np.arange(8)]]
    value = (nibbles << _SHIFTS).sum(axis=1, dtype=np.uint64)
    return (value % partitions).astype(np.int64)


def identity_keys(events: pa.Table) -> pa.ChunkedArray:
    """``coalesce(user_id, anonymous_id)`` of an ``EVENT_SCHEMA`` table."""
    return pc.coalesce(events["user_id"], events["anonymous_id"])


def split_by_partition(events: pa.Table, partitions: int) -> list[tuple[int, pa.Table]]:
    """``events`` grouped by partition: ``[(partition, rows), ...]`` in partition order,
    rows in their original order within a partition (stable sort), empty groups left out."""
    if events.num_rows == 0:
        return []
    part = partition_of(identity_keys(events), partitions)
    counts = np.bincount(part, minlength=partitions)
    nonzero = np.flatnonzero(counts)
    if len(nonzero) == 1:
        return [(int(nonzero[0]), events)]
    ordered = events.take(pa.array(np.argsort(part, kind="stable")))
    out, start = [], 0
    for p in nonzero:
        c = int(counts[p])
        out.append((int(p), ordered.slice(start, c)))
        start += c
    return out


def event_appends(events: pa.Table, partitions: int, topic: str = EVENTS_TOPIC) -> list[Append]:
    """One :class:`Append` per non-empty partition."""
    return [Append(topic, p, t) for p, t in split_by_partition(events, partitions)]
