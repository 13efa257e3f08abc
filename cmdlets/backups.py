"""Cmdlets of the nouns Backup and RestorePoint.

A backup that cannot be read (a copy on an unplugged disk, a damaged ``.vbm``) is listed by
Get-Backup with its State; to the other cmdlets it is a warning, said once per command, never
a reason to fail work on the backups they were asked about.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

from cmdlets.backupjob import restore_point_object
from cmdlets.host.context import Context
from cmdlets.host.errors import BcsError, NotFoundError
from cmdlets.host.registry import Param, cmdlet

if TYPE_CHECKING:
    from cmdlets.backup.catalog import Backup
    from cmdlets.backup.inventory import Job

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


@dataclasses.dataclass
class _Scan:
    backups: list[Backup]
    problems: list[BcsError]  # what is not one backup: a repository folder that cannot be listed
    warned: bool = False


# One scan per command: a cmdlet runs once per piped object (``Get-Backup | Test-Backup``), and
# neither the folders nor the warnings should be repeated for each.
_SCANS: weakref.WeakKeyDictionary[Context, _Scan] = weakref.WeakKeyDictionary()


def _scan(ctx: Context) -> _Scan:
    scan = _SCANS.get(ctx)
    if scan is None:
        from cmdlets.backup.catalog import all_backups

        problems: list[BcsError] = []
        backups = all_backups(
            ctx.inventory, ctx.state, on_problem=problems.append, locations=ctx.locations
        )
        scan = _SCANS[ctx] = _Scan(backups, problems)
    return scan


def _warn_once(ctx: Context, scan: _Scan, *, backups: bool = True) -> None:
    """Warn, once per command, about what cannot be read: repository folders, and (unless
    not ``backups``) each backup that is not usable. Its own result says more when the
    command is about that backup, but the warning comes once whatever the order of the piped
    backups, so that it never depends on which one came first."""
    if scan.warned:
        return
    scan.warned = True
    for problem in scan.problems:
        ctx.warn(problem.message)
    for backup in scan.backups if backups else ():
        if not backup.usable:
            ctx.warn(f"backup '{backup.name}' is {backup.state.lower()}: {backup.reason}")


def _backups(ctx: Context) -> list[Backup]:
    scan = _scan(ctx)
    _warn_once(ctx, scan)
    return scan.backups


def _resolved(ctx: Context, specs: list[str]) -> Iterator[Backup]:
    """The backup each spec names, whatever its state; one that names none (or several) is
    an error record."""
    from cmdlets.backup.catalog import find

    scan = _scan(ctx)
    _warn_once(ctx, scan)
    for spec in specs:
        try:
            yield find(scan.backups, spec)
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
    copy sessions have Origin Copy, with SourceBackupId and CopySessionId. State says whether it
    can be read: Available; Unreachable (its folder is gone, or the disk is unplugged: a copy is
    then listed from its registration); Damaged (its .vbm cannot be read); Unchecked (a copy on
    a shared folder, listed without reaching the share). Reason says why. A backup of a job is
    the chain in the job's folder (<repository>/<job name>/) and the copies made of it.

    Examples:
      Get-Backup
      Get-Backup -Name 'Daily SQL'
      Get-Backup -Origin Copy | Test-Backup
      Get-BackupJob -Name 'Daily SQL' | Get-Backup
    """
    from cmdlets.backup.catalog import backup_object, matches, same_name

    scan = _scan(ctx)
    _warn_once(ctx, scan, backups=False)  # each backup's State says what is wrong with it
    by_id = {b.id: b for b in scan.backups}
    found = False
    for backup in scan.backups:
        if name and not any(_like(backup.name, n) for n in name):
            continue
        if id and not any(matches(backup, i) and len(i) >= 4 for i in id):
            continue
        if repository and (backup.repository or "").lower() not in {r.lower() for r in repository}:
            continue
        if origin and backup.origin != origin:
            continue
        of = _job_of(backup, by_id)
        if job and (of is None or not any(same_name(of.name.lower(), j.lower()) for j in job)):
            continue
        found = True
        yield backup_object(backup)
    wanted = [n for n in (name or []) + (id or []) if not any(c in n for c in "*?[")]
    if wanted and not found:
        ctx.write_error(NotFoundError(f"no backup matches {', '.join(wanted)}", target=wanted[0]))


