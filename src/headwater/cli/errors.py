"""The one place where errors become exit codes and messages (:class:`HeadwaterGroup`).

A :class:`headwater.errors.HeadwaterError` raised by any command ends the process with the
class's ``exit_code`` (invalid input 2, not found 3, conflict 4, transient 75) and its
message on stderr as ``Error: <message>`` — the form click uses for its own usage errors
(exit 2) — without a traceback. ``headwater --debug COMMAND`` lets the error through with
its traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import click

from headwater.errors import HeadwaterError

DEBUG = "headwater.debug"  # ctx.meta key: --debug was given


class CommandError(click.ClickException):
    """A :class:`HeadwaterError` as click shows it: one message, the class's exit code."""

    def __init__(self, error: HeadwaterError):
        super().__init__(error.message)
        self.exit_code = error.exit_code


class HeadwaterGroup(click.Group):
    """The root command group: runs a subcommand and maps :class:`HeadwaterError` (see the
    module docstring). Subgroups are plain ``click.Group``: their commands run inside this
    ``invoke``."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HeadwaterError as e:
            if ctx.meta.get(DEBUG):
                raise
            raise CommandError(e) from None
