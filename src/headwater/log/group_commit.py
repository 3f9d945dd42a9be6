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
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future

from headwater.log.base import Append, EventLog

_STOP = object()


class GroupCommitWriter:
    """Thread that appends submitted :class:`Append` lists to ``log`` in shared transactions."""

    def __init__(self, log: EventLog, max_group: int = 512):
        self._log = log
        self._max_group = max_group
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="log-group-commit", daemon=True)
        self._thread.start()

    def submit(self, appends: Sequence[Append]) -> Future:
        """Queue ``appends``; the future resolves (to ``None``) once they are durable."""
        fut: Future = Future()
        self._queue.put((list(appends), fut))
        return fut

    def close(self) -> None:
        """Commit everything already submitted, then stop the thread."""
        self._queue.put(_STOP)
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
            if stop:
                return
