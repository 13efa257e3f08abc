"""Copying backups to another location: the checks, the plan, the work, the finalization.

The order of events makes a crash at any moment recoverable:

1. every check passes before anything is touched;
2. the session's work lock is taken, then its record is created (a session in Starting is
   never taken for one whose process died), then the jobs are held (disabled) under their
   locks, and each backup's plan is brought up to date with its chain under its hold;
3. each folder the session makes at the target (a backup's folder, or a missing folder on
   the way for -Path) is claimed atomically: made under a name only this session uses, then
   renamed into place without replacing anything, so that of two sessions racing for one
   folder exactly one gets it, and its identity is recorded, so that a folder made again
   under its name is never taken for it (see claims); the session records as created only
   what it made itself, and only then the files it is about to make in its own folder (so
   that Undo removes exactly what the session created, and nothing else);
4. files are copied under temporary names, verified against the checksums of the source's
   metadata, made durable and renamed; progress is journaled at checkpoints so that Retry
   resumes from the bytes already durable;
5. the copy's metadata (.vbm) is written last, then the copy is registered;
6. finalization releases the holds: the job is enabled again if it was before.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from cmdlets.backup import claims, jobs, sessions
from cmdlets.backup.catalog import COPIES, Backup
from cmdlets.backup.chain import (
    BackupMetadata,
    format_time,
    load_metadata_json,
    metadata_from_json,
    metadata_path,
    validate_name,
)
from cmdlets.backup.claims import Folder, claim, settle_claim
from cmdlets.backup.inventory import Inventory, Repository
from cmdlets.backup.location import FILE_MODE, Location, LocationError, Locations, TargetFile
from cmdlets.host.errors import BcsError, InvalidOperationError, NotFoundError, UsageError
from cmdlets.store import StateDir

Record = dict[str, Any]
Clock = Callable[[], datetime]


# -- checks and plan ---------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _scale_out_of(inventory: Inventory, backup: Backup) -> Repository | None:
    if backup.extent is None or backup.repository is None:
        return None
    repo = inventory.repository(backup.repository)
    return repo if repo is not None and repo.extents else None


def local_only(inventory: Inventory) -> Locations:
    """Locations without any plugin's providers: local folders only (no password is read)."""
    return Locations([], inventory.credentials, {})


def _share_credential(inventory: Inventory, locations: Locations, path: str) -> str | None:
    """The credential of the shared-folder repository that ``path`` is in, if any."""
    wanted = path.rstrip("/").casefold()
    for repo in inventory.repositories:
        if repo.path and repo.credential and not locations.is_local(repo.path):
            base = repo.path.rstrip("/").casefold()
            if wanted == base or wanted.startswith(base + "/"):
                return repo.credential
    return None


def choose_target(
    inventory: Inventory,
    backups: list[Backup],
    repository: str | None,
    path: str | None,
    cwd: Path,
    locations: Locations | None = None,
    credential: str | None = None,
) -> dict[str, Any]:
    """The target of a session: ``{"Kind", "Repository", "Extent", "Path"}``, and for a
    shared folder (``Kind`` Share) the name of the ``Credential`` that reaches it."""
    locations = locations or local_only(inventory)
    if (repository is None) == (path is None):
        raise UsageError("give either -Repository NAME or -Path FOLDER", error_id="TargetMissing")
    if path is not None and not path.strip():
        # An empty path would mean the current folder, which nobody types on purpose.
        raise UsageError("-Path is empty: give the folder to copy into", error_id="EmptyPath")
    if credential is not None and (path is None or locations.is_local(path)):
        raise UsageError(
            "-Credential applies to a shared folder -Path (//server/share/...)",
            target=credential,
            error_id="CredentialNotApplicable",
        )
    if repository is not None:
        repo = inventory.repository(repository)
        if repo is None:
            known = ", ".join(r.name for r in inventory.repositories)
            raise NotFoundError(
                f"no repository named '{repository}' (repositories: {known})", target=repository
            )
        for backup in backups:
            source_sobr = _scale_out_of(inventory, backup)
            if repo.extents and source_sobr is not None and source_sobr.name == repo.name:
                raise InvalidOperationError(
                    f"backup '{backup.name}' is on extent '{backup.extent}' of scale-out "
                    f"repository '{repo.name}': copying between extents of the same scale-out "
                    "repository is not supported",
                    target=backup.name,
                    error_id="SameScaleOutRepository",
                )
        if repo.extents:
            from cmdlets.backup.runs import roomiest_extent

            best = roomiest_extent(repo)
            _outside_sources(backups, Path(best.path))
            return {
                "Kind": "Repository",
                "Repository": repo.name,
                "Extent": best.name,
                "Path": best.path,
            }
        assert repo.path is not None  # the schema wants a path or extents
        if not locations.is_local(repo.path):
            locations.require(repo.path, f"repository '{repo.name}'")
            return {
                "Kind": "Share",
                "Repository": repo.name,
                "Extent": None,
                "Path": repo.path,
                "Credential": repo.credential,
            }
        _outside_sources(backups, Path(repo.path))
        return {"Kind": "Repository", "Repository": repo.name, "Extent": None, "Path": repo.path}
    assert path is not None
    if not locations.is_local(path):
        locations.require(path)
        name = credential or _share_credential(inventory, locations, path)
        if name is not None:
            name = locations.credential(name).name
        share = path.rstrip("/")
        repo_named = next(
            (
                r.name
                for r in inventory.repositories
                if r.path and r.path.rstrip("/").casefold() == share.casefold()
            ),
            None,
        )
        return {
            "Kind": "Share",
            "Repository": repo_named,
            "Extent": None,
            "Path": share,
            "Credential": name,
        }
    folder = (cwd / os.path.expanduser(path)).resolve()
    _outside_sources(backups, folder)
    for backup in backups:
        sobr = _scale_out_of(inventory, backup)
        if sobr is None:
            continue
        for extent in sobr.extents:
            if _inside(folder, Path(extent.path)):
                raise InvalidOperationError(
                    f"{folder} is inside extent '{extent.name}' of scale-out repository "
                    f"'{sobr.name}', where backup '{backup.name}' lives: copying between "
                    "extents of the same scale-out repository is not supported",
                    target=str(folder),
                    error_id="SameScaleOutRepository",
                )
    for repo in inventory.repositories:
        for extent in repo.extents:
            if _inside(folder, Path(extent.path)):
                return {
                    "Kind": "Repository",
                    "Repository": repo.name,
                    "Extent": extent.name,
                    "Path": str(folder),
                }
        if repo.path and locations.is_local(repo.path) and folder == Path(repo.path).resolve():
            return {
                "Kind": "Repository",
                "Repository": repo.name,
                "Extent": None,
                "Path": str(folder),
            }
    return {"Kind": "Folder", "Repository": None, "Extent": None, "Path": str(folder)}


