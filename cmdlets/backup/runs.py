"""Running a backup job: one restore point, under the job's run lock, on the right extent.

A job writes only into its own folder. The folder ``<repository>/<job name>/`` can hold
something else when the inventory changed or a copy was placed there: a registered copy, a copy
a session is still writing, another job's backup. Appending restore points to any of them
would damage it, so the run is refused, naming what is there.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cmdlets.backup import jobs
from cmdlets.backup.chain import (
    METADATA_SUFFIX,
    BackupMetadata,
    RestorePointInfo,
    backup_folder,
    read_metadata,
    read_metadata_file,
)
from cmdlets.backup.inventory import Extent, Inventory, Job, Repository, is_share_path
from cmdlets.host.errors import BcsError, BusyError, InvalidOperationError, NotFoundError

if TYPE_CHECKING:
    from cmdlets.host.context import Context
    from cmdlets.store import StateDir

RUNS = "jobrun"  # lock kind: held while a job writes a restore point or a copy places a hold


def chain_home(inventory: Inventory, repo: Repository, job_name: str) -> tuple[str | None, Path]:
    """(extent, repository folder) where the job's chain lives or will live."""
    if not repo.extents:
        if repo.path is None or is_share_path(repo.path):
            raise InvalidOperationError(
                f"repository '{repo.name}' is a shared folder; backup jobs write to local "
                "repositories and scale-out extents",
                target=repo.name,
            )
        return None, Path(repo.path)
    for extent in repo.extents:
        if (backup_folder(Path(extent.path), job_name)).is_dir():
            if extent.maintenance:
                raise InvalidOperationError(
                    f"the chain of '{job_name}' is on extent '{extent.name}' of '{repo.name}', "
                    "which is in maintenance",
                    target=extent.name,
                )
            return extent.name, Path(extent.path)
    best = roomiest_extent(repo)
    return best.name, Path(best.path)


def roomiest_extent(repo: Repository) -> Extent:
    """Where a new chain goes on a scale-out repository: the extent with the most free space
    that is not in maintenance (for backup jobs and copies alike)."""
    from cmdlets.repository import free_bytes

    usable = [e for e in repo.extents if not e.maintenance]
    if not usable:
        raise InvalidOperationError(
            f"every extent of scale-out repository '{repo.name}' is in maintenance",
            target=repo.name,
        )
    return max(usable, key=lambda e: free_bytes(e.path) or 0)


def run_job(ctx: Context, job: Job, *, full: bool) -> tuple[BackupMetadata, RestorePointInfo]:
    from cmdlets.backup.restorepoint import write_restore_point
    from cmdlets.store.records import Lock, LockTimeout

    repo = ctx.inventory.repository(job.repository)
    if repo is None:  # the inventory loader checks references; this guards a stale cache
        raise NotFoundError(f"repository '{job.repository}' of job '{job.name}' is not defined")
    base = ctx.state.lock(RUNS, job.name)
    run_lock = Lock(base.path, base.what, base.holder, timeout=0)
    try:
        run_lock.acquire()
    except LockTimeout as exc:
        raise BusyError(
            f"backup job '{job.name}' is already running: {exc.holder}",
            target=job.name,
            error_id="JobAlreadyRunning",
        ) from None
    try:
        current = jobs.read_state(ctx.state, job)
        if not current.enabled:
            why = (
                f"held disabled by copy session {', '.join(current.held_by)} until that session "
                "is finalized (Resume-CopySession)"
                if current.held_by
                else "enable it with Enable-BackupJob"
            )
            raise InvalidOperationError(
                f"backup job '{job.name}' is disabled; {why}",
                target=job.name,
                error_id="JobDisabled",
            )
        _, folder = chain_home(ctx.inventory, repo, job.name)
        backup_dir = backup_folder(folder, job.name)
        try:
            point = write_restore_point(
                backup_dir,
                job.name,
                job.type,
                Path(job.source),
                full=full,
                now=ctx.now,
                on_warning=ctx.warn,
                check_folder=lambda folder: check_own_folder(ctx.state, job, folder),
            )
        except BcsError:
            jobs.record_run(ctx.state, job, ctx.now(), "Failed")
            raise
        jobs.record_run(ctx.state, job, ctx.now(), "Success")
        return read_metadata(backup_dir), point
    finally:
        run_lock.release()


def check_own_folder(state: StateDir, job: Job, backup_dir: Path) -> None:
    """Refuse (InvalidOperationError) a backup folder that is not ``job``'s to write: it is a
    registered copy, a copy session that is not finalized copies into it, or it holds another
    job's ``.vbm``. Called once the folder exists: a session that claims the folder after this
    check finds it already there and refuses it."""
    from cmdlets.backup import sessions
    from cmdlets.backup.catalog import COPIES

    def refuse(what: str, error_id: str) -> InvalidOperationError:
        return InvalidOperationError(
            f"backup job '{job.name}' cannot write into {backup_dir}: {what}; a job never writes "
            "into a copy or another job's backup (move it away, or give the job another "
            "repository)",
            target=str(backup_dir),
            error_id=error_id,
        )

    own = backup_dir / (job.name + METADATA_SUFFIX)
    own_id = None
    if os.path.lexists(own):
        with contextlib.suppress(BcsError):  # the run itself reports a damaged .vbm
            own_id = read_metadata_file(own).backup_id
    for key, record in state.records(COPIES):
        if key == own_id or (
            record.get("Location", "Folder") == "Folder"
            and _same_folder(str(record.get("Path") or ""), backup_dir)
        ):
            raise refuse(
                f"it holds copy {key} of backup {record.get('SourceBackupId')}, made by copy "
                f"session {record.get('CopySessionId')}",
                "FolderHoldsCopy",
            )
    for session in sessions.all_sessions(state):
        if session.get("State") == "Stopped":
            continue
        root = str((session.get("Target") or {}).get("Path") or "")
        for copied in session.get("Backups", []):
            if root and _same_folder(os.path.join(root, str(copied.get("Folder"))), backup_dir):
                raise refuse(
                    f"copy session {session.get('Id')} ({session.get('State')}) copies backup "
                    f"'{copied.get('Name')}' into it",
                    "FolderInUseByCopy",
                )
    try:
        names = os.listdir(backup_dir)
    except OSError:
        names = []
    others = sorted(
        n for n in names if n.endswith(METADATA_SUFFIX) and not n.startswith(".") and n != own.name
    )
    if others:
        raise refuse(
            f"it holds the metadata of another backup ({', '.join(others)})", "FolderHoldsBackup"
        )


def _same_folder(path: str, folder: Path) -> bool:
    if not path:
        return False
    if os.path.normpath(path) == os.path.normpath(folder):
        return True
    try:
        return os.path.samefile(path, folder)
    except OSError:
        return False
