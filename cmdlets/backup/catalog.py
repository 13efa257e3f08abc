"""Where backups are: chains found in repositories and extents, and copies registered by copy
sessions (a copy in a plain folder is known only through its registration)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cmdlets.backup.chain import BackupMetadata, find_backups, format_time, read_metadata
from cmdlets.backup.inventory import Inventory, is_share_path
from cmdlets.host.errors import BcsError, InvalidOperationError, NotFoundError
from cmdlets.store import StateDir

COPIES = "copies"  # state records of registered copies, keyed by the copy's backup id


@dataclasses.dataclass(frozen=True)
class Backup:
    meta: BackupMetadata
    path: Path
    repository: str | None
    extent: str | None
    copy: dict[str, Any] | None = None  # the registration, for a copy

    @property
    def id(self) -> str:
        return self.meta.backup_id

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def origin(self) -> str:
        return "Copy" if self.copy else "Job"


def locations(inventory: Inventory) -> Iterator[tuple[str, str | None, Path]]:
    """(repository, extent, folder) of every local repository and extent."""
    for repo in inventory.repositories:
        if repo.extents:
            for extent in repo.extents:
                yield repo.name, extent.name, Path(extent.path)
        elif repo.path and not is_share_path(repo.path):
            yield repo.name, None, Path(repo.path)


def all_backups(
    inventory: Inventory, state: StateDir, on_problem: Callable[[BcsError], None] | None = None
) -> list[Backup]:
    copies = {key: record for key, record in state.records(COPIES)}
    found: list[Backup] = []
    seen: set[Path] = set()
    for repo, extent, folder in locations(inventory):
        if not folder.exists():
            continue  # a repository nothing was written to yet
        for path, meta in find_backups(folder, on_problem=on_problem):
            seen.add(path)
            found.append(Backup(meta, path, repo, extent, copies.get(meta.backup_id)))
    for key, record in copies.items():
        path = Path(record.get("Path", ""))
        if path in seen or not record.get("Path") or record.get("Location", "Folder") != "Folder":
            continue
        try:
            meta = read_metadata(path)
        except BcsError as exc:
            if on_problem:
                on_problem(BcsError(f"registered copy {key} at {path}: {exc.message}"))
            continue
        found.append(Backup(meta, path, record.get("Repository"), record.get("Extent"), record))
    return found


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
        "Path": str(backup.path),
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
        listed = "; ".join(f"{b.id} ({b.name} in {b.repository or b.path})" for b in found)
        raise InvalidOperationError(
            f"'{spec}' names {len(found)} backups: {listed}; name one by id",
            target=spec,
            error_id="AmbiguousBackup",
        )
    return found[0]