def _outside_sources(backups: list[Backup], folder: Path) -> None:
    """Refuse a target inside the folder of a backup being copied: the copy would land in the
    chain it copies (and a job writing that chain would write beside it)."""
    for backup in backups:
        if backup.opener is None and _inside(folder, backup.path):
            raise InvalidOperationError(
                f"{folder} is inside the folder of backup '{backup.name}' ({backup.path}), "
                "which this session copies: choose a target outside it",
                target=str(folder),
                error_id="TargetInsideSource",
            )


def _target_checks(
    target: dict[str, Any], locations: Locations
) -> tuple[Callable[[str], bool], Callable[[], int | None]]:
    """Whether a folder exists at the target, and the target's free space."""
    from cmdlets.repository import free_bytes

    root = target["Path"]
    if locations.is_local(root):

        def local_exists(folder: str) -> bool:
            return os.path.lexists(Path(root) / folder)

        return local_exists, lambda: free_bytes(str(root))
    try:
        location = locations.open(root, target.get("Credential"))
    except OSError as exc:
        raise _unreachable(root, exc) from None

    def exists(folder: str) -> bool:
        try:
            return location.exists(folder)
        except OSError as exc:
            raise _unreachable(root, exc) from None

    def free() -> int | None:
        try:
            return location.free_bytes()
        except OSError as exc:
            raise _unreachable(root, exc) from None

    return exists, free


def _unreachable(where: str, exc: OSError) -> BcsError:
    return BcsError(
        f"cannot use the target {where}: {exc.strerror or exc}",
        target=where,
        error_id="TargetUnreachable",
    )


def plan(
    inventory: Inventory,
    backups: list[Backup],
    target: dict[str, Any],
    names: list[str] | None,
    inventory_path: Path,
    now: datetime,
    locations: Locations | None = None,
) -> Record:
    """Check everything and describe the session; nothing is touched yet."""
    from cmdlets.backup.copyengine import partial_name  # noqa: F401 - fail early if missing

    locations = locations or local_only(inventory)
    if not backups:
        raise UsageError(
            "no backup to copy: give -Backup or pipe Backup objects", error_id="NoBackup"
        )
    if names and len(names) != len(backups):
        raise UsageError(
            f"-Name gives {len(names)} folder names for {len(backups)} backups; give one per "
            "backup, in the same order",
            error_id="NameCountMismatch",
        )
    root = target["Path"].rstrip("/") or target["Path"]
    for backup in backups:
        if backup.opener is not None:
            raise InvalidOperationError(
                f"backup '{backup.name}' is a copy on a shared folder ({backup.where}): copying "
                "from a shared folder is not supported; restore it, or copy its source backup",
                target=backup.name,
                error_id="SourceNotLocal",
            )
    exists, free_bytes = _target_checks(target, locations)
    planned: list[Record] = []
    folders: set[str] = set()
    for index, backup in enumerate(backups):
        if backup.meta.job_type == "agent-policy":
            raise InvalidOperationError(
                f"backup '{backup.name}' was created by agent backup policy "
                f"'{backup.meta.job_name}': backups of agent policies cannot be copied",
                target=backup.name,
                error_id="AgentPolicyBackup",
            )
        folder = validate_name(names[index] if names else backup.name, "-Name")
        if folder.lower() in folders:
            raise InvalidOperationError(
                f"two backups of this session would be copied to the same folder '{folder}'; "
                "give -Name",
                target=folder,
            )
        folders.add(folder.lower())
        if exists(folder):
            where = str(Path(root) / folder) if locations.is_local(root) else f"{root}/{folder}"
            raise InvalidOperationError(
                f"the target folder {where} already exists; bcs never overwrites: "
                "choose another folder name with -Name",
                target=where,
                error_id="TargetExists",
            )
        files = [
            {"File": p.file, "Size": p.size, "Sha256": p.sha256, "Copied": False, "Durable": 0}
            for p in backup.meta.restore_points
        ]
        planned.append(
            {
                "BackupId": backup.id,
                "Name": backup.name,
                "Job": backup.meta.job_name,
                "Origin": backup.origin,
                "SourcePath": str(backup.path),
                "Folder": folder,
                "Files": files,
                "Status": "Pending",
                "Error": None,
                "BytesTotal": sum(f["Size"] for f in files),
                "BytesCopied": 0,
                "CopyId": sessions.new_id(),
            }
        )
    needed = sum(b["BytesTotal"] for b in planned)
    free = free_bytes()
    if free is not None and needed > free:
        raise InvalidOperationError(
            f"not enough free space at {root}: the session needs {needed} bytes, {free} are free",
            target=str(root),
            error_id="NotEnoughSpace",
        )
    # The job whose folder holds the chain (catalog.Backup.job), not the JobName in its .vbm.
    held = sorted({b.job.name for b in backups if b.job is not None})
    return {
        "Id": sessions.new_id(),
        "State": "Starting",
        "Result": "None",
        "Reason": None,
        "Target": target,
        "Inventory": str(inventory_path),
        "Backups": planned,
        "Holds": held,
        "Created": [],
        "CreatedRoots": [],
        "Claiming": [],
        "Identities": [],
        "ProcessId": None,
        "CreationTime": format_time(now),
        "EndTime": None,
        "Actions": [],
        "StopRequested": False,
    }


