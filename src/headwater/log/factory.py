"""The one place that picks an event log backend: :func:`open_log` by URL scheme.

Adding a backend is one line in :data:`BACKENDS` (the scale-out issue adds
``"kafka": "headwater.log.kafka:KafkaLog"``): the class implements
:class:`~headwater.log.base.EventLog` and its ``from_url``; its module is imported only when
a URL names it, so a backend's client library is needed only where it is used.
"""

from __future__ import annotations

import importlib
import urllib.parse

from headwater.errors import InvalidInputError
from headwater.log.base import EventLog

# URL scheme -> "module:class" of the backend.
BACKENDS: dict[str, str] = {
    "sqlite": "headwater.log.sqlite:SqliteLog",
}


def open_log(url: str, **options) -> EventLog:
    """The event log at ``url`` (setting ``log.url``; default ``home.settings.log_url``,
    ``sqlite:///<home>/log/log.db``).

    ``options`` override the URL's query parameters. Every backend takes ``retention_ms``
    (setting ``log.retention_ms``; see :mod:`headwater.log.base`: the process that commits
    consumer offsets passes it); the others are the backend's own (sqlite:
    ``background_checkpoint_s``, for the writing process).

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
    return backend.from_url(url, **options)
