"""Cmdlets of the noun BackupJob."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Annotated, Any

from cmdlets.backup import jobs
from cmdlets.host.context import Context
from cmdlets.host.errors import InvalidOperationError, NotFoundError
from cmdlets.host.registry import Param, cmdlet

JOB = "BackupCopy.BackupJob"
NAMES = Param(
    position=0,
    by_value={JOB: "Name", "BackupCopy.Backup": "Job", "String": ""},
    by_property=True,
    aliases=("JobName", "Job"),
    help="Job names (comma-separated, or piped job objects).",
    completes="job",
)
MANDATORY_NAMES = dataclasses.replace(NAMES, mandatory=True)


def _selected(ctx: Context, names: list[str] | None) -> Iterator[Any]:
    inventory = ctx.inventory
    if not names:
        yield from inventory.jobs
        return
    for name in names:
        if any(c in name for c in "*?["):
            import fnmatch

            matched = [j for j in inventory.jobs if fnmatch.fnmatch(j.name.lower(), name.lower())]
            yield from matched
            continue
        try:
            yield jobs.find_job(inventory, name)
        except NotFoundError as exc:
            ctx.write_error(exc)


@cmdlet("Get-BackupJob", output_type=JOB)
def get_backup_job(
    ctx: Context,
    name: Annotated[list[str] | None, NAMES] = None,
) -> Iterator[dict[str, Any]]:
    """Get the backup jobs of the inventory, with their state.

    Enabled comes from the state directory once a command has changed it, else from the
    inventory. HeldBy lists the copy sessions that hold the job disabled. Names may use
    wildcards (* ? [...]).

    Examples:
      Get-BackupJob
      Get-BackupJob -Name 'Daily SQL'
      Get-BackupJob -Name Daily* | Disable-BackupJob
    """
    for job in _selected(ctx, name):
        yield jobs.job_object(job, jobs.read_state(ctx.state, job))


@cmdlet("Disable-BackupJob", output_type=JOB, changes_state=True)
def disable_backup_job(
    ctx: Context,
    name: Annotated[list[str] | None, MANDATORY_NAMES] = None,
    pass_thru: Annotated[bool, Param(help="Write the job object after the change.")] = False,
) -> Iterator[dict[str, Any]]:
    """Disable backup jobs so that they write no restore point.

    Examples:
      Disable-BackupJob -Name 'Daily SQL'
      Get-BackupJob | Disable-BackupJob -PassThru
    """
    yield from _set(ctx, name or [], False, pass_thru, force=False)


@cmdlet("Enable-BackupJob", output_type=JOB, changes_state=True)
def enable_backup_job(
    ctx: Context,
    name: Annotated[list[str] | None, MANDATORY_NAMES] = None,
    force: Annotated[
        bool, Param(help="Enable even a job held disabled by an unfinalized copy session.")
    ] = False,
    pass_thru: Annotated[bool, Param(help="Write the job object after the change.")] = False,
) -> Iterator[dict[str, Any]]:
    """Enable backup jobs.

    A job held disabled by a copy session that is not finalized is refused (exit 1, naming
    the session) unless -Force is given.

    Examples:
      Enable-BackupJob -Name 'Daily SQL'
      Get-BackupJob | Where-Object Enabled -eq false | Enable-BackupJob -PassThru
    """
    yield from _set(ctx, name or [], True, pass_thru, force=force)


def _set(
    ctx: Context, names: list[str], enabled: bool, pass_thru: bool, *, force: bool
) -> Iterator[dict[str, Any]]:
    verb = "Enable" if enabled else "Disable"
    for job in _selected(ctx, names):
        if not ctx.should_process(job.name, f"{verb} backup job"):
            continue
        try:
            current = jobs.set_enabled(ctx.state, job, enabled, ctx.now(), force=force)
        except InvalidOperationError as exc:
            ctx.write_error(exc)
            continue
        ctx.verbose(f"backup job '{job.name}' {'enabled' if enabled else 'disabled'}")
        if pass_thru:
            yield jobs.job_object(job, current)


def restore_point_object(backup_id: str, name: str, point: Any) -> dict[str, Any]:
    from cmdlets.backup.chain import format_time

    return {
        "TypeName": "BackupCopy.RestorePoint",
        "BackupId": backup_id,
        "Name": name,
        "Index": point.index,
        "File": point.file,
        "Kind": point.kind,
        "Time": format_time(point.time),
        "Size": point.size,
        "Sha256": point.sha256,
    }


@cmdlet("Start-BackupJob", output_type="BackupCopy.RestorePoint", changes_state=True)
def start_backup_job(
    ctx: Context,
    name: Annotated[list[str] | None, MANDATORY_NAMES] = None,
    full: Annotated[
        bool, Param(help="Write a full restore point even if the chain has one.")
    ] = False,
) -> Iterator[dict[str, Any]]:
    """Run backup jobs: write the next restore point of each job's chain.

    The first point of a chain is a full (.vbk), later ones are increments (.vib) holding what
    changed, unless -Full is given. A disabled job is refused (a copy session may hold it
    disabled while its chain is copied). The same job cannot run twice at once: the second run
    fails with exit status 3. On a scale-out repository the chain lives on one extent: the
    first point goes to the extent with the most free space that is not in maintenance, later
    points follow the chain.

    Examples:
      Start-BackupJob -Name 'Daily SQL'
      Start-BackupJob -Name 'Daily SQL' -Full
      Get-BackupJob | Where-Object Enabled -eq true | Start-BackupJob
    """
    from cmdlets.backup.runs import run_job

    for job in _selected(ctx, name or []):
        if not ctx.should_process(job.name, "Start backup job"):
            continue
        try:
            meta, point = run_job(ctx, job, full=full)
        except (NotFoundError, InvalidOperationError) as exc:
            ctx.write_error(exc)
            continue
        ctx.verbose(f"backup job '{job.name}' wrote {point.file}")
        yield restore_point_object(meta.backup_id, job.name, point)
