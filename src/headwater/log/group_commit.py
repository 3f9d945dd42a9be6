"""Group commit: many concurrent producers share one durable log transaction.

The collector answers 200 only after a request's events are durably in the log. One
fsync per request would cap it at the disk's fsync rate, so a single writer thread
drains every append waiting at that moment and stores them in one transaction (the
classic database group commit); each waiting request's future resolves when that
transaction has committed, or fails with its exception.

On a log without :attr:`~headwater.log.base.EventLog.atomic_multi_topic_append`, the
drained submissions are stored with one append per topic (one transaction each): a
submission spanning topics then resolves only if all of its topics' appends succeeded, and
fails otherwise, possibly with some of its topics already stored.

Bounds and cancellation. At most ``max_queue`` submissions wait for the writer; one more is
refused at once with :class:`QueueFull` (the collector answers 429), so a slow log turns into
back-pressure instead of memory. A waiter may give up (a timeout cancels its future): a
submission cancelled while still queued is dropped unstored; one the writer has already
taken cannot be cancelled (:meth:`Future.set_running_or_notify_cancel`) and is committed
even though its waiter got an error — harmless, because a client retries after the error
and events are deduplicated by ``event_id`` downstream. Nothing a waiter does can stop the
writer thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from headwater.errors import TransientError
from headwater.log.base import Append, EventLog

_STOP = object()


class QueueFull(TransientError):
    """``max_queue`` submissions are already waiting for the writer; retry in ``retry_after_s``."""


class GroupCommitWriter:
    """Thread that appends submitted :class:`Append` lists to ``log`` in shared transactions.

    ``max_group``: submissions stored per transaction at most; ``max_queue``: submissions
    waiting at most (``None``: unbounded)."""

    def __init__(self, log: EventLog, max_group: int = 512, max_queue: int | None = None):
        self._log = log
        self._max_group = max_group
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue or 0)
        self._thread = threading.Thread(target=self._run, name="log-group-commit", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (False after :meth:`close`)."""
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Submissions queued and not yet taken by the writer (approximate, as ``qsize``)."""
        return self._queue.qsize()

    def submit(self, appends: Sequence[Append]) -> Future:
        """Queue ``appends``; the future resolves (to ``None``) once they are durable, or fails
        with the log's error. Cancelling it before the writer took it drops the submission.
        Raises :class:`QueueFull` (never blocks) when ``max_queue`` submissions wait."""
        fut: Future = Future()
        try:
            self._queue.put_nowait((list(appends), fut))
        except queue.Full:
            raise QueueFull(f"{self.max_queue} log appends already waiting for the group commit",
                            field="max_queue", retry_after_s=1.0) from None
        return fut

    def close(self) -> None:
        """Commit everything already submitted, then stop the thread."""
        # A full queue drains while we wait for room for the stop marker.
        while self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=0.1)
                break
            except queue.Full:
                continue
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            group = [item]
            stop = False
            while len(group) < self._max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                group.append(nxt)
            # Claim each future: a cancelled one is skipped (its appends are not stored), and a
            # claimed (running) one can no longer be cancelled, so resolving it below cannot raise.
            self._commit([(appends, fut) for appends, fut in group if fut.set_running_or_notify_cancel()])
            if stop:
                return

    def _commit(self, group: list[tuple[list[Append], Future]]) -> None:
        failed: dict[str, BaseException] = {}
        for appends in self._log.atomic_groups([a for appends, _ in group for a in appends]):
            try:
                self._log.append(appends)
            except BaseException as e:  # every waiter with appends in it learns it failed
                failed.update((a.topic, e) for a in appends)
        for appends, fut in group:
            error = next((failed[a.topic] for a in appends if a.topic in failed), None)
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(None)
