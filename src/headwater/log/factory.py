"""The one place that picks an event log backend: :func:`open_log` by URL scheme.

Adding a backend is one line in :data:`BACKENDS`: the class implements
:class:`~headwater.log.base.EventLog` and its ``from_url``; its module is imported only when
a URL names it, so a backend's client library is needed only where it is used.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Callable

from headwater.errors import InvalidInputError
from headwater.log.base import EventLog

# URL scheme -> "module:class" of the backend.
BACKENDS: dict[str, str] = {
    "sqlite": "headwater.log.sqlite:SqliteLog",
    "kafka": "headwater.log.kafka:KafkaLog",
}

# URL scheme -> the options a process that appends continuously (the collector) opens the log
# with, from its appender name (under the options it passes itself): sqlite checkpoints its WAL
# on a background thread, not inside appends; kafka takes the name as its transactional.id, so
# that a restarted appender fences and aborts the transaction its killed predecessor left open
# (KIP-98) instead of holding back read_committed readers until the broker times it out.
APPENDER_OPTIONS: dict[str, Callable[[str], dict[str, object]]] = {
    "sqlite": lambda name: {"background_checkpoint_s": 1.0},
    "kafka": lambda name: {"transactional_id": f"headwater-{name}"},
}


def open_log(url: str, *, appender: str | None = None, **options) -> EventLog:
    """The event log at ``url`` (setting ``log.url``; default ``home.settings.log_url``,
    ``sqlite:///<home>/log/log.db``).

    ``options`` override the URL's query parameters. Every backend takes ``retention_ms``
    (setting ``log.retention_ms``; see :mod:`headwater.log.base`: the process that commits
    consumer offsets passes it); the others are the backend's own (sqlite:
    ``background_checkpoint_s``, for the writing process; kafka: see :mod:`headwater.log.kafka`).
    ``appender``: this process appends continuously (the collector), under this name — stable
    across its restarts, unique among the processes appending at once: :data:`APPENDER_OPTIONS`
    of the scheme apply under ``options``.

    Raises :class:`InvalidInputError` (field ``log.url``) for an unknown scheme, a malformed
    URL or an unknown option, :class:`TransientError` when the log cannot be opened."""
    scheme = urllib.parse.urlsplit(url).scheme
    target = BACKENDS.get(scheme)
    if target is None:
        # Only the scheme is echoed: a URL may carry credentials.
        raise InvalidInputError(
            f"log.url: unknown event log scheme {scheme + ':' if scheme else '(none)'}; known: "
            + ", ".join(f"{s}://" for s in BACKENDS),
            field="log.url",
        )
    module, _, name = target.partition(":")
    backend: type[EventLog] = getattr(importlib.import_module(module), name)
    if appender is not None and scheme in APPENDER_OPTIONS:
        options = {**APPENDER_OPTIONS[scheme](appender), **options}
    return backend.from_url(url, **options)
