"""Where backups are: chains found in repositories and extents, and copies registered by copy
sessions (a copy in a plain folder or on a shared folder is known only through its
registration).

A copy on a shared folder is listed from the metadata its registration recorded (a copy's
chain never changes: no job writes into it), so that listing backups needs neither the
network nor a password; its files, and its ``.vbm`` again, are read through the location
that reaches the share only when they are used (Test-Backup, Restore-Backup).

One backup that cannot be read never hides the others: each backup has a ``state``. A copy
whose folder is gone (a USB disk that was unplugged) is ``Unreachable``, one whose ``.vbm``
cannot be read is ``Damaged``; both are still listed, from what their registration recorded. A
chain in a repository whose ``.vbm`` is damaged is listed too, under its folder (its id is then
unknown: the folder's path stands for it). A copy on a shared folder is ``Unchecked``: listing
does not reach the share.
"""

from __future__ import annotations

import dataclasses
import functools
import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmdlets.backup.chain import (
    BACKUP_JOB,
    BackupMetadata,
    BackupUnreachableError,
    format_time,
    metadata_from_json,
    read_metadata,
    scan_backups,
)
from cmdlets.backup.inventory import Inventory, Job, is_share_path
from cmdlets.host.errors import BcsError, InvalidOperationError, NotFoundError
from cmdlets.store import StateDir

if TYPE_CHECKING:
    from cmdlets.backup.location import Location, Locations

COPIES = "copies"  # state records of registered copies, keyed by the copy's backup id

AVAILABLE = "Available"  # its metadata was read from its folder just now
UNREACHABLE = "Unreachable"  # its folder is gone, or the disk under it is unplugged or failing
DAMAGED = "Damaged"  # its folder is there, its metadata cannot be read (or is not this backup's)
UNCHECKED = "Unchecked"  # a copy on a shared folder: listed without reaching the share
USABLE = (AVAILABLE, UNCHECKED)