# -- holds ------------------------------------------------------------------------------------


def take_holds(state: StateDir, inventory: Inventory, record: Record, clock: Clock) -> None:
    """Disable each source job on behalf of the session, unless it holds the job already. A job
    that is writing a restore point right now is waited for (bounded by the lock timeout). On
    failure, the holds taken by this call are released again."""
    from cmdlets.backup.runs import RUNS

    taken: list[str] = []
    try:
        for name in record["Holds"]:
            job = inventory.job(name)
            if job is None:
                continue
            with state.lock(RUNS, job.name):
                if record["Id"] in jobs.read_state(state, job).held_by:
                    continue
                jobs.add_hold(state, job, record["Id"], clock())
            taken.append(name)
            sessions.log(
                state,
                record["Id"],
                clock(),
                "HoldTaken",
                f"backup job '{name}' disabled (was enabled: "
                f"{_was_enabled(state, job.name)}); held by this session",
            )
    except BaseException:
        for name in taken:
            job = inventory.job(name)
            if job is not None:
                jobs.release_hold(state, job, record["Id"], clock())
        raise


def _was_enabled(state: StateDir, job_name: str) -> bool:
    record = state.read(jobs.KIND, job_name) or {}
    return bool(record.get("EnabledBeforeHold", record.get("Enabled", True)))


def release_holds(state: StateDir, inventory: Inventory, record: Record, clock: Clock) -> None:
    for name in record.get("Holds", []):
        job = inventory.job(name)
        if job is None:
            continue
        after = jobs.release_hold(state, job, record["Id"], clock())
        if after.held_by:
            what = f"still held by {', '.join(after.held_by)}"
        else:
            what = "enabled again" if after.enabled else "left disabled, as it was before"
        sessions.log(state, record["Id"], clock(), "HoldReleased", f"backup job '{name}': {what}")


# -- the work ---------------------------------------------------------------------------------


def _shown(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}" if rel else base


class _Below:
    """The location ``rel`` below ``top``: every path is walked from the root of ``top``.

    A local target whose folders the session made (see make_root) is reached from the nearest
    folder that existed before them, never by its full path: a folder on the way that someone
    swaps for a link is then refused like any link below a root (see LocalLocation), instead
    of being followed."""

    def __init__(self, top: Location, rel: str, description: str) -> None:
        self._top = top
        self._rel = rel
        self.description = description

    def _at(self, rel: str) -> str:
        return f"{self._rel}/{rel}" if rel else self._rel

    def exists(self, rel: str) -> bool:
        return self._top.exists(self._at(rel))

    def is_dir(self, rel: str) -> bool:
        return self._top.is_dir(self._at(rel))

    def make_dir(self, rel: str) -> bool:
        return self._top.make_dir(self._at(rel))

    def open_write(self, rel: str, offset: int, mode: int = FILE_MODE) -> TargetFile:
        return self._top.open_write(self._at(rel), offset, mode)

    def open_read(self, rel: str) -> BinaryIO:
        return self._top.open_read(self._at(rel))

    def size(self, rel: str) -> int | None:
        return self._top.size(self._at(rel))

    def rename(self, rel_from: str, rel_to: str) -> None:
        self._top.rename(self._at(rel_from), self._at(rel_to))

    def sync_dir(self, rel: str) -> None:
        self._top.sync_dir(self._at(rel))

    def remove_file(self, rel: str) -> None:
        self._top.remove_file(self._at(rel))

    def remove_dir(self, rel: str) -> None:
        self._top.remove_dir(self._at(rel))

    def free_bytes(self) -> int | None:
        return self._top.free_bytes()

    def list_dir(self, rel: str) -> list[str]:
        return self._top.list_dir(self._at(rel))

    def identity(self, rel: str) -> str | None:
        return self._top.identity(self._at(rel))


