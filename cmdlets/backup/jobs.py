"""Backup job state: enabled or not, and which copy sessions hold the job disabled.

The inventory says whether a job is enabled; once a command changes that, the job's record in
the state directory (``jobs/<name>.json``) says it instead. Copy sessions place *holds*: while
any session holds a job, the job stays disabled and cannot be enabled without ``-Force``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from typing import Any

from cmdlets.backup.inventory import Inventory, Job
from cmdlets.host.errors import InvalidOperationError, NotFoundError
from cmdlets.store import StateDir

KIND = "jobs"


@dataclasses.dataclass(frozen=True)
class JobState:
    enabled: bool
    held_by: tuple[str, ...] = ()
    last_run: str | None = None
    last_result: str | None = None
    revision: int = 0


def _never(session_id: str) -> bool:
    return False


def finished_sessions(state: StateDir) -> Callable[[str], bool]:
    """Whether a session is finalized: a process that died between finishing a session and
    releasing its holds leaves holds that no longer hold anything."""
    from cmdlets.backup.sessions import KIND as SESSIONS

    def finished(session_id: str) -> bool:
        return bool((state.read(SESSIONS, session_id) or {}).get("State", "Stopped") == "Stopped")

    return finished


def state_of(
    job: Job, record: dict[str, Any] | None, finished: Callable[[str], bool] = _never
) -> JobState:
    if record is None:
        return JobState(enabled=job.enabled)
    recorded = tuple(record.get("HeldBy") or ())
    held_by = tuple(s for s in recorded if not finished(s))
    enabled = bool(record.get("Enabled", job.enabled))
    if recorded and not held_by:
        enabled = bool(record.get("EnabledBeforeHold", enabled))
    return JobState(
        enabled=enabled,
        held_by=held_by,
        last_run=record.get("LastRun"),
        last_result=record.get("LastResult"),
        revision=int(record.get("Revision", 0)),
    )


def read_state(state: StateDir, job: Job) -> JobState:
    return state_of(job, state.read(KIND, job.name), finished_sessions(state))


def find_job(inventory: Inventory, name: str) -> Job:
    job = inventory.job(name)
    if job is None:
        known = ", ".join(j.name for j in inventory.jobs) or "none"
        raise NotFoundError(
            f"no backup job named '{name}' in {inventory.path.name} (jobs: {known})", target=name
        )
    return job


def _base(
    job: Job, record: dict[str, Any] | None, finished: Callable[[str], bool]
) -> dict[str, Any]:
    current = state_of(job, record, finished)
    base = dict(record or {})
    base.update(Name=job.name, Enabled=current.enabled, HeldBy=list(current.held_by))
    base["Revision"] = current.revision + 1
    return base


def set_enabled(
    state: StateDir, job: Job, enabled: bool, now: datetime, *, force: bool = False
) -> JobState:
    """Enable or disable ``job``. Enabling a job held by copy sessions needs ``force``."""

    finished = finished_sessions(state)

    def change(record: dict[str, Any] | None) -> dict[str, Any]:
        current = state_of(job, record, finished)
        if enabled and current.held_by and not force:
            sessions = ", ".join(current.held_by)
            raise InvalidOperationError(
                f"backup job '{job.name}' is held disabled by copy session {sessions}; finalize "
                "the session (Resume-CopySession) or use -Force",
                target=job.name,
                error_id="JobHeldByCopySession",
            )
        new = _base(job, record, finished)
        new["Enabled"] = enabled
        if current.held_by:
            # The administrator decided while copies hold the job: that is the state the job
            # returns to when the last hold is released.
            new["EnabledBeforeHold"] = enabled
        new["ChangeTime"] = now.isoformat()
        return new

    return state_of(job, state.update(KIND, job.name, change), finished)


def add_hold(state: StateDir, job: Job, session_id: str, now: datetime) -> JobState:
    """Disable ``job`` on behalf of a copy session. The first hold remembers whether the job
    was enabled, so that the last release can put it back as it was."""

    finished = finished_sessions(state)

    def change(record: dict[str, Any] | None) -> dict[str, Any]:
        current = state_of(job, record, finished)
        new = _base(job, record, finished)
        if not current.held_by:
            new["EnabledBeforeHold"] = current.enabled
        new["HeldBy"] = (
            [*current.held_by, session_id]
            if session_id not in current.held_by
            else list(current.held_by)
        )
        new["Enabled"] = False
        new["ChangeTime"] = now.isoformat()
        return new

    return state_of(job, state.update(KIND, job.name, change), finished)


def release_hold(state: StateDir, job: Job, session_id: str, now: datetime) -> JobState:
    """Drop a session's hold. The job is enabled again only when no session holds it any more
    and it was enabled before the first hold (and nobody enabled it by force meanwhile)."""

    finished = finished_sessions(state)

    def change(record: dict[str, Any] | None) -> dict[str, Any]:
        current = state_of(job, record, finished)
        new = _base(job, record, finished)
        remaining = [s for s in current.held_by if s != session_id]
        new["HeldBy"] = remaining
        if not remaining and (record or {}).get("HeldBy"):
            new["Enabled"] = bool((record or {}).get("EnabledBeforeHold", current.enabled))
            new.pop("EnabledBeforeHold", None)
        new["ChangeTime"] = now.isoformat()
        return new

    return state_of(job, state.update(KIND, job.name, change), finished)


def record_run(state: StateDir, job: Job, now: datetime, result: str) -> JobState:
    finished = finished_sessions(state)

    def change(record: dict[str, Any] | None) -> dict[str, Any]:
        new = _base(job, record, finished)
        new.update(LastRun=now.isoformat(), LastResult=result)
        return new

    return state_of(job, state.update(KIND, job.name, change), finished)


def job_object(job: Job, current: JobState) -> dict[str, Any]:
    return {
        "TypeName": "BackupCopy.BackupJob",
        "Name": job.name,
        "Type": "AgentPolicy" if job.type == "agent-policy" else "BackupJob",
        "Repository": job.repository,
        "Source": job.source,
        "Enabled": current.enabled,
        "HeldBy": list(current.held_by),
        "LastRun": current.last_run,
        "LastResult": current.last_result,
        "Revision": current.revision,
    }
