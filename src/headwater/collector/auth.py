"""Who sent a request: write key → source, HTTP Basic auth, and the rate limits.

Auth is HTTP Basic (username = write key, password ignored), else the write key in the body;
the key's digest maps to a source via ``sources.json`` (:class:`WriteKeys`, re-read when it
changes; only digests are stored, :mod:`headwater.credentials`). Missing / unknown keys are
answered 401 and recorded as ``auth_failure`` bad rows, at most
:data:`AUTH_FAILURE_ROWS_PER_MINUTE` a minute (:class:`AuthFailureLimiter`).

Rate limits (:class:`RateLimits`, moving windows in memory, per collector worker process:
with ``collector.workers`` processes an installation admits up to that many times each
limit), each answered 429 with ``Retry-After``:

- per write key: setting ``collector.rate_limit_per_key`` requests/s on average, bursts of
  up to 2× that (the limit counts over a window of 2 s); 0 turns it off;
- per client IP, failed authentications: after ``collector.auth_failures_per_minute``
  401s in a minute every request of that address is refused until the oldest failure is a
  minute old — key guessing runs at that many guesses a minute, and the 401s stop coming.
  The address is the TCP peer (uvicorn applies ``X-Forwarded-For`` only from the
  trusted proxy 127.0.0.1), so clients behind one NAT share the budget.
"""

from __future__ import annotations

import base64
import binascii
import collections
import math
import os
import time

from headwater import credentials
from headwater.config import Home, Source
from headwater.errors import TransientError

AUTH_FAILURE_ROWS_PER_MINUTE = 60


class WriteKeys:
    """Write key → source name, from ``home.sources()``, reloaded when ``sources.json``
    changes (mtime/size/inode). A presented key is hashed (:func:`headwater.credentials.digest`,
    about 1 µs) and its digest looked up in a dict. That lookup is not constant-time, but
    what timing could reveal is how much of a *digest* matched, and SHA-256's preimage
    resistance makes that worthless for building a key; so no per-source
    ``compare_digest`` loop is needed. Known keys cost that: the file is stat-ed at most
    every ``interval`` seconds. An unknown key re-stats it at once (one ``stat``, the file
    is re-read only if it changed), so a source added by ``headwater up`` works on its
    first request; a revoked key stops working within ``interval``."""

    def __init__(self, home: Home, interval: float = 1.0):
        self._home = home
        self._interval = interval
        self._stamp: tuple | None = None
        self._keys: dict[str, str] = {}  # key digest -> source name
        self._configs: dict[str, Source] = {}
        self._checked = float("-inf")
        self._refresh(time.monotonic())

    def source(self, write_key: str) -> str | None:
        """The source name of ``write_key``, or None if unknown."""
        now = time.monotonic()
        if now - self._checked >= self._interval:
            self._refresh(now)
        digest = credentials.digest(write_key)
        name = self._keys.get(digest)
        if name is None and now != self._checked:  # a miss: re-stat now (a source may just have been added)
            self._refresh(now)
            name = self._keys.get(digest)
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
        self._keys = {s.key_digest: s.name for s in sources}
        self._configs = {s.name: s for s in sources}
        self._stamp = stamp


def basic_auth_user(header: str) -> str | None:
    """Username of an ``Authorization: Basic base64(user:password)`` header, else None."""
    scheme, _, cred = header.partition(" ")
    if scheme.lower() != "basic" or not cred:
        return None
    try:
        text = base64.b64decode(cred.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):  # ValueError: a non-ASCII header value
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


class RateLimited(TransientError):
    """Over a rate limit: answered 429; ``retry_after_s`` (whole seconds, ≥ 1) goes into
    ``Retry-After``, ``message`` names the limit."""


