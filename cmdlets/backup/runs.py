"""Running a backup job: one restore point, under the job's run lock, on the right extent."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cmdlets.backup import jobs
from cmdlets.backup.chain import BackupMetadata, RestorePointInfo, backup_folder, read_metadata
from cmdlets.backup.inventory import Extent, Inventory, Job, Repository, is_share_path
from cmdlets.host.errors import BcsError, BusyError, InvalidOperationError, NotFoundError

if TYPE_CHECKING:
    from cmdlets.host.context import Context

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
            )
        except BcsError:
            jobs.record_run(ctx.state, job, ctx.now(), "Failed")
            raise
        jobs.record_run(ctx.state, job, ctx.now(), "Success")
        return read_metadata(backup_dir), point
    finally:
        run_lock.release()
