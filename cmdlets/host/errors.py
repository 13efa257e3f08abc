"""User-facing errors: one hierarchy, each class with its error id, category and exit code.

Only :func:`cmdlets.host.runner.run` turns these into stderr lines and exit statuses.
"""

from __future__ import annotations

import enum
from typing import Any


class ExitStatus(enum.IntEnum):
    SUCCESS = 0
    FAILED = 1
    USAGE = 2
    BUSY = 3
    INTERRUPTED = 130


class BcsError(Exception):
    """Base of every error a user may see. ``str(error)`` is the one-line message."""

    exit_status: ExitStatus = ExitStatus.FAILED
    category: str = "NotSpecified"
    error_id: str = "OperationFailed"

    def __init__(self, message: str, *, target: Any = None, error_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.target = target
        if error_id is not None:
            self.error_id = error_id


class UsageError(BcsError):
    """Bad parameters: unknown, ambiguous, missing or of the wrong type."""

    exit_status = ExitStatus.USAGE
    category = "InvalidArgument"
    error_id = "ParameterBindingFailed"


class InvalidInputError(BcsError):
    """Input that cannot be used: a malformed pipeline line, an object that binds to nothing."""

    exit_status = ExitStatus.USAGE
    category = "InvalidData"
    error_id = "InvalidPipelineInput"


class InventoryError(BcsError):
    """The inventory file is missing, unreadable or invalid; ``problems`` lists every finding."""

    exit_status = ExitStatus.USAGE
    category = "InvalidData"
    error_id = "InvalidInventory"

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class NotFoundError(BcsError):
    category = "ObjectNotFound"
    error_id = "ObjectNotFound"


class InvalidOperationError(BcsError):
    """The request is understood but not allowed in the current state."""

    category = "InvalidOperation"
    error_id = "InvalidOperation"


class BusyError(BcsError):
    """A lock could not be taken in time, or another process works on the object."""

    exit_status = ExitStatus.BUSY
    category = "ResourceBusy"
    error_id = "ResourceBusy"


class Interrupted(BcsError):
    exit_status = ExitStatus.INTERRUPTED
    category = "OperationStopped"
    error_id = "Interrupted"
