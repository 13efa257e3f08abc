"""Copy session records: state, per-backup and per-file progress, the session log, liveness.

A session is the record ``sessions/<id>.json`` in the state directory. While a process works
on a session it holds the flock ``locks/session-work/<id>.lock``; the kernel drops it when the
process dies, so any command can tell a session whose worker was killed (its record still says
Working) from one that is being worked on, without trusting process ids.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from cmdlets.host.errors import BusyError, InvalidOperationError, NotFoundError
from cmdlets.store import StateDir
from cmdlets.store.records import Lock, LockTimeout

KIND = "sessions"
WORK = "session-work"
ACTIVE = ("Starting", "Working", "Stopping")
STATES = ("Starting", "Working", "Stopping", "Stopped", "ActionRequired")
RESULTS = ("None", "Success", "Warning", "Failed")

Record = dict[str, Any]


def new_id() -> str:
    import uuid  # with the platform module it pulls in, a few ms of every cmdlet's start-up

    return str(uuid.uuid4())


def read(state: StateDir, session_id: str) -> Record | None:
    return state.read(KIND, session_id)


def update(state: StateDir, session_id: str, change: Callable[[Record], None]) -> Record:
    """Change a session record in place under its lock."""

    def apply(record: Record | None) -> Record:
        if record is None:
            raise NotFoundError(f"copy session {session_id} has no record", target=session_id)
        change(record)
        return record

    result = state.update(KIND, session_id, apply)
    assert result is not None
    return result


def create(state: StateDir, record: Record) -> None:
    """Write a new session's record; the caller has claimed the session already."""
    with state.lock(KIND, record["Id"]):
        state.write(KIND, record["Id"], record)


def all_sessions(state: StateDir) -> list[Record]:
    return [record for _, record in state.records(KIND)]


def resolve_id(state: StateDir, spec: str) -> str:
    """A session id from a full id or a unique prefix of 4 characters or more."""
    text = spec.strip().lower()
    keys = state.keys(KIND)
    if text in keys:
        return text
    if len(text) < 4:
        raise InvalidOperationError(
            f"'{spec}' is too short to name a copy session: give 4 or more characters of its id",
            target=spec,
            error_id="SessionIdTooShort",
        )
    found = [k for k in keys if k.startswith(text)]
    if not found:
        raise NotFoundError(f"no copy session with id '{spec}'", target=spec)
    if len(found) > 1:
        raise InvalidOperationError(
            f"'{spec}' matches {len(found)} copy sessions: {', '.join(found)}",
            target=spec,
            error_id="AmbiguousSessionId",
        )
    return found[0]


# -- working on a session ---------------------------------------------------------------------


# How long taking a session waits for the lock: long enough to ride over another command's
# liveness check (worker_alive holds the lock for an instant), far too short to wait for a
# process that works on the session.
CLAIM_WAIT = 1.0


def work_lock(state: StateDir, session_id: str, timeout: float = 0) -> Lock:
    base = state.lock(WORK, session_id)
    return Lock(base.path, f"copy session {session_id}", base.holder, timeout=timeout)


def claim(state: StateDir, session_id: str) -> Lock:
    """Take the session for this process, or fail with exit status 3 naming who has it.

    A new session is claimed before its record is written (see create): no command ever sees
    a session in Starting whose lock is free, which would mean that its process died."""
    lock = work_lock(state, session_id, timeout=min(CLAIM_WAIT, state.timeout))
    try:
        return lock.acquire()
    except LockTimeout as exc:
        raise BusyError(
            f"copy session {session_id} is being worked on by {exc.holder}",
            target=session_id,
            error_id="SessionBusy",
        ) from None


def worker_alive(state: StateDir, session_id: str) -> bool:
    lock = work_lock(state, session_id)
    try:
        lock.acquire()
    except BusyError:
        return True
    lock.release()
    return False


def settle_if_orphaned(state: StateDir, record: Record, now: datetime) -> Record:
    """A session left active by a process that died is interrupted: ActionRequired, with the
    reason, keeping its holds until it is finalized."""
    if record.get("State") not in ACTIVE or worker_alive(state, record["Id"]):
        return record

    def change(current: Record) -> None:
        if current.get("State") not in ACTIVE:
            return
        pid = current.get("ProcessId")
        current["State"] = "ActionRequired"
        current["Reason"] = (
            f"interrupted: the process working on the session (pid {pid}) ended unexpectedly"
        )
        current["ProcessId"] = None
        for backup in current.get("Backups", []):
            if backup.get("Status") in ("Pending", "Copying"):
                backup["Status"] = "Failed"
                backup["Error"] = "interrupted before the copy finished"
        current["EndTime"] = None

    with contextlib.suppress(BusyError):
        # Someone else may be settling it right now: they will do the same.
        record = update(state, record["Id"], change)
        log(state, record["Id"], now, "Interrupted", record.get("Reason", ""))
    return record


# -- the session log --------------------------------------------------------------------------


def log_path(state: StateDir, session_id: str) -> str:
    return str(state.directory(KIND) / f"{session_id}.log")


def log(state: StateDir, session_id: str, now: datetime, event: str, message: str) -> None:
    """Append one event. One write of one line with O_APPEND: lines never interleave."""
    line = json.dumps(
        {"Time": now.isoformat(), "Event": event, "Message": message}, ensure_ascii=False
    )
    fd = os.open(log_path(state, session_id), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_log(state: StateDir, session_id: str) -> Iterator[dict[str, Any]]:
    try:
        with open(log_path(state, session_id), encoding="utf-8") as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):
                    yield json.loads(line)
    except FileNotFoundError:
        return


# -- what users see ---------------------------------------------------------------------------


def totals(record: Record) -> tuple[int, int]:
    total = sum(b.get("BytesTotal", 0) for b in record.get("Backups", []))
    copied = sum(b.get("BytesCopied", 0) for b in record.get("Backups", []))
    return total, copied


def session_object(record: Record) -> dict[str, Any]:
    total, copied = totals(record)
    return {
        "TypeName": "BackupCopy.CopySession",
        "Id": record["Id"],
        "State": record.get("State"),
        "Result": record.get("Result", "None"),
        "Reason": record.get("Reason"),
        "Target": record.get("Target"),
        "Backups": [
            {
                "BackupId": b.get("BackupId"),
                "Name": b.get("Name"),
                "Status": b.get("Status"),
                "Error": b.get("Error"),
                "BytesTotal": b.get("BytesTotal", 0),
                "BytesCopied": b.get("BytesCopied", 0),
                "CopyId": b.get("CopyId"),
            }
            for b in record.get("Backups", [])
        ],
        "BytesTotal": total,
        "BytesCopied": copied,
        "Progress": round(100.0 * copied / total, 1) if total else 100.0,
        "ProcessId": record.get("ProcessId"),
        "CreationTime": record.get("CreationTime"),
        "EndTime": record.get("EndTime"),
        "Actions": record.get("Actions", []),
    }
