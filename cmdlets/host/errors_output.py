"""The one place where errors become stderr lines (plain, or JSON with BCS_ERROR_FORMAT=json)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from cmdlets.host.errors import BcsError

if TYPE_CHECKING:
    from cmdlets.host.context import Environment


def error_record(cmdlet: str, error: BcsError) -> dict[str, object]:
    target = error.target
    if target is not None and not isinstance(target, (str, int, float, bool, dict, list)):
        target = str(target)
    return {
        "TypeName": "BackupCopy.ErrorRecord",
        "Cmdlet": cmdlet,
        "ErrorId": error.error_id,
        "Category": error.category,
        "TargetObject": target,
        "Message": error.message,
        "ExitCode": int(error.exit_status),
    }


def write_error(env: Environment, cmdlet: str, error: BcsError) -> None:
    if env.environ.get("BCS_ERROR_FORMAT", "").lower() == "json":
        line = json.dumps(error_record(cmdlet, error), ensure_ascii=False, default=str)
    else:
        # One line per error: a message with newlines (several inventory problems) is indented.
        line = f"{cmdlet}: " + error.message.replace("\n", "\n    ")
    try:
        env.stderr.write(line + "\n")
        env.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
