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

**Single writer.** One process at a time runs a query: :meth:`Checkpoint.lock` takes an OS
file lock (``flock`` on ``<root>/writer.lock``, via filelock) and records the holder's pid in
``writer.pid``. The kernel drops the lock when its process dies, even by SIGKILL, so a
restarted processor starts at once. The lock is reentrant within one process.

**Quarantine.** A batch that raises is recorded in ``quarantine/N.json`` (error, count,
times, planned offsets): the count survives restarts, because it is the supervisor restarting
the crashed processor that repeats the failure. The same error ``quarantine_after`` times in
a row quarantines batch N: the processor refuses to run it (or anything after it) with
:class:`BatchQuarantinedError` until an operator skips it (:meth:`Checkpoint.skip`, command
``headwater quarantine skip N``), which writes ``commits/N`` marked ``"skipped"`` with the
batch's offsets, or lifts the quarantine once the cause is fixed (:meth:`Checkpoint.retry`,
``headwater quarantine retry N``). A batch that succeeds clears its record.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from headwater.errors import ConflictError, HeadwaterError
from headwater.files import write_atomic

RETAIN = 100  # batches of offsets/commits kept, as Spark's minBatchesToRetain


class CheckpointError(HeadwaterError):
    """The checkpoint directory is inconsistent (e.g. offsets missing for a commit)."""


class BatchQuarantinedError(ConflictError):
    """A micro-batch failed the same way ``stream.quarantine_after`` times in a row; the query
    stops before it until an operator skips it (CLI exit 4)."""