# CreationTime of a backup whose metadata is unknown; never shown (see Backup.recorded).
_UNKNOWN_TIME = datetime(1970, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Backup:
    meta: BackupMetadata
    path: Path
    repository: str | None
    extent: str | None
    copy: dict[str, Any] | None = None  # the registration, for a copy
    # Opens the location its files are read from when they are not in a local folder (a
    # shared folder); ``path`` then only gives the folder's name.
    opener: Callable[[], Location] | None = None
    # The inventory job whose folder holds this chain: the job that writes it. Matched by
    # where the job writes (its repository or an extent of it, and ``<job name>/``), never by
    # the JobName inside the .vbm, which anyone who can write the folder can set. None for a
    # copy and for a folder no job of the inventory writes.
    job: Job | None = None
    state: str = AVAILABLE
    problem: BcsError | None = None  # why it is not Available
    # False when ``meta`` is a stand-in with no restore points: a chain whose .vbm cannot be
    # read, or a copy registered before registrations kept the metadata.
    recorded: bool = True

    @property
    def id(self) -> str:
        return self.meta.backup_id

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def where(self) -> str:
        """The backup folder, for people: a local path, or the shared folder's path."""
        if self.opener is not None and self.copy is not None:
            return str(self.copy["Path"])
        return str(self.path)

    def folder(self) -> Path | Location:
        """Where to read its files: the local folder, or the location reaching it."""
        return self.opener() if self.opener is not None else self.path

    @property
    def origin(self) -> str:
        return "Copy" if self.copy else "Job"

    @property
    def usable(self) -> bool:
        """Whether its files can be read (as far as listing it could tell)."""
        return self.state in USABLE

    @property
    def reason(self) -> str | None:
        return self.problem.message if self.problem is not None else None


def local_folders(inventory: Inventory) -> Iterator[tuple[str, str | None, Path]]:
    """(repository, extent, folder) of every local repository and extent."""
    for repo in inventory.repositories:
        if repo.extents:
            for extent in repo.extents:
                yield repo.name, extent.name, Path(extent.path)
        elif repo.path and not is_share_path(repo.path):
            yield repo.name, None, Path(repo.path)


def folder_job(inventory: Inventory, repository: str, folder: Path) -> Job | None:
    """The job that writes the chain in ``folder`` of ``repository`` (any of its extents)."""
    for job in inventory.jobs:
        home = inventory.repository(job.repository)
        if home is not None and home.name == repository and same_name(job.name, folder.name):
            return job
    return None


def all_backups(
    inventory: Inventory,
    state: StateDir,
    on_problem: Callable[[BcsError], None] | None = None,
    locations: Locations | None = None,
) -> list[Backup]:
    """Every backup: chains in the local repositories and extents, then registered copies.

    A backup that cannot be read is listed with its ``state`` and ``problem``; only problems
    that are not one backup (a repository folder that cannot be listed) go to ``on_problem``.
    A copy on a shared folder is reached through ``locations`` when its files are read.
    """
    copies = {key: record for key, record in state.records(COPIES)}
    by_path = {
        str(r["Path"]): k
        for k, r in copies.items()
        if r.get("Location", "Folder") == "Folder" and r.get("Path")
    }
    found: list[Backup] = []
    seen: set[Path] = set()
    for repo, extent, folder in local_folders(inventory):
        if not folder.exists():
            continue  # a repository nothing was written to yet
        for path, meta in scan_backups(folder, on_problem=on_problem):
            seen.add(path)
            key = by_path.get(str(path))
            if isinstance(meta, BackupMetadata) and (key is None or key == meta.backup_id):
                record = copies.get(meta.backup_id)
                job = None if record else folder_job(inventory, repo, path)
                found.append(Backup(meta, path, repo, extent, record, job=job))
            elif key is not None:  # a registered copy's folder that does not read as that copy
                problem = meta if isinstance(meta, BcsError) else _not_the_copy(path, meta, key)
                found.append(_unreadable_copy(key, copies[key], path, repo, extent, problem))
            else:
                assert isinstance(meta, BcsError)
                found.append(_damaged_chain(inventory, repo, extent, path, meta))
    for key, record in copies.items():
        path = Path(record.get("Path", ""))
        if path in seen or not record.get("Path"):
            continue
        found.append(_registered(key, record, path, locations))
    return found


def _registered(
    key: str, record: dict[str, Any], path: Path, locations: Locations | None
) -> Backup:
    repo, extent = record.get("Repository"), record.get("Extent")
    if record.get("Location", "Folder") != "Folder":
        try:
            meta = metadata_from_json(record.get("Metadata"), f"registered copy {key}")
        except BcsError as exc:
            return _unreadable_copy(key, record, path, repo, extent, exc)
        opener = functools.partial(_open_copy, record, locations)
        return Backup(meta, path, repo, extent, record, opener, state=UNCHECKED)
    try:
        meta = read_metadata(path)
    except BcsError as exc:
        return _unreadable_copy(key, record, path, repo, extent, exc)
    if meta.backup_id != key:
        return _unreadable_copy(key, record, path, repo, extent, _not_the_copy(path, meta, key))
    return Backup(meta, path, repo, extent, record)


def _not_the_copy(path: Path, meta: BackupMetadata, key: str) -> BcsError:
    return BcsError(f"{path} holds backup {meta.backup_id}, not the registered copy {key}")


def _unreadable_copy(
    key: str,
    record: dict[str, Any],
    path: Path,
    repository: str | None,
    extent: str | None,
    problem: BcsError,
) -> Backup:
    """A registered copy whose folder cannot be read: listed from its registration."""
    state = UNREACHABLE if isinstance(problem, BackupUnreachableError) else DAMAGED
    try:
        meta = metadata_from_json(record.get("Metadata"), f"registered copy {key}")
        recorded = True
    except BcsError:
        meta = BackupMetadata(key, path.name, BACKUP_JOB, _UNKNOWN_TIME)
        recorded = False
    return Backup(
        meta, path, repository, extent, record, state=state, problem=problem, recorded=recorded
    )


def _damaged_chain(
    inventory: Inventory, repository: str, extent: str | None, path: Path, problem: BcsError
) -> Backup:
    """A chain whose .vbm cannot be read: its id is unknown, so its folder stands for it."""
    job = folder_job(inventory, repository, path)
    meta = BackupMetadata(
        str(path), job.name if job else path.name, job.type if job else BACKUP_JOB, _UNKNOWN_TIME
    )
    return Backup(
        meta, path, repository, extent, job=job, state=DAMAGED, problem=problem, recorded=False
    )


def _open_copy(record: dict[str, Any], locations: Locations | None) -> Location:
    if locations is None:
        raise BcsError(f"{record['Path']} is on a shared folder: no location reaches it here")
    return locations.open(record["Path"], record.get("Credential"))


def backup_object(backup: Backup) -> dict[str, Any]:
    meta = backup.meta
    last = meta.last_point_time
    return {
        "TypeName": "BackupCopy.Backup",
        "Id": meta.backup_id,
        "Name": backup.name,
        "Job": meta.job_name,
        "JobType": "AgentPolicy" if meta.job_type == "agent-policy" else "BackupJob",
        "Repository": backup.repository,
        "Extent": backup.extent,
        "Path": backup.where,
        "Origin": backup.origin,
        "State": backup.state,
        "Reason": backup.reason,
        "SourceBackupId": backup.copy.get("SourceBackupId") if backup.copy else None,
        "CopySessionId": backup.copy.get("CopySessionId") if backup.copy else None,
        "RestorePoints": len(meta.restore_points),
        "Size": meta.size,
        "CreationTime": format_time(meta.creation_time) if backup.recorded else None,
        "LastPointTime": format_time(last) if last else None,
    }


def same_name(a: str, b: str) -> bool:
    """Whether two names are one name: a name typed on one system and a folder made on
    another may be in different Unicode normal forms (é as one character or as e + accent)."""
    return _nfc(a) == _nfc(b)


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _folded(text: str) -> str:
    return _nfc(text.strip()).lower()


def matches(backup: Backup, spec: str) -> bool:
    """A backup is named by its name (case-insensitive, in either Unicode normal form), its
    id, or a 4+ character id prefix."""
    text, ident = _folded(spec), _folded(backup.id)
    if _folded(backup.name) == text or ident == text:
        return True
    return len(text) >= 4 and ident.startswith(text)


def find(backups: list[Backup], spec: str) -> Backup:
    """The one backup ``spec`` names, whatever its state. A name shared by a chain and its
    copies means the chain its job writes; any other ambiguity is an error listing the
    candidates."""
    found = [b for b in backups if matches(b, spec)]
    if len(found) > 1:
        by_id = [b for b in found if _folded(b.id) == _folded(spec)]
        from_job = [b for b in found if b.origin == "Job"]
        found = by_id or (from_job if len(from_job) == 1 else found)
    if not found:
        known = ", ".join(sorted({b.name for b in backups})) or "none"
        raise NotFoundError(f"no backup named or with id '{spec}' (backups: {known})", target=spec)
    if len(found) > 1:
        listed = "; ".join(f"{b.id} ({b.name} in {b.repository or b.where})" for b in found)
        raise InvalidOperationError(
            f"'{spec}' names {len(found)} backups: {listed}; name one by id",
            target=spec,
            error_id="AmbiguousBackup",
        )
    return found[0]


def resolve(backups: list[Backup], spec: str) -> Backup:
    """The one backup ``spec`` names (see find), whose files can be read: a backup that is
    Unreachable or Damaged is an error saying so."""
    backup = find(backups, spec)
    if not backup.usable:
        raise InvalidOperationError(
            f"backup '{backup.name}' is {backup.state.lower()}: {backup.reason}",
            target=spec,
            error_id=f"Backup{backup.state}",
        )
    return backup