def _top_of(record: Record, locations: Locations) -> tuple[str, Location, str]:
    """The folder the target is reached from (its path and location) and the location path of
    the target below it: for a local target, the nearest folder that existed when the session
    first made the target (``TargetBase``); for a shared folder, the share."""
    target = record["Target"]
    if not locations.is_local(target["Path"]):
        return locations.open_top(target["Path"], target.get("Credential"))
    base = record.get("TargetBase")
    if base is None and record.get("CreatedRoots"):
        base = str(Path(record["CreatedRoots"][0]).parent)  # a record written before TargetBase
    base = base or target["Path"]
    rel = Path(os.path.relpath(target["Path"], base)).as_posix()
    return base, locations.open(base), "" if rel == "." else rel


def location_of(record: Record, locations: Locations) -> Location:
    target = record["Target"]
    if not locations.is_local(target["Path"]) or not (
        record.get("TargetBase") or record.get("CreatedRoots")
    ):
        return locations.open(target["Path"], target.get("Credential"))
    _, top, rel = _top_of(record, locations)
    return _Below(top, rel, target["Path"]) if rel else top


def _nearest_existing(path: Path) -> Path:
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def make_root(state: StateDir, record: Record, clock: Clock, locations: Locations) -> None:
    """Create the target folder and the missing folders above it (for -Path), each claimed like
    a backup's folder (see claims), through the location of the nearest folder that exists (or
    of the share): never by a full path, which a link swapped in on the way would redirect."""
    target = record["Target"]
    if locations.is_local(target["Path"]) and not record.get("TargetBase"):
        root = Path(target["Path"])
        if os.path.lexists(root):
            return
        base = str(_nearest_existing(root))
        record = sessions.update(state, record["Id"], lambda r: r.update(TargetBase=base))
    top_path, top, rel = _top_of(record, locations)
    parts = rel.split("/") if rel else []
    for count in range(1, len(parts) + 1):
        prefix = "/".join(parts[:count])
        folder = Folder(top, prefix, None, _shown(top_path, prefix))
        record = sessions.read(state, record["Id"]) or record
        if top.is_dir(prefix) and folder.claiming not in record.get("Claiming", []):
            if folder.mine(record) and folder.replaced(record):
                raise claims.FolderReplacedError(folder.shown)
            # There before, or made by someone else meanwhile: walked into, never through a
            # link (the location refuses those).
            continue
        if claim(state, record["Id"], folder):
            sessions.log(state, record["Id"], clock(), "FolderCreated", folder.shown)


def _remove_roots(state: StateDir, record: Record, clock: Clock, locations: Locations) -> list[str]:
    """Remove the folders make_root made, deepest first, each only if empty and still reached
    without a link; returns those left in place."""
    left: list[str] = []
    if locations.is_local(record["Target"]["Path"]) and not (
        record.get("TargetBase") or record.get("CreatedRoots")
    ):
        return left  # the target existed: make_root made nothing
    top_path, top, rel = _top_of(record, locations)
    parts = rel.split("/") if rel else []
    for count in range(len(parts), 0, -1):
        prefix = "/".join(parts[:count])
        folder = Folder(top, prefix, None, _shown(top_path, prefix))
        left += settle_claim(state, record["Id"], folder, clock)
        current = sessions.read(state, record["Id"]) or {}
        if not folder.mine(current):
            continue
        try:
            if folder.replaced(current):
                claims.leave(state, record["Id"], folder, clock)
                continue
            if top.is_dir(prefix) and top.list_dir(prefix):
                left.append(folder.shown)
                continue
            top.remove_dir(prefix)
        except (OSError, BcsError):
            left.append(folder.shown)
            continue
        sessions.update(state, record["Id"], folder.disown)
        sessions.log(state, record["Id"], clock(), "Removed", folder.shown)
    return left


class _Journal:
    """Writes each file's durable progress into the session record.

    ``progress`` is written at once: the engine records that a file is whole (durable ==
    size) before it renames it, and Retry relies on that to adopt a file found at its final
    name. ``done`` adds nothing Retry needs, so it waits for the next write (or ``flush``):
    one durable write per file fewer, which counts on a chain of many small increments."""

    def __init__(self, state: StateDir, session_id: str, index: int, clock: Clock) -> None:
        self.state = state
        self.session_id = session_id
        self.index = index
        self.clock = clock
        self._copied: list[str] = []

    def _file(self, record: Record, rel: str) -> Record:
        backup = record["Backups"][self.index]
        name = rel.rsplit("/", 1)[-1]
        return next(f for f in backup["Files"] if f["File"] == name)

    def _write(self, more: Callable[[Record], None] | None = None) -> None:
        copied, self._copied = self._copied, []

        def change(record: Record) -> None:
            for rel in copied:
                entry = self._file(record, rel)
                entry["Copied"] = True
                entry["Durable"] = entry["Size"]
            if more is not None:
                more(record)
            backup = record["Backups"][self.index]
            backup["BytesCopied"] = sum(
                f["Size"] if f["Copied"] else f["Durable"] for f in backup["Files"]
            )

        sessions.update(self.state, self.session_id, change)

    def progress(self, task: Any, durable: int) -> None:
        def change(record: Record) -> None:
            self._file(record, task.rel)["Durable"] = durable

        self._write(change)

    def done(self, task: Any, sha256: str) -> None:
        self._copied.append(task.rel)
        sessions.log(
            self.state,
            self.session_id,
            self.clock(),
            "FileCopied",
            f"{task.rel} ({task.size} bytes, sha256 {sha256[:16]}…) verified",
        )

    def flush(self) -> None:
        if self._copied:
            self._write()


