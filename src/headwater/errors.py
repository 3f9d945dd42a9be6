"""One error hierarchy for every layer, rooted in :class:`HeadwaterError`.

Each class says what the *caller* can do about the error, not where it happened (the
same split as dlt's ``TerminalException`` / ``TransientException``):

==========================  ==================================================  =========
class                       meaning                                             CLI exit
==========================  ==================================================  =========
:class:`InvalidInputError`  the request, a setting or the data breaks a rule;   2
                            fix the input (the message names field and rule)
:class:`NotFoundError`      a named thing (table, source, subject, run) is      3
                            absent
:class:`ConflictError`      the request contradicts the current state (a key    4
                            in use, an incompatible schema, a concurrent write)
:class:`UnauthorizedError`  no valid credential: a read token unknown or        5
                            revoked (HTTP 401)
:class:`ForbiddenError`     the credential is valid but its role does not       6
                            allow the request (HTTP 403)
:class:`TransientError`     an outside resource failed (disk, lock, network,    75
                            broker); the same call may succeed later
==========================  ==================================================  =========

Library errors (``deltalake``, ``duckdb``, ``sqlite3``, ``psycopg``, ``msgspec``…) are
wrapped where the lake, log, registry and models meet their callers, with the original
kept as ``__cause__``. The CLI maps these classes to exit codes and one-line messages in one
place (:mod:`headwater.cli.errors`); Dagster's retry policy retries only
:class:`TransientError`. The first two also derive from the built-in class callers
already expect (``ValueError``, ``LookupError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class HeadwaterError(Exception):
    """Root of every error headwater raises on purpose.

    ``field``: the input, setting or parameter at fault (e.g. ``"log.url"``, ``"--start"``,
    ``"properties.email"``), ``None`` if none applies. ``exit_code``: the CLI's exit status."""

    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class InvalidInputError(HeadwaterError, ValueError):
    """The input breaks a rule: a bad argument, setting, file or value. Not worth retrying
    unchanged. The message names the field and the rule."""

    exit_code = 2


class NotFoundError(HeadwaterError, LookupError):
    """A named table, source, subject, topic or run does not exist."""

    exit_code = 3


class ConflictError(HeadwaterError):
    """The request contradicts the stored state: a write key already in use, an
    incompatible schema change, a concurrent commit that won."""

    exit_code = 4


class UnauthorizedError(HeadwaterError):
    """No valid credential was presented: a read token that is missing, unknown or revoked
    (HTTP 401). The message never contains the presented secret."""

    exit_code = 5


class ForbiddenError(HeadwaterError, PermissionError):
    """A valid credential whose role does not allow the request: a ``viewer`` sending SQL, an
    ``analyst`` naming a bronze table (HTTP 403). The message names the role and the rule."""

    exit_code = 6


class TransientError(HeadwaterError):
    """An outside resource failed (disk full, database locked, broker unreachable, a commit
    race); retrying the same call may succeed. ``retry_after_s``: a hint in seconds, or
    ``None``."""

    exit_code = 75  # EX_TEMPFAIL (sysexits.h)

    def __init__(self, message: str, *, field: str | None = None, retry_after_s: float | None = None):
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s
