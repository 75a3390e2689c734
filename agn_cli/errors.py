"""User-facing errors: one line, exit code 2, no traceback (unless --debug)."""

from __future__ import annotations


class AgnError(Exception):
    """An error caused by the user's input or environment; the message says what to do."""

    exit_code = 2