def _remember(state: StateDir, session_id: str, index: int, paths: list[tuple[str, str]]) -> None:
    """Record, before creating them, the files the session is about to make in a folder of
    its own (one durable write for the whole list: every fsync counts on a chain of many
    files)."""
    sessions.update(state, session_id, lambda r: claims.add_created(r, index, paths))


def _replan(state: StateDir, session_id: str, index: int, clock: Clock) -> None:
    """Bring the plan of a backup still to copy up to date with its chain, once its job is
    held: the plan was made before the hold, maybe while the job was writing a restore point.
    The chain can only have grown since, and the new restore points are copied too; anything
    else (a point gone or rewritten, another backup in the folder) fails the backup, saying
    what changed."""
    from cmdlets.backup.chain import read_metadata

    backup = (sessions.read(state, session_id) or {})["Backups"][index]
    meta = read_metadata(Path(backup["SourcePath"]))
    problem = _chain_change(backup, meta)
    if problem:
        raise BcsError(
            f"the chain of '{backup['Name']}' changed since the session's checks: {problem}; "
            "finalize this session and start a new copy",
            target=backup["Name"],
            error_id="SourceChanged",
        )
    new = meta.restore_points[len(backup["Files"]) :]
    if not new:
        return

    def grow(record: Record) -> None:
        entry = record["Backups"][index]
        entry["Files"] += [
            {"File": p.file, "Size": p.size, "Sha256": p.sha256, "Copied": False, "Durable": 0}
            for p in new
        ]
        entry["BytesTotal"] = sum(f["Size"] for f in entry["Files"])

    sessions.update(state, session_id, grow)
    sessions.log(
        state,
        session_id,
        clock(),
        "ChainGrown",
        f"'{backup['Name']}': {len(new)} restore points written since the checks are copied "
        f"too ({', '.join(p.file for p in new)})",
    )


def _chain_change(backup: Record, meta: BackupMetadata) -> str | None:
    """How the chain in ``meta`` differs from the planned one other than by growing, if it
    does."""
    if meta.backup_id != backup["BackupId"]:
        return f"its folder holds another backup now (id {meta.backup_id})"
    points = meta.restore_points
    for position, planned in enumerate(backup["Files"]):
        if position >= len(points) or points[position].file != planned["File"]:
            return f"restore point {planned['File']} is no longer in it"
        point = points[position]
        if (point.size, point.sha256) != (planned["Size"], planned["Sha256"]):
            return f"restore point {planned['File']} was rewritten (other size or checksum)"
    return None


def copy_backup(
    state: StateDir,
    session_id: str,
    index: int,
    clock: Clock,
    on_bytes: Callable[[int, str], None],
    should_stop: Callable[[], bool],
    locations: Locations,
) -> tuple[bool, int]:
    """Copy one backup of the session; returns (copied, bytes written)."""
    from cmdlets.backup.copyengine import FileTask, copy_files, partial_name

    record = sessions.read(state, session_id) or {}
    backup = record["Backups"][index]
    location = location_of(record, locations)
    folder = backup["Folder"]
    source = Path(backup["SourcePath"])
    sessions.log(
        state,
        session_id,
        clock(),
        "BackupStarted",
        f"copying '{backup['Name']}' from {source} to {record['Target']['Path']}/{folder}",
    )
    shown = _shown(record["Target"]["Path"], folder)
    own = Folder(location, folder, index, shown)
    if own.mine(record) and not location.is_dir(folder):
        backup = _start_over(state, session_id, index, clock)
    created: list[tuple[str, str]] = []
    tasks = []
    for entry in backup["Files"]:
        if entry["Copied"]:
            continue
        rel = f"{folder}/{entry['File']}"
        created += [("File", partial_name(rel)), ("File", rel)]
        tasks.append(
            FileTask(source / entry["File"], rel, entry["Size"], entry["Sha256"], entry["Durable"])
        )
    if not claim(state, session_id, own, created):
        raise InvalidOperationError(
            f"the target folder {shown} was made by someone else after this session's checks "
            "(another copy started at the same time?); the session did not write into it and "
            "records nothing in it: finalize the session, then copy again with another -Name",
            target=shown,
            error_id="TargetTaken",
        )
    journal = _Journal(state, session_id, index, clock)
    try:
        outcomes = copy_files(tasks, location, journal, on_bytes=on_bytes, should_stop=should_stop)
    finally:
        journal.flush()
    written = sum(o.bytes_written for o in outcomes)
    failures = [o for o in outcomes if not o.ok]
    if failures:
        error = failures[0].error or "copy failed"
        for failure in failures:
            sessions.log(
                state, session_id, clock(), "FileFailed", f"{failure.task.rel}: {failure.error}"
            )
        _set_backup(state, session_id, index, Status="Failed", Error=error)
        return False, written
    size, metadata = _write_copy_metadata(state, session_id, index, location, clock)
    written += size
    _register(state, session_id, index, locations, metadata)
    _set_backup(state, session_id, index, Status="Copied", Error=None)
    sessions.log(
        state,
        session_id,
        clock(),
        "BackupCopied",
        f"'{backup['Name']}' copied and registered as backup {backup['CopyId']}",
    )
    return True, written


