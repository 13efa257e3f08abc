"""Where backups are: chains found in repositories and extents, and copies registered by copy
sessions (a copy in a plain folder or on a shared folder is known only through its
registration).

A copy on a shared folder is listed from the metadata its registration recorded (a copy's
chain never changes: no job writes into it), so that listing backups needs neither the
network nor a password; its files, and its ``.vbm`` again, are read through the location
that reaches the share only when they are used (Test-Backup, Restore-Backup).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmdlets.backup.chain import (
    BackupMetadata,
    find_backups,
    format_time,
    metadata_from_json,
    read_metadata,
)
from cmdlets.backup.inventory import Inventory, is_share_path
from cmdlets.host.errors import BcsError, InvalidOperationError, NotFoundError
from cmdlets.store import StateDir

if TYPE_CHECKING:
    from cmdlets.backup.location import Location, Locations

COPIES = "copies"  # state records of registered copies, keyed by the copy's backup id


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


def local_folders(inventory: Inventory) -> Iterator[tuple[str, str | None, Path]]:
    """(repository, extent, folder) of every local repository and extent."""
    for repo in inventory.repositories:
        if repo.extents:
            for extent in repo.extents:
                yield repo.name, extent.name, Path(extent.path)
        elif repo.path and not is_share_path(repo.path):
            yield repo.name, None, Path(repo.path)


def all_backups(
    inventory: Inventory,
    state: StateDir,
    on_problem: Callable[[BcsError], None] | None = None,
    locations: Locations | None = None,
) -> list[Backup]:
    """Every backup: chains in the local repositories and extents, then registered copies.

    A copy on a shared folder is reached through ``locations`` when its files are read.
    """
    copies = {key: record for key, record in state.records(COPIES)}
    found: list[Backup] = []
    seen: set[Path] = set()
    for repo, extent, folder in local_folders(inventory):
        if not folder.exists():
            continue  # a repository nothing was written to yet
        for path, meta in find_backups(folder, on_problem=on_problem):
            seen.add(path)
            found.append(Backup(meta, path, repo, extent, copies.get(meta.backup_id)))
    for key, record in copies.items():
        path = Path(record.get("Path", ""))
        if path in seen or not record.get("Path"):
            continue
        opener = None
        try:
            if record.get("Location", "Folder") == "Folder":
                meta = read_metadata(path)
            else:
                meta = metadata_from_json(record.get("Metadata"), f"registered copy {key}")
                opener = functools.partial(_open_copy, record, locations)
        except BcsError as exc:
            if on_problem:
                on_problem(BcsError(f"registered copy {key} at {record['Path']}: {exc.message}"))
            continue
        found.append(
            Backup(meta, path, record.get("Repository"), record.get("Extent"), record, opener)
        )
    return found


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
        "SourceBackupId": backup.copy.get("SourceBackupId") if backup.copy else None,
        "CopySessionId": backup.copy.get("CopySessionId") if backup.copy else None,
        "RestorePoints": len(meta.restore_points),
        "Size": meta.size,
        "CreationTime": format_time(meta.creation_time),
        "LastPointTime": format_time(last) if last else None,
    }


def matches(backup: Backup, spec: str) -> bool:
    """A backup is named by its name (case-insensitive), its id, or a 4+ character id prefix."""
    text = spec.strip().lower()
    if backup.name.lower() == text or backup.id.lower() == text:
        return True
    return len(text) >= 4 and backup.id.lower().startswith(text)


def resolve(backups: list[Backup], spec: str) -> Backup:
    """The one backup ``spec`` names. A name shared by a chain and its copies means the
    chain its job writes; any other ambiguity is an error listing the candidates."""
    found = [b for b in backups if matches(b, spec)]
    if len(found) > 1:
        by_id = [b for b in found if b.id.lower() == spec.strip().lower()]
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
