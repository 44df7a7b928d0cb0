"""Errors that are the user's to fix (bad data, flags, checkpoints, a locked run directory): the scripts report
them in one line, without a traceback, and exit with status 2 (:data:`USER_ERRORS`)."""
from __future__ import annotations

__all__ = ["UserError", "RunSetupError", "USER_ERRORS"]


class UserError(Exception):
    """Base of every error caused by the user's input; its message names the file or flag and what was expected."""


class RunSetupError(UserError, ValueError):
    """Settings that cannot run on this data (for example a batch larger than a process's data shard)."""


USER_ERRORS = (UserError, FileNotFoundError)
