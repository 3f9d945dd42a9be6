"""Durable small-file writes shared by every stage (checkpoints, state, registry, source positions)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from headwater.errors import TransientError


def write_atomic(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` so that a crash (kill -9 or power loss) leaves the old file
    or the new one, never a mix: write a temporary file, fsync it, rename it over ``path``,
    fsync the directory (the rename is durable only then; see rename(2) and fsync(2)).
    ``mode``: permissions of the new file, less the umask (``0o600`` for owner-only files).

    The temporary name carries the pid, so two processes writing the same path never share
    one. Creates the parent directory. Raises :class:`TransientError` when the disk is full
    (ENOSPC / EDQUOT: the old file is intact, retry once space returns), else ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        tmp.unlink(missing_ok=True)  # a partial temporary file would hold the space that is short
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TransientError(f"{path}: disk full ({errno.errorcode[e.errno]}), the previous file is intact; free space and retry",
                                 field=str(path), retry_after_s=30) from e
        raise
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
