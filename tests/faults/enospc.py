"""Fault injection of a full disk at the write calls, for where no small filesystem can be
mounted (non-root CI): while the flag file exists, every write of the event log, the lake
and the stream's checkpoint fails as a full disk does (``SQLITE_FULL``, ``ENOSPC``).

In-process: ``install(flag)``. In a subprocess: ``python tests/faults/enospc.py FLAG ARGS``
runs ``headwater ARGS`` with the injection installed."""

from __future__ import annotations

import errno
import sqlite3
import sys
from pathlib import Path


def _full(flag: Path) -> None:
    if flag.exists():
        raise OSError(errno.ENOSPC, "No space left on device (injected)")


def install(flag: Path, patch=None) -> None:
    """Patch the write calls (``patch(obj, name, value)``: pytest's ``monkeypatch.setattr``,
    or plain ``setattr``)."""
    from deltalake import DeltaTable

    from headwater.lake import store
    from headwater.log.sqlite import SqliteLog
    from headwater.stream import checkpoint, dedup, state

    patch = patch or setattr
    transaction = SqliteLog._transaction

    def full_transaction(self):
        if flag.exists():
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise e
        return transaction(self)

    def guard(fn):
        def wrapped(*args, **kwargs):
            _full(flag)
            return fn(*args, **kwargs)

        return wrapped

    class FullDeltaTable(DeltaTable):
        def merge(self, *args, **kwargs):
            _full(flag)
            return super().merge(*args, **kwargs)

        @property
        def optimize(self):
            _full(flag)
            return super().optimize

    patch(SqliteLog, "_transaction", full_transaction)
    patch(store, "write_deltalake", guard(store.write_deltalake))
    patch(store, "DeltaTable", FullDeltaTable)
    patch(checkpoint, "write_atomic", guard(checkpoint.write_atomic))
    patch(state, "write_atomic", guard(state.write_atomic))
    patch(dedup, "write_atomic", guard(dedup.write_atomic))


if __name__ == "__main__":
    if sys.argv[1]:
        install(Path(sys.argv[1]))
    from headwater.cli.main import cli

    cli.main(sys.argv[2:], prog_name="headwater")