class MovingWindow:
    """At most ``amount`` hits per key in any ``window_s`` seconds: the times of each key's hits
    within the window (the moving-window strategy of the ``limits`` library). Hits older than the
    window are dropped when their key is next used, and keys without a hit in the last window
    every ``window_s``, so memory is bounded by the keys active in a window. Not thread-safe:
    the collector's event loop is its only user.

    Not the ``limits`` library itself: its in-memory storage starts a new ``threading.Timer``
    thread (a one-shot 10 ms expiry) on a hit whenever the previous one has run, so at a few
    hundred requests a second almost every request started a thread and waited for it to
    run: 0.1 ms in an idle process, up to the 5 ms GIL switch interval beside the log writer
    thread — 10 % of the event loop's time under load (cProfile of ``bench/collector.py``)."""

    def __init__(self, amount: int, window_s: float):
        self.amount, self.window_s = amount, window_s
        self._hits: dict[str, collections.deque[float]] = {}
        self._swept = time.monotonic()

    def test(self, key: str) -> bool:
        """Whether a hit of ``key`` would be admitted now (nothing is counted)."""
        hits = self._recent(key, time.monotonic())
        return hits is None or len(hits) < self.amount

    def hit(self, key: str) -> bool:
        """Count a hit of ``key`` if the window admits it; whether it did."""
        now = time.monotonic()
        if now - self._swept >= self.window_s:
            self._swept = now
            self._hits = {k: h for k, h in self._hits.items() if h and h[-1] > now - self.window_s}
        hits = self._recent(key, now)
        if hits is None:
            hits = self._hits[key] = collections.deque()
        if len(hits) >= self.amount:
            return False
        hits.append(now)
        return True

    def retry_after_s(self, key: str) -> int:
        """Whole seconds (at least 1) until the window admits a hit of ``key`` again."""
        now = time.monotonic()
        hits = self._recent(key, now)
        if not hits or len(hits) < self.amount:
            return 1
        return max(1, math.ceil(hits[-self.amount] + self.window_s - now))

    def _recent(self, key: str, now: float) -> collections.deque[float] | None:
        hits = self._hits.get(key)
        if hits is not None:
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
        return hits


def _per_second(rate: float) -> MovingWindow:
    """``rate`` requests/s with bursts of 2 × ``rate``: ``2·rate`` requests per 2 s (for a
    rate under 0.5/s: 1 request per ``1/rate`` s; the window is whole seconds)."""
    amount = max(1, round(2 * rate))
    return MovingWindow(amount, max(1, math.ceil(amount / rate)))


class RateLimits:
    """The collector's rate limits (see the module doc): ``per_key_per_s`` requests/s per
    source (0: off), ``auth_failures_per_minute`` failed authentications per client address
    (0: off). Checks cost about a microsecond (:class:`MovingWindow`)."""

    def __init__(self, per_key_per_s: float, auth_failures_per_minute: int):
        self._per_key = _per_second(per_key_per_s) if per_key_per_s > 0 else None
        self._failures = MovingWindow(auth_failures_per_minute, 60.0) if auth_failures_per_minute > 0 else None
        self._key_rule = f"{per_key_per_s:g} requests/s per write key (bursts up to {2 * per_key_per_s:g})"

    def admit_key(self, source: str) -> None:
        """Count one request of ``source``; :class:`RateLimited` if over its limit."""
        if self._per_key is not None and not self._per_key.hit(source):
            raise RateLimited(f"Rate limit exceeded: {self._key_rule}; retry later",
                              field="collector.rate_limit_per_key", retry_after_s=self._per_key.retry_after_s(source))

    def check_client(self, client: str | None) -> None:
        """:class:`RateLimited` if ``client`` already failed authentication too often."""
        if self._failures is not None and client is not None and not self._failures.test(client):
            raise RateLimited(f"Too many failed authentications from this address (limit {self._failures.amount} a minute); retry later",
                              field="collector.auth_failures_per_minute", retry_after_s=self._failures.retry_after_s(client))

    def auth_failed(self, client: str | None) -> None:
        """Count one failed authentication of ``client``."""
        if self._failures is not None and client is not None:
            self._failures.hit(client)
