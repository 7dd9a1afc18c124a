"""User-facing errors: anything a user can cause ends with one clear line and exit code 2.

Every command-line entry point (``clplat.run``, ``clplat.stream``, ``clplat.pretrain``,
``clplat.scenarios``) goes through :func:`main_guard`, so the format is written once.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl-C / SIGINT


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, corrupt data, diverged loss).

    The CLI prints ``error: <message>`` on one line and exits with code 2; no traceback.
    """

    exit_code = 2


def one_line(message: object) -> str:
    """The message with its line breaks folded into spaces (a user error is always one line)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def report_user_error(err: UserError) -> int:
    """Print ``error: <message>`` on one line to stderr; return the exit code (2)."""
    print(f"error: {one_line(err)}", file=sys.stderr)
    return err.exit_code


def main_guard(main: Callable[P, int]) -> Callable[P, int]:
    """Decorate a CLI ``main``: a :class:`UserError` becomes one ``error:`` line and exit code 2,
    Ctrl-C becomes ``error: interrupted`` and 130; anything else is a bug and keeps its traceback."""

    @functools.wraps(main)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            return report_user_error(err)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return INTERRUPTED

    return guarded
