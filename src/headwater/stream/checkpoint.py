"""Checkpoint of a streaming query: write-ahead offset log + commit log (Spark's design).

Follows Spark Structured Streaming's ``OffsetSeqLog`` / ``CommitLog``
(``checkpointLocation/offsets/N`` and ``commits/N``):

1. Before batch N reads anything, ``offsets/N`` records exactly which log offsets it
   covers, per topic and partition (``[start, end)``), and is fsynced, with the batch's
   metadata under ``"_metadata"`` (its processing-time timestamp, as Spark's
   ``OffsetSeqMetadata.batchTimestampMs``). A replay of batch N after a crash therefore
   reads the very same events at the same processing time: same batch, same output.
2. The batch runs; its sinks commit idempotently (Delta ``txn`` with the batch id), then
   its state is stored (``state/...`` keyed by N: dedup ids and window-operator snapshots,
   :mod:`headwater.stream.dedup`, :mod:`headwater.stream.state`).
3. ``commits/N`` is written last. A batch is complete iff its commit file exists.

Recovery: let P be the newest offsets file and C the newest commit file. If P == C the
next batch starts where P ended. If P == C + 1, batch P is re-run with P's offsets,
on top of state C; sinks that already hold txn P skip their write. Anything else means
the checkpoint was tampered with and raises ``CheckpointError``.

Files are written to a temporary name, fsynced and renamed, so a kill -9 leaves either
the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from headwater.errors import HeadwaterError
from headwater.files import write_atomic

RETAIN = 100  # batches of offsets/commits kept, as Spark's minBatchesToRetain


class CheckpointError(HeadwaterError):
    """The checkpoint directory is inconsistent (e.g. offsets missing for a commit)."""


class Checkpoint:
    """Offset log and commit log of one query under ``root``.

    Offsets are ``{topic: {partition: [start, end)}}`` with end exclusive."""

    def __init__(self, root: Path, retain: int = RETAIN):
        self.root = Path(root)
        self.retain = retain
        self.offsets_dir = self.root / "offsets"
        self.commits_dir = self.root / "commits"
        self.state_dir = self.root / "state"
        for d in (self.offsets_dir, self.commits_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def _latest(d: Path) -> int | None:
        ids = [int(p.name) for p in d.iterdir() if p.name.isdigit()]
        return max(ids) if ids else None

    def latest_planned(self) -> int | None:
        return self._latest(self.offsets_dir)

    def latest_committed(self) -> int | None:
        return self._latest(self.commits_dir)

    def write_offsets(
        self, batch_id: int, offsets: dict[str, dict[int, tuple[int, int]]], metadata: dict[str, Any] | None = None
    ) -> None:
        body: dict[str, Any] = {t: {str(p): list(r) for p, r in parts.items()} for t, parts in offsets.items()}
        if metadata is not None:
            body["_metadata"] = metadata
        write_atomic(self.offsets_dir / str(batch_id), json.dumps(body).encode())

    def _read_offsets_file(self, batch_id: int) -> dict[str, Any]:
        path = self.offsets_dir / str(batch_id)
        if not path.exists():
            raise CheckpointError(f"offsets/{batch_id} is missing from {self.root}")
        return json.loads(path.read_text())

    def read_offsets(self, batch_id: int) -> dict[str, dict[int, tuple[int, int]]]:
        body = self._read_offsets_file(batch_id)
        return {t: {int(p): (r[0], r[1]) for p, r in parts.items()} for t, parts in body.items() if t != "_metadata"}

    def read_metadata(self, batch_id: int) -> dict[str, Any]:
        """The ``_metadata`` of ``offsets/N`` (``{}`` if it was written without)."""
        return self._read_offsets_file(batch_id).get("_metadata", {})

    def write_commit(self, batch_id: int, info: dict[str, Any]) -> None:
        write_atomic(self.commits_dir / str(batch_id), json.dumps(info).encode())
        self._purge(batch_id)

    def read_commit(self, batch_id: int) -> dict[str, Any]:
        return json.loads((self.commits_dir / str(batch_id)).read_text())

    def recover(self) -> tuple[int | None, int | None]:
        """``(replay, last_committed)``: the batch to re-run (or ``None``) and the last
        complete batch (or ``None`` for a new query). Raises ``CheckpointError``."""
        planned, committed = self.latest_planned(), self.latest_committed()
        if planned is None and committed is None:
            return None, None
        if planned is None or (committed is not None and planned < committed):
            raise CheckpointError(f"commit log ahead of offset log in {self.root}")
        if committed == planned:
            return None, committed
        if planned != (committed if committed is not None else -1) + 1:
            raise CheckpointError(f"offsets/{planned} has no commits/{planned - 1} in {self.root}")
        return planned, committed

    def _purge(self, batch_id: int) -> None:
        for d in (self.offsets_dir, self.commits_dir):
            old = batch_id - self.retain
            p = d / str(old)
            if old >= 0 and p.exists():
                p.unlink()
