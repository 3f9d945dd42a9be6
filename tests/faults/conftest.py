"""Fixtures of the fault suites: a small disk that a test fills and frees.

``disk``: a 64 MB tmpfs mounted for the test (the machine runs as root; ``mount -t tmpfs``
works). Where mounting is refused (non-root CI) — or ``HEADWATER_TEST_INJECT_ENOSPC=1`` asks
for it — the same test runs with the full disk injected at the write calls instead
(:mod:`tests.faults.enospc`)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENOSPC_LAUNCHER = Path(__file__).with_name("enospc.py")
SIZE_MB = 64


class Disk:
    """The filesystem under ``root``. :meth:`fill` takes all its space but ``leave`` bytes
    (a ballast file; injected: every write fails), :meth:`free` gives it back."""

    def __init__(self, root: Path, mounted: bool):
        self.root, self.mounted = root, mounted
        self.flag = root.parent / f"{root.name}.enospc"  # injected mode: the disk is full while it exists
        self._ballast = root / ".ballast"

    def fill(self, leave: int = 0) -> None:
        if not self.mounted:
            self.flag.touch()
            return
        fd = os.open(self._ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 20, 1 << 12, 1):  # megabytes, then what they left
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
        if leave:
            os.truncate(self._ballast, max(0, self._ballast.stat().st_size - leave))

    def free(self) -> None:
        self.flag.unlink(missing_ok=True)
        self._ballast.unlink(missing_ok=True)

    def headwater(self) -> list[str]:
        """The command running ``headwater`` on this disk (with the injection when not mounted)."""
        return [sys.executable, str(ENOSPC_LAUNCHER), "" if self.mounted else str(self.flag)]


@pytest.fixture
def disk(tmp_path, monkeypatch):
    root = tmp_path / "disk"
    root.mkdir()
    mounted = False
    if os.environ.get("HEADWATER_TEST_INJECT_ENOSPC") != "1":
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}M", "tmpfs", str(root)], capture_output=True)
        mounted = done.returncode == 0
    d = Disk(root, mounted)
    if not mounted:
        from tests.faults.enospc import install

        install(d.flag, monkeypatch.setattr)
    try:
        yield d
    finally:
        d.free()
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=True)
