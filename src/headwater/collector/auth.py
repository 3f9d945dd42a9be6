"""Who sent a request: write key → source, HTTP Basic auth, and the auth-failure rate limit.

Auth is HTTP Basic (username = write key, password ignored), else the write key in the body;
the key maps to a source via ``sources.json`` (:class:`WriteKeys`, re-read when it
changes). Missing / unknown keys are answered 401 and recorded as ``auth_failure`` bad
rows, at most :data:`AUTH_FAILURE_ROWS_PER_MINUTE` a minute (:class:`AuthFailureLimiter`).
"""

from __future__ import annotations

import base64
import binascii
import os
import time

from headwater.config import Home, Source

AUTH_FAILURE_ROWS_PER_MINUTE = 60


class WriteKeys:
    """Write key → source name, from ``home.sources()``, reloaded when ``sources.json``
    changes (mtime/size/inode). Known keys cost a dict lookup: the file is stat-ed at most
    every ``interval`` seconds. An unknown key re-stats it at once (one ``stat``, the file
    is re-read only if it changed), so a source added by ``headwater up`` works on its
    first request; a revoked key stops working within ``interval``."""

    def __init__(self, home: Home, interval: float = 1.0):
        self._home = home
        self._interval = interval
        self._stamp: tuple | None = None
        self._keys: dict[str, str] = {}
        self._configs: dict[str, Source] = {}
        self._checked = float("-inf")
        self._refresh(time.monotonic())

    def source(self, write_key: str) -> str | None:
        """The source name of ``write_key``, or None if unknown."""
        now = time.monotonic()
        if now - self._checked >= self._interval:
            self._refresh(now)
        name = self._keys.get(write_key)
        if name is None and now != self._checked:  # a miss: re-stat now (a source may just have been added)
            self._refresh(now)
            name = self._keys.get(write_key)
        return name

    def config(self, name: str | None) -> Source | None:
        """The full configuration of source ``name`` (reloaded with ``sources.json``), None
        for an unknown source or ``name`` None."""
        return self._configs.get(name) if name is not None else None

    def _refresh(self, now: float) -> None:
        self._checked = now
        try:
            st = os.stat(self._home.sources_path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp:
            return
        try:
            sources = self._home.sources()
        except (OSError, ValueError, TypeError):  # unreadable: keep the keys we have
            return
        self._keys = {s.write_key: s.name for s in sources}
        self._configs = {s.name: s for s in sources}
        self._stamp = stamp


def basic_auth_user(header: str) -> str | None:
    """Username of an ``Authorization: Basic base64(user:password)`` header, else None."""
    scheme, _, cred = header.partition(" ")
    if scheme.lower() != "basic" or not cred:
        return None
    try:
        text = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return text.partition(":")[0] or None


class AuthFailureLimiter:
    """At most ``per_minute`` ``auth_failure`` bad rows a minute (a fixed one-minute window):
    a client with a wrong key, or a scanner, must not fill the log. Failures over the limit
    are counted, and the count is reported in the reason of the next recorded one."""

    def __init__(self, per_minute: int = AUTH_FAILURE_ROWS_PER_MINUTE):
        self.per_minute = per_minute
        self._window = -1
        self._used = 0
        self.suppressed = 0

    def admit(self, now: float) -> bool:
        window = int(now // 60)
        if window != self._window:
            self._window, self._used = window, 0
        if self._used >= self.per_minute:
            self.suppressed += 1
            return False
        self._used += 1
        return True

    def take_suppressed(self) -> int:
        """The failures not recorded since the last call (and reset the count)."""
        n, self.suppressed = self.suppressed, 0
        return n