def _start_over(state: StateDir, session_id: str, index: int, clock: Clock) -> Record:
    """The folder the session made for a backup is gone (removed by hand), and with it the
    files copied into it: every file is copied again, into the folder claimed anew."""

    def change(record: Record) -> None:
        backup = record["Backups"][index]
        for entry in backup["Files"]:
            entry["Copied"], entry["Durable"] = False, 0
        backup["BytesCopied"] = 0

    record = sessions.update(state, session_id, change)
    backup: Record = record["Backups"][index]
    sessions.log(
        state,
        session_id,
        clock(),
        "FolderGone",
        f"the folder of '{backup['Name']}' is gone: every file of it is copied again",
    )
    return backup


def _write_copy_metadata(
    state: StateDir, session_id: str, index: int, location: Location, clock: Clock
) -> tuple[int, dict[str, Any]]:
    """The copy's .vbm: the source's chain under the copy's own backup id, written last.
    Returns its size and its content."""
    from cmdlets.backup.copyengine import partial_name

    record = sessions.read(state, session_id) or {}
    backup = record["Backups"][index]
    source = Path(backup["SourcePath"])
    # The source folder is someone else's to write: read its .vbm the safe way (no FIFO,
    # device, link or huge file), as every reader of backups does.
    vbm = metadata_path(source)
    data = load_metadata_json(vbm)
    meta = metadata_from_json(data, str(vbm))
    problem = _chain_change(backup, meta)
    if problem is None and len(meta.restore_points) > len(backup["Files"]):
        added = meta.restore_points[len(backup["Files"]) :]
        problem = f"restore points were added to it ({', '.join(p.file for p in added)})"
    if problem:
        # The plan was brought up to date once the job was held (see _replan): whatever
        # changed the chain since did it while the session held the job, or the chain has
        # no job of the inventory to hold.
        why = (
            f"its job '{backup['Job']}' was held disabled by this session, so something else "
            "wrote to the chain (the job enabled with -Force and run?)"
            if backup.get("Job") in record.get("Holds", [])
            else "no backup job of the inventory writes this chain, so something else did"
        )
        raise BcsError(
            f"the chain of '{backup['Name']}' changed while it was copied ({vbm}): {problem}; "
            f"{why}",
            target=backup["Name"],
            error_id="SourceChanged",
        )
    data["BackupId"] = backup["CopyId"]
    payload = (json.dumps(data, ensure_ascii=False, indent=1) + "\n").encode()
    rel = f"{backup['Folder']}/{vbm.name}"
    temp = partial_name(rel)
    _remember(state, session_id, index, [("File", temp), ("File", rel)])
    if _same_content(location, rel, payload):
        # A crash after the rename, before the backup was marked copied: it is this
        # session's own metadata (it names the copy's id), so Retry adopts it.
        return 0, data
    out = location.open_write(temp, 0)
    try:
        out.write(payload)
        out.sync()
    finally:
        out.close()
    location.rename(temp, rel)
    location.sync_dir(backup["Folder"])
    return len(payload), data


def _same_content(location: Location, rel: str, payload: bytes) -> bool:
    if location.size(rel) != len(payload):
        return False
    with location.open_read(rel) as f:
        return bool(f.read(len(payload) + 1) == payload)


def _register(
    state: StateDir, session_id: str, index: int, locations: Locations, metadata: dict[str, Any]
) -> None:
    record = sessions.read(state, session_id) or {}
    backup = record["Backups"][index]
    target = record["Target"]
    local = locations.is_local(target["Path"])
    copy = {
        "CopyId": backup["CopyId"],
        "Path": str(Path(target["Path"]) / backup["Folder"])
        if local
        else f"{target['Path'].rstrip('/')}/{backup['Folder']}",
        "Location": "Folder" if local else "Share",
        "Credential": None if local else target.get("Credential"),
        "Repository": target.get("Repository"),
        "Extent": target.get("Extent"),
        "SourceBackupId": backup["BackupId"],
        "CopySessionId": session_id,
    }
    # Listing it then needs neither the network nor a password, and a copy whose folder is
    # unreachable (an unplugged disk) is still listed, from this (see catalog).
    copy["Metadata"] = metadata
    state.update(COPIES, backup["CopyId"], lambda _old: copy)


def _set_backup(state: StateDir, session_id: str, index: int, **fields: Any) -> None:
    sessions.update(state, session_id, lambda r: r["Backups"][index].update(fields))


