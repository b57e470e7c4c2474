"""The one exception type for mistakes a user can make and fix."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user caused and can fix: shown as one line, exit code 2, no traceback.

    The message names the thing that is wrong and, where it helps, the fix.
    """

    exit_code = 2
