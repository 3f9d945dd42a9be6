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

Bounds and cancellation. At most ``max_queue`` submissions wait for the writer, counted by
their ``weight`` (the collector submits a batch of requests at once, weighing as many); one
more is refused at once with :class:`QueueFull` (the collector answers 429), so a slow log
turns into back-pressure instead of memory. A waiter may give up (a timeout cancels its
future): a submission cancelled while still queued is dropped unstored; one the writer has
already taken cannot be cancelled (:meth:`Future.set_running_or_notify_cancel`) and is
committed even though its waiter got an error — harmless, because a client retries after the
error and events are deduplicated by ``event_id`` downstream. Nothing a waiter does can stop
the writer thread.
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

    ``max_group``: submissions stored per transaction at most; ``max_queue``: total weight of
    the submissions waiting at most (``None``: unbounded)."""

    def __init__(self, log: EventLog, max_group: int = 512, max_queue: int | None = None):
        self._log = log
        self._max_group = max_group
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting = 0  # weight queued and not yet taken, under _lock
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="log-group-commit", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the writer thread runs (False after :meth:`close`)."""
        return self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Weight of the submissions queued and not yet taken by the writer."""
        return self._waiting

    def room(self) -> int | None:
        """The weight :meth:`submit` takes now (``None``: unbounded); only grows until the next submit."""
        return None if self.max_queue is None else max(0, self.max_queue - self._waiting)

    def submit(self, appends: Sequence[Append], weight: int = 1) -> Future:
        """Queue ``appends`` (counting ``weight`` against ``max_queue``); the future resolves (to
        ``None``) once they are durable, or fails with the log's error. Cancelling it before the
        writer took it drops the submission. Raises :class:`QueueFull` (never blocks) when the
        submission does not fit in ``max_queue``."""
        fut: Future = Future()
        with self._lock:
            if self.max_queue is not None and self._waiting + weight > self.max_queue:
                raise QueueFull(f"{self._waiting} already waiting for the group commit (limit {self.max_queue})",
                                field="max_queue", retry_after_s=1.0)
            self._waiting += weight
        self._queue.put((list(appends), fut, weight))
        return fut

    def close(self) -> None:
        """Commit everything already submitted, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _take(self, item):
        """``item`` (a submission) is the writer's now: its weight no longer waits."""
        if item is not _STOP:
            with self._lock:
                self._waiting -= item[2]
        return item

    def _run(self) -> None:
        while True:
            item = self._take(self._queue.get())
            if item is _STOP:
                return
            group = [item]
            stop = False
            while len(group) < self._max_group:
                try:
                    nxt = self._take(self._queue.get_nowait())
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                group.append(nxt)
            # Claim each future: a cancelled one is skipped (its appends are not stored), and a
            # claimed (running) one can no longer be cancelled, so resolving it below cannot raise.
            self._commit([(appends, fut) for appends, fut, _ in group if fut.set_running_or_notify_cancel()])
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