def run(
    state: StateDir,
    inventory: Inventory,
    session_id: str,
    clock: Clock,
    on_bytes: Callable[[int, str], None] = lambda n, f: None,
    interrupted: Callable[[], bool] = lambda: False,
    locations: Locations | None = None,
) -> Record:
    """Work on a session until every backup is copied or failed; the caller has claimed it."""
    import time

    locations = locations or local_only(inventory)

    last_poll = [0.0, False]

    def should_stop() -> bool:
        if interrupted():
            return True
        now = time.monotonic()
        if now - last_poll[0] > 0.5:
            last_poll[0] = now
            last_poll[1] = bool((sessions.read(state, session_id) or {}).get("StopRequested"))
        return bool(last_poll[1])

    def begin(record: Record) -> None:
        record["ProcessId"] = os.getpid()
        if record["State"] in ("Starting", "ActionRequired"):
            record["State"] = "Working"

    record = sessions.update(state, session_id, begin)
    written = 0
    try:
        step = "HoldFailed"
        try:
            # Again on Retry: a session whose process died before its holds were taken
            # (right after its record was written) must not copy without them.
            take_holds(state, inventory, record, clock)
            step = "TargetFailed"
            make_root(state, record, clock, locations)
        except (BcsError, OSError) as exc:
            # A job that cannot be held, or a target that cannot be reached or made (a share
            # whose server is down): every backup still to copy fails with that cause, and
            # the session waits for action.
            message = exc.message if isinstance(exc, BcsError) else _os_message(exc)
            for index, backup in enumerate(record["Backups"]):
                if backup["Status"] in ("Pending", "Copying"):
                    _set_backup(state, session_id, index, Status="Failed", Error=message)
            sessions.log(state, session_id, clock(), step, message)
            return _conclude(state, inventory, session_id, clock, written)
        for index, backup in enumerate(record["Backups"]):
            if backup["Status"] not in ("Pending", "Copying"):
                continue
            _set_backup(state, session_id, index, Status="Copying", Error=None)
            try:
                _replan(state, session_id, index, clock)
                _, n = copy_backup(
                    state, session_id, index, clock, on_bytes, should_stop, locations
                )
                written += n
            except BcsError as exc:
                _set_backup(state, session_id, index, Status="Failed", Error=exc.message)
                sessions.log(
                    state, session_id, clock(), "BackupFailed", f"'{backup['Name']}': {exc.message}"
                )
            except OSError as exc:
                message = _os_message(exc)
                _set_backup(state, session_id, index, Status="Failed", Error=message)
                sessions.log(
                    state, session_id, clock(), "BackupFailed", f"'{backup['Name']}': {message}"
                )
    finally:
        record = sessions.read(state, session_id) or record
    return _conclude(state, inventory, session_id, clock, written)


def _os_message(exc: OSError) -> str:
    return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")


def _conclude(
    state: StateDir, inventory: Inventory, session_id: str, clock: Clock, written: int
) -> Record:
    from cmdlets.backup.copyengine import STOPPED

    record = sessions.read(state, session_id) or {}
    failed = [b for b in record["Backups"] if b["Status"] == "Failed"]

    # Stop-CopySession, or Ctrl-C in the process that copies.
    stopped = bool(record.get("StopRequested")) or (
        bool(failed) and all(b["Error"] == STOPPED for b in failed)
    )

    def change(current: Record) -> None:
        current["ProcessId"] = None
        current["StopRequested"] = False
        current["BytesWritten"] = current.get("BytesWritten", 0) + written
        if current.get("Actions"):
            current["Actions"][-1]["BytesWritten"] = written
        if failed:
            current["State"] = "ActionRequired"
            first = failed[0]
            current["Reason"] = (
                STOPPED
                if stopped
                else f"{len(failed)} of {len(current['Backups'])} backups failed: "
                f"'{first['Name']}': {first['Error']}"
            )
            if current.get("Actions"):
                current["Actions"][-1]["Result"] = "Failed"
        else:
            current["State"] = "Stopped"
            current["Result"] = "Success"
            current["Reason"] = None
            current["EndTime"] = format_time(clock())
            if current.get("Actions"):
                current["Actions"][-1]["Result"] = "Success"

    record = sessions.update(state, session_id, change)
    if record["State"] == "Stopped":
        # After the session is marked finished: a crash in between leaves holds of a finished
        # session, which jobs.read_state no longer counts (see there).
        release_holds(state, inventory, record, clock)
        sessions.log(state, session_id, clock(), "SessionFinished", "every backup copied")
    else:
        sessions.log(
            state,
            session_id,
            clock(),
            "ActionRequired",
            f"{record['Reason']}; the jobs stay disabled until the session is "
            "finalized with Resume-CopySession -Action Retry|SkipFailed|Undo",
        )
    return record


# -- finalization ------------------------------------------------------------------------------


def _reach(record: Record, locations: Locations) -> Location:
    """The session's target, or an error if it cannot be reached now. A target that is
    reached but refuses a path (a link in the way) is reached: what is behind the link is
    left in place, named by Undo."""
    try:
        location = location_of(record, locations)
        with contextlib.suppress(LocationError):
            location.exists("")
    except OSError as exc:
        raise _unreachable(record["Target"]["Path"], exc) from None
    return location


def remove_created(
    state: StateDir,
    record: Record,
    which: Callable[[int], bool],
    clock: Clock,
    locations: Locations,
) -> list[str]:
    """Remove what the session made for the chosen backups: the files it recorded creating,
    newest first, then the backup's folder if it is the session's own and empty (anything
    someone else put there stays), and a claim folder an interrupted claim left. Returns what
    could not be removed. A target that cannot be reached at all is an error: nothing is
    removed, and the caller leaves the session as it is, to be finalized once it can."""
    chosen = [i for i in range(len(record["Backups"])) if which(i)]
    if not chosen:
        return []
    try:
        location = _reach(record, locations)
    except BcsError:
        if _recorded(record, set(chosen)):
            raise
        return []  # nothing recorded there: at most an empty claim folder of this session
    left: list[str] = []
    for index in chosen:
        left += _remove_backup(state, record, index, location, clock)
    return left


