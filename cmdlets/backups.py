"""Cmdlets of the nouns Backup and RestorePoint."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from cmdlets.backupjob import restore_point_object
from cmdlets.host.context import Context
from cmdlets.host.errors import BcsError, NotFoundError
from cmdlets.host.registry import Param, cmdlet

if TYPE_CHECKING:
    from cmdlets.backup.catalog import Backup

BACKUP = "BackupCopy.Backup"
BACKUP_SPEC = Param(
    position=0,
    by_value={BACKUP: "Id", "String": ""},
    by_property=True,
    aliases=("BackupId", "Id"),
    help="Backups by name, id or id prefix (comma-separated, or piped Backup objects).",
    completes="backup",
)
BACKUP_REQUIRED = dataclasses.replace(BACKUP_SPEC, mandatory=True)


def _backups(ctx: Context) -> list[Backup]:
    from cmdlets.backup.catalog import all_backups

    return all_backups(
        ctx.inventory, ctx.state, on_problem=ctx.write_error, locations=ctx.locations
    )


def _resolved(ctx: Context, specs: list[str]) -> Iterator[Backup]:
    """The backup each spec names; one that names none (or several) is an error record."""
    from cmdlets.backup.catalog import resolve

    backups = _backups(ctx)
    for spec in specs:
        try:
            yield resolve(backups, spec)
        except BcsError as exc:
            ctx.write_error(exc)


@cmdlet("Get-Backup", output_type=BACKUP)
def get_backup(
    ctx: Context,
    name: Annotated[
        list[str] | None,
        Param(position=0, help="Backup names (wildcards allowed).", completes="backup"),
    ] = None,
    id: Annotated[
        list[str] | None, Param(help="Backup ids or id prefixes (4+ characters).")
    ] = None,
    repository: Annotated[
        list[str] | None, Param(help="Only backups in these repositories.", completes="repository")
    ] = None,
    origin: Annotated[
        str | None, Param(values=("Job", "Copy"), help="Job: chains jobs write; Copy: copies.")
    ] = None,
    job: Annotated[
        list[str] | None,
        Param(
            by_value={"BackupCopy.BackupJob": "Name"},
            help="Only backups of these jobs.",
            completes="job",
        ),
    ] = None,
) -> Iterator[dict[str, Any]]:
    """Get the backups found in the repositories and extents, and the registered copies.

    A backup is a folder holding a chain of restore points and its .vbm metadata. Copies made by
    copy sessions have Origin Copy, with SourceBackupId and CopySessionId.

    Examples:
      Get-Backup
      Get-Backup -Name 'Daily SQL'
      Get-Backup -Origin Copy | Test-Backup
      Get-BackupJob -Name 'Daily SQL' | Get-Backup
    """
    from cmdlets.backup.catalog import backup_object, matches

    found = False
    for backup in _backups(ctx):
        if name and not any(fnmatch.fnmatch(backup.name.lower(), n.lower()) for n in name):
            continue
        if id and not any(matches(backup, i) and len(i) >= 4 for i in id):
            continue
        if repository and (backup.repository or "").lower() not in {r.lower() for r in repository}:
            continue
        if origin and backup.origin != origin:
            continue
        if job and backup.meta.job_name.lower() not in {j.lower() for j in job}:
            continue
        found = True
        yield backup_object(backup)
    wanted = [n for n in (name or []) + (id or []) if not any(c in n for c in "*?[")]
    if wanted and not found:
        ctx.write_error(NotFoundError(f"no backup matches {', '.join(wanted)}", target=wanted[0]))


@cmdlet("Test-Backup", output_type="BackupCopy.BackupTest")
def test_backup(
    ctx: Context,
    backup: Annotated[list[str] | None, BACKUP_REQUIRED] = None,
) -> Iterator[dict[str, Any]]:
    """Re-read every file of backups and check it against the metadata.

    Each restore point file must exist, have the recorded size and hash to the recorded
    SHA-256; the chain must start with a full. One BackupCopy.BackupTest per backup; the exit
    status is 1 if any file is missing, truncated or corrupt.

    Examples:
      Test-Backup -Backup 'Daily SQL'
      Get-Backup | Test-Backup
    """
    from cmdlets.backup.verify import verify_backup

    for target in _resolved(ctx, backup or []):
        ctx.verbose(f"testing {target.where}")
        problems = verify_backup(target.folder())
        if problems:
            ctx.status = max(ctx.status, 1)
        yield {
            "TypeName": "BackupCopy.BackupTest",
            "BackupId": target.id,
            "Name": target.name,
            "Path": target.where,
            "Result": "Failed" if problems else "Success",
            "Files": len(target.meta.restore_points),
            "Errors": problems,
        }


@cmdlet("Get-RestorePoint", output_type="BackupCopy.RestorePoint")
def get_restore_point(
    ctx: Context,
    backup: Annotated[list[str] | None, BACKUP_REQUIRED] = None,
) -> Iterator[dict[str, Any]]:
    """List the restore points of backups, oldest first.

    Examples:
      Get-RestorePoint -Backup 'Daily SQL'
      Get-Backup -Origin Copy | Get-RestorePoint
    """
    for target in _resolved(ctx, backup or []):
        for point in target.meta.restore_points:
            yield restore_point_object(target.id, target.name, point)


@cmdlet("Restore-Backup", output_type="BackupCopy.RestorePoint", changes_state=True)
def restore_backup(
    ctx: Context,
    backup: Annotated[str | None, BACKUP_REQUIRED] = None,
    destination: Annotated[
        str | None, Param(position=1, mandatory=True, help="Folder to restore into.")
    ] = None,
    restore_point: Annotated[
        str,
        Param(
            help="latest (default), an index (0 the oldest, -1 the newest), a file name or a "
            "time (the newest point at or before it)."
        ),
    ] = "latest",
    force: Annotated[
        bool, Param(help="Restore into a folder that is not empty (paths in the way are replaced).")
    ] = False,
) -> Iterator[dict[str, Any]]:
    """Restore the files of a restore point into a folder, as the source was at that time.

    The full the point builds on and the increments up to it are applied; files, folders,
    modes, times and symlinks come back. A destination that is not empty is refused unless
    -Force. Copies restore exactly like the chains they were copied from.

    Examples:
      Restore-Backup -Backup 'Daily SQL' -Destination /tmp/sql
      Restore-Backup 'Daily SQL' /tmp/sql -RestorePoint 0
      Get-Backup -Origin Copy -Name 'Daily SQL' | Restore-Backup -Destination /tmp/c -RestorePoint 0
    """
    from cmdlets.backup.catalog import resolve
    from cmdlets.backup.chain import select_point
    from cmdlets.backup.restore import restore_point as restore

    target = resolve(_backups(ctx), backup or "")
    point = select_point(target.meta, restore_point)
    folder = ctx.resolve(destination or "")
    if not ctx.should_process(str(folder), f"Restore {point.file} of backup '{target.name}'"):
        return
    restored = restore(target.folder(), folder, point.index, force=force)
    ctx.verbose(f"restored {restored.file} into {folder}")
    yield restore_point_object(target.id, target.name, restored)