class WriterLockedError(ConflictError):
    """Another process runs this query (CLI exit 4)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


class Checkpoint:
    """Offset log and commit log of one query under ``root``.

    Offsets are ``{topic: {partition: [start, end)}}`` with end exclusive."""

    def __init__(self, root: Path, retain: int = RETAIN):
        self.root = Path(root)
        self.retain = retain
        self.offsets_dir = self.root / "offsets"
        self.commits_dir = self.root / "commits"
        self.state_dir = self.root / "state"
        self.quarantine_dir = self.root / "quarantine"
        for d in (self.offsets_dir, self.commits_dir, self.state_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- single writer ------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, timeout_s: float = 0) -> Iterator[None]:
        """Hold the query's writer lock, waiting up to ``timeout_s``; :class:`WriterLockedError`
        naming the lock file and the holder's pid if another process holds it."""
        path = self.root / "writer.lock"
        # is_singleton: one lock object per path in a process, so the lock is reentrant there
        # (tests re-open a query in one process to simulate a restart). No soft-lock
        # fallback: only a kernel lock is released when its holder is SIGKILLed.
        lock = filelock.FileLock(path, timeout=0, thread_local=False, is_singleton=True, fallback_to_soft=False, preserve_lock_file=True)
        try:
            lock.acquire(timeout=timeout_s)
        except filelock.Timeout:
            try:
                holder = (self.root / "writer.pid").read_text().strip()
            except OSError:
                holder = "unknown"
            raise WriterLockedError(
                f"another process (pid {holder}) runs the stream query of {self.root}: it holds {path}; "
                "stop it first (one stream processor per home)",
                field="stream",
            ) from None
        try:
            if lock.lock_counter == 1:
                write_atomic(self.root / "writer.pid", str(os.getpid()).encode())
            yield
        finally:
            lock.release()

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

    # -- quarantine ---------------------------------------------------------------------
    def _failure_path(self, batch_id: int) -> Path:
        return self.quarantine_dir / f"{batch_id}.json"

    def failure(self, batch_id: int) -> dict[str, Any] | None:
        """The failure record of batch ``batch_id`` (``None`` if it never failed, or succeeded since)."""
        path = self._failure_path(batch_id)
        return json.loads(path.read_text()) if path.exists() else None

    def failures(self) -> list[dict[str, Any]]:
        """Every failure record, by batch id: ``batch_id``, ``offsets`` (as in ``offsets/N``),
        ``error`` (``"<class>: <message>"``), ``count`` (failures in a row with that error),
        ``first_failed_ms`` / ``last_failed_ms`` / ``quarantined_ms`` / ``skipped_ms`` (ms
        since epoch, UTC, or ``None``) and, once skipped, ``skip`` (what the skip recorded)."""
        ids = sorted(int(p.stem) for p in self.quarantine_dir.glob("*.json") if p.stem.isdigit())
        return [r for r in (self.failure(b) for b in ids) if r is not None]

    def record_failure(self, batch_id: int, error: str, quarantine_after: int) -> dict[str, Any]:
        """Count one more failure of batch ``batch_id`` with ``error``; a different error
        restarts the count. Quarantines the batch at ``quarantine_after``. Returns the record."""
        now = _now_ms()
        rec = self.failure(batch_id)
        if rec is None or rec["error"] != error:
            body = self._read_offsets_file(batch_id)
            offsets = {t: parts for t, parts in body.items() if t != "_metadata"}
            rec = {"batch_id": batch_id, "offsets": offsets, "error": error, "count": 0, "first_failed_ms": now,
                   "quarantined_ms": None, "skipped_ms": None}
        rec["count"] += 1
        rec["last_failed_ms"] = now
        if rec["count"] >= quarantine_after and rec["quarantined_ms"] is None:
            rec["quarantined_ms"] = now
        write_atomic(self._failure_path(batch_id), json.dumps(rec).encode())
        return rec

    def clear_failure(self, batch_id: int) -> None:
        """Forget the failures of ``batch_id`` (it succeeded)."""
        self._failure_path(batch_id).unlink(missing_ok=True)

    def check_quarantine(self, batch_id: int) -> None:
        """:class:`BatchQuarantinedError` if ``batch_id`` is quarantined and not skipped."""
        rec = self.failure(batch_id)
        if rec is not None and rec["quarantined_ms"] is not None and rec["skipped_ms"] is None:
            raise BatchQuarantinedError(
                f"stream batch {batch_id} is quarantined: it failed {rec['count']} times in a row with "
                f"{rec['error']}; fix the cause and run `headwater quarantine retry {batch_id}`, or give it up with "
                f"`headwater quarantine skip {batch_id}` (see `headwater quarantine list`)",
                field="stream.quarantine_after",
            )

    def awaiting_decision(self, batch_id: int) -> dict[str, Any]:
        """The record of ``batch_id`` if it is quarantined, not skipped, and the batch the
        query stands at (planned, not committed); :class:`ConflictError` otherwise."""
        rec = self.failure(batch_id)
        if rec is None or rec["quarantined_ms"] is None or rec["skipped_ms"] is not None or self.recover()[0] != batch_id:
            raise ConflictError(f"stream batch {batch_id} is not a quarantined batch awaiting a decision "
                                "(see `headwater quarantine list`)", field="batch")
        return rec

    def retry(self, batch_id: int) -> dict[str, Any]:
        """Lift the quarantine of ``batch_id`` (its cause was fixed): the query runs it again
        on its next start, with a fresh failure count. Returns the record it dropped;
        :class:`ConflictError` as :meth:`awaiting_decision`."""
        rec = self.awaiting_decision(batch_id)
        self.clear_failure(batch_id)
        return rec

    def skip(self, batch_id: int, skip: dict[str, Any]) -> dict[str, Any]:
        """Commit quarantined batch ``batch_id`` as skipped: ``commits/N`` carries the previous
        totals plus ``skipped_batches``, and ``"skipped"``: the batch's offsets and ``skip``.
        The caller holds :meth:`lock` and has reset the batch's state to that of N−1.
        :class:`ConflictError` unless ``batch_id`` is the quarantined batch the query stands at."""
        rec = self.awaiting_decision(batch_id)
        committed = self.latest_committed()
        totals = dict(self.read_commit(committed)["totals"]) if committed is not None else {}
        totals["skipped_batches"] = totals.get("skipped_batches", 0) + 1
        now = _now_ms()
        self.write_commit(batch_id, {"batch_id": batch_id, "committed_ms": now, "batch": {}, "totals": totals,
                                     "skipped": {"offsets": rec["offsets"], "error": rec["error"], **skip}})
        rec.update(skipped_ms=now, skip=skip)
        write_atomic(self._failure_path(batch_id), json.dumps(rec).encode())
        return rec

    def _purge(self, batch_id: int) -> None:
        for d in (self.offsets_dir, self.commits_dir):
            old = batch_id - self.retain
            p = d / str(old)
            if old >= 0 and p.exists():
                p.unlink()