def _recorded(record: Record, chosen: set[int]) -> bool:
    """Whether the session recorded making anything at the target for the chosen backups."""
    return any(
        entry["Backup"] in chosen
        for entry in [*record.get("Created", []), *record.get("Claiming", [])]
    )


def _remove_backup(
    state: StateDir, record: Record, index: int, location: Location, clock: Clock
) -> list[str]:
    """remove_created for one backup. Each removal is recorded as it is done, the files before
    their folder: an Undo killed half-way and run again never removes anything from a folder
    of the same name that someone else made since (by then the names of the files that were
    in it are forgotten). Nothing is removed from a folder that is not the session's own, or
    no longer the one it made (see claims)."""
    session_id = record["Id"]
    name = record["Backups"][index]["Folder"]
    folder = Folder(location, name, index, _shown(record["Target"]["Path"], name))
    left = settle_claim(state, session_id, folder, clock)
    current = sessions.read(state, session_id) or {}
    if not folder.mine(current):
        # Its files are recorded only once it is (a record written before folders were
        # claimed may name files in a folder another session made: they are not removed).
        return left
    try:
        if folder.replaced(current):
            claims.leave(state, session_id, folder, clock)
            return left
    except (OSError, BcsError) as exc:
        left.append(f"{name} ({getattr(exc, 'strerror', None) or exc})")
        return left
    files = [e for e in current["Created"] if e["Backup"] == index and e["Kind"] == "File"]
    removed: list[dict[str, Any]] = []
    for entry in reversed(files):
        try:
            location.remove_file(entry["Rel"])
        except (OSError, BcsError) as exc:
            left.append(f"{entry['Rel']} ({getattr(exc, 'strerror', None) or exc})")
            continue
        removed.append(entry)
        sessions.log(state, session_id, clock(), "Removed", entry["Rel"])
    if removed:

        def forget(current: Record) -> None:
            current["Created"] = [e for e in current["Created"] if e not in removed]

        sessions.update(state, session_id, forget)
    try:
        if location.is_dir(name) and location.list_dir(name):
            left.append(name)
            return left
        location.remove_dir(name)
    except (OSError, BcsError) as exc:
        left.append(f"{name} ({getattr(exc, 'strerror', None) or exc})")
        return left
    sessions.update(state, session_id, folder.disown)
    sessions.log(state, session_id, clock(), "Removed", name)
    return left


def finalize(
    state: StateDir,
    inventory: Inventory,
    session_id: str,
    action: str,
    clock: Clock,
    locations: Locations | None = None,
) -> Record:
    """SkipFailed or Undo: remove what must go, release the holds, end the session."""
    locations = locations or local_only(inventory)
    record = sessions.read(state, session_id) or {}
    try:
        return _finalize(state, inventory, record, action, clock, locations)
    except BcsError:

        def failed(current: Record) -> None:
            current["ProcessId"] = None
            if current.get("Actions"):
                current["Actions"][-1]["Result"] = "Failed"

        sessions.update(state, session_id, failed)
        raise


def _finalize(
    state: StateDir,
    inventory: Inventory,
    record: Record,
    action: str,
    clock: Clock,
    locations: Locations,
) -> Record:
    session_id = record["Id"]
    backups = record["Backups"]
    kept = (
        {i for i, b in enumerate(backups) if b["Status"] == "Copied"}
        if action == "SkipFailed"
        else set()
    )
    gone = set(range(len(backups))) - kept
    if action == "Undo" or _recorded(record, gone) or (not kept and record.get("CreatedRoots")):
        _reach(record, locations)  # before the copies are unregistered
    for index in sorted(gone):
        # Every registration the session made for a backup that does not stay, copied or
        # not: a process killed between registering a copy and marking it copied leaves one.
        state.delete(COPIES, backups[index]["CopyId"])
    left = remove_created(state, record, lambda i: i in gone, clock, locations)
    if not kept:
        # Nothing of the session stays: the folders it made on the way go too.
        left += _remove_roots(state, record, clock, locations)
    status = "Skipped" if action == "SkipFailed" else "Undone"
    result = "Warning" if kept else "Failed"

    def change(current: Record) -> None:
        for i in gone:
            current["Backups"][i]["Status"] = status
        current["State"] = "Stopped"
        current["Result"] = result
        current["EndTime"] = format_time(clock())
        current["ProcessId"] = None
        notes = [
            f"left in place: {claims.replaced_text(shown)}" for shown in current.get("Replaced", [])
        ]
        if left:
            notes.append("left in place (not empty or not removable): " + ", ".join(left))
        current["Actions"][-1]["Result"] = "Warning" if notes else "Success"
        if notes:
            current["Reason"] = "; ".join(notes)
        elif not kept and action == "SkipFailed":
            current["Reason"] = "no backup was copied: nothing of the session was kept"

    record = sessions.update(state, session_id, change)
    release_holds(state, inventory, record, clock)  # after: see _conclude
    sessions.log(state, session_id, clock(), "SessionFinished", f"finalized with {action}")
    return record