def _job_of(backup: Backup, by_id: dict[str, Backup]) -> Job | None:
    """The job a backup is of: a chain is its job's when it is where the job writes (never by
    the JobName in its .vbm); a copy is of its source's job, while the source is known."""
    seen: set[str] = set()
    current: Backup | None = backup
    while current is not None and current.copy and current.id not in seen:
        seen.add(current.id)
        current = by_id.get(str(current.copy.get("SourceBackupId")))
    return current.job if current is not None else None


def _like(name: str, pattern: str) -> bool:
    """Wildcard match, case-insensitive and in either Unicode normal form."""
    import unicodedata

    def fold(text: str) -> str:
        return unicodedata.normalize("NFC", text).lower()

    return fnmatch.fnmatchcase(fold(name), fold(pattern))


@cmdlet("Test-Backup", output_type="BackupCopy.BackupTest")
def test_backup(
    ctx: Context,
    backup: Annotated[list[str] | None, BACKUP_REQUIRED] = None,
) -> Iterator[dict[str, Any]]:
    """Re-read every file of backups and check it against the metadata.

    Each restore point file must exist, have the recorded size and hash to the recorded
    SHA-256; the chain must start with a full. One BackupCopy.BackupTest per backup; the exit
    status is 1 if any file is missing, truncated or corrupt, or a backup tested is unreachable
    or damaged. Other backups that cannot be read are a warning, once.

    Examples:
      Test-Backup -Backup 'Daily SQL'
      Get-Backup | Test-Backup
    """
    from cmdlets.backup.verify import verify_backup

    for target in _resolved(ctx, backup or []):
        ctx.verbose(f"testing {target.where}")
        # Unreachable or damaged: its files cannot be checked, and that is the result.
        problems = verify_backup(target.folder()) if target.usable else [target.reason or ""]
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
        if not target.recorded:
            ctx.write_error(
                BcsError(f"backup '{target.name}' is {target.state.lower()}: {target.reason}")
            )
            continue
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
    modes (without setuid and setgid bits: owners are not restored), times and symlinks come
    back. The destination is a local folder; one that is not empty is refused unless -Force.
    Nothing is ever written through a symbolic link, even one put in place of a folder while
    the restore runs (the restore then stops, exit status 1). Copies restore exactly like the
    chains they were copied from.

    Examples:
      Restore-Backup -Backup 'Daily SQL' -Destination /tmp/sql
      Restore-Backup 'Daily SQL' /tmp/sql -RestorePoint 0
      Get-Backup -Origin Copy -Name 'Daily SQL' | Restore-Backup -Destination /tmp/c -RestorePoint 0
    """
    from cmdlets.backup.catalog import resolve
    from cmdlets.backup.chain import select_point
    from cmdlets.backup.inventory import is_share_path
    from cmdlets.backup.location import refuse_user_info
    from cmdlets.backup.restore import restore_point as restore
    from cmdlets.host.errors import UsageError

    if not destination:
        # An empty path would be the current folder, which nobody means to restore over.
        raise UsageError(
            "-Destination is empty: name the folder to restore into",
            target=destination,
            error_id="EmptyDestination",
        )
    refuse_user_info(destination)
    if is_share_path(destination):
        # As a local path, //nas01/share would be the folder /nas01/share of this machine.
        raise UsageError(
            f"-Destination {destination!r} is a shared folder: Restore-Backup restores into a "
            "local folder (a copy on a share restores from there into a local one)",
            target=destination,
            error_id="DestinationIsShare",
        )
    target = resolve(_backups(ctx), backup or "")
    point = select_point(target.meta, restore_point)
    folder = ctx.resolve(destination)
    if not ctx.should_process(str(folder), f"Restore {point.file} of backup '{target.name}'"):
        return
    restored = restore(target.folder(), folder, point.index, force=force)
    ctx.verbose(f"restored {restored.file} into {folder}")
    yield restore_point_object(target.id, target.name, restored)
