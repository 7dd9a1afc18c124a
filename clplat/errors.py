"""User-facing errors: anything a user can cause ends with one clear line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, corrupt data, diverged loss).

    The CLI prints ``error: <message>`` on one line and exits with code 2; no traceback.
    """

    exit_code = 2
