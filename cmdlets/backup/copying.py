"""Copying backups to another location: the checks, the plan, the work, the finalization.

The order of events makes a crash at any moment recoverable:

1. every check passes before anything is touched;
2. the session record is created and the jobs are held (disabled) under their locks;
3. before the session creates a folder or a file at the target, it records that it will
   (so that Undo can remove exactly what the session created, and nothing else);
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
from typing import Any

from cmdlets.backup import jobs, sessions
from cmdlets.backup.catalog import COPIES, Backup
from cmdlets.backup.chain import (
    METADATA_SUFFIX,
    format_time,
    metadata_from_json,
    validate_name,
)
from cmdlets.backup.inventory import Inventory, Repository
from cmdlets.backup.location import Location, Locations
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
    held = sorted(
        {b.meta.job_name for b in backups if b.origin == "Job" and inventory.job(b.meta.job_name)}
    )
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
        "ProcessId": None,
        "CreationTime": format_time(now),
        "EndTime": None,
        "Actions": [],
        "StopRequested": False,
    }


# -- holds ------------------------------------------------------------------------------------


def take_holds(state: StateDir, inventory: Inventory, record: Record, clock: Clock) -> None:
    """Disable each source job on behalf of the session. A job that is writing a restore point
    right now is waited for (bounded by the lock timeout)."""
    from cmdlets.backup.runs import RUNS

    taken: list[str] = []
    try:
        for name in record["Holds"]:
            job = inventory.job(name)
            if job is None:
                continue
            with state.lock(RUNS, job.name):
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


def location_of(record: Record, locations: Locations) -> Location:
    target = record["Target"]
    return locations.open(target["Path"], target.get("Credential"))


def make_root(state: StateDir, record: Record, clock: Clock, locations: Locations) -> None:
    """Create the target folder (and missing parents) for -Path, recording each one."""
    target = record["Target"]
    if not locations.is_local(target["Path"]):
        _make_remote_root(state, record, clock, locations)
        return
    root = Path(target["Path"])
    missing: list[Path] = []
    probe = root
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        sessions.update(state, record["Id"], _appender("CreatedRoots", str(folder)))
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o755)
        sessions.log(state, record["Id"], clock(), "FolderCreated", str(folder))


def _make_remote_root(state: StateDir, record: Record, clock: Clock, locations: Locations) -> None:
    """The same through the location of the topmost folder (the share): each missing folder
    on the way is recorded, then created."""
    target = record["Target"]
    top_path, top, rel = locations.open_top(target["Path"], target.get("Credential"))
    parts = rel.split("/") if rel else []
    for count in range(1, len(parts) + 1):
        prefix = "/".join(parts[:count])
        if top.is_dir(prefix):
            continue
        shown = f"{top_path.rstrip('/')}/{prefix}"
        sessions.update(state, record["Id"], _appender("CreatedRoots", shown))
        top.make_dir(prefix)
        sessions.log(state, record["Id"], clock(), "FolderCreated", shown)


def _remove_root(root: str, record: Record, locations: Locations) -> None:
    """Remove one folder make_root created, if it is empty (OSError otherwise)."""
    if locations.is_local(root):
        os.rmdir(root)
        return
    _, top, rel = locations.open_top(root, record["Target"].get("Credential"))
    if top.list_dir(rel):
        raise OSError(39, "not empty", root)
    top.remove_dir(rel)


def _appender(key: str, value: Any) -> Callable[[Record], None]:
    def change(record: Record) -> None:
        record[key].append(value)

    return change


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
    """Record, before creating them, the folders and files the session is about to make
    (one durable write for the whole list: every fsync counts on a chain of many files)."""

    def change(record: Record) -> None:
        for kind, rel in paths:
            entry = {"Backup": index, "Kind": kind, "Rel": rel}
            if entry not in record["Created"]:
                record["Created"].append(entry)

    sessions.update(state, session_id, change)


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
    make_folder = not location.is_dir(folder)
    created: list[tuple[str, str]] = [("Dir", folder)] if make_folder else []
    tasks = []
    for entry in backup["Files"]:
        if entry["Copied"]:
            continue
        rel = f"{folder}/{entry['File']}"
        created += [("File", partial_name(rel)), ("File", rel)]
        tasks.append(
            FileTask(source / entry["File"], rel, entry["Size"], entry["Sha256"], entry["Durable"])
        )
    _remember(state, session_id, index, created)
    if make_folder and not location.make_dir(folder):
        foreign = {"Backup": index, "Kind": "Dir", "Rel": folder}
        sessions.update(state, session_id, lambda r: r["Created"].remove(foreign))
        raise InvalidOperationError(
            f"the target folder {folder} appeared while the session started; it is not ours "
            "to write into",
            target=folder,
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


def _write_copy_metadata(
    state: StateDir, session_id: str, index: int, location: Location, clock: Clock
) -> tuple[int, dict[str, Any]]:
    """The copy's .vbm: the source's chain under the copy's own backup id, written last.
    Returns its size and its content."""
    from cmdlets.backup.copyengine import partial_name

    record = sessions.read(state, session_id) or {}
    backup = record["Backups"][index]
    source = Path(backup["SourcePath"])
    vbm = next(
        p
        for p in source.iterdir()
        if p.name.endswith(METADATA_SUFFIX) and not p.name.startswith(".")
    )
    data = json.loads(vbm.read_bytes())
    meta = metadata_from_json(data, str(vbm))
    listed = [p.file for p in meta.restore_points]
    copied = [f["File"] for f in backup["Files"]]
    if listed != copied:
        raise BcsError(
            f"the chain of '{backup['Name']}' changed while it was copied ({vbm}); its job "
            "was not held disabled",
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
    if not local:
        # Listing it then needs neither the network nor a password (see catalog).
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
        try:
            make_root(state, record, clock, locations)
        except (BcsError, OSError) as exc:
            # The target cannot be reached or made (a share whose server is down): every
            # backup still to copy fails with that cause, and the session waits for action.
            message = exc.message if isinstance(exc, BcsError) else _os_message(exc)
            for index, backup in enumerate(record["Backups"]):
                if backup["Status"] in ("Pending", "Copying"):
                    _set_backup(state, session_id, index, Status="Failed", Error=message)
            sessions.log(state, session_id, clock(), "TargetFailed", message)
            return _conclude(state, inventory, session_id, clock, written)
        for index, backup in enumerate(record["Backups"]):
            if backup["Status"] not in ("Pending", "Copying"):
                continue
            _set_backup(state, session_id, index, Status="Copying", Error=None)
            try:
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
    """The session's target, or an error if it cannot be reached now."""
    try:
        location = location_of(record, locations)
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
    """Remove what the session recorded creating for the chosen backups, newest first; a
    folder is removed only if empty (anything someone else put there stays). Returns what
    could not be removed. A target that cannot be reached at all is an error: nothing is
    removed, and the caller leaves the session as it is, to be finalized once it can."""
    left: list[str] = []
    if not any(which(entry["Backup"]) for entry in record.get("Created", [])):
        return left
    location = _reach(record, locations)
    for entry in reversed(record.get("Created", [])):
        if not which(entry["Backup"]):
            continue
        try:
            if entry["Kind"] == "File":
                location.remove_file(entry["Rel"])
            else:
                if location.is_dir(entry["Rel"]) and location.list_dir(entry["Rel"]):
                    left.append(entry["Rel"])
                    continue
                location.remove_dir(entry["Rel"])
        except (OSError, BcsError) as exc:
            left.append(f"{entry['Rel']} ({getattr(exc, 'strerror', None) or exc})")
            continue
        sessions.log(state, record["Id"], clock(), "Removed", entry["Rel"])
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
    if action == "SkipFailed":
        failed = {i for i, b in enumerate(record["Backups"]) if b["Status"] != "Copied"}
        left = remove_created(state, record, lambda i: i in failed, clock, locations)
        status, result = "Skipped", "Warning"
    else:
        failed = set(range(len(record["Backups"])))
        _reach(record, locations)  # before the copies are unregistered
        for backup in record["Backups"]:
            if backup["Status"] == "Copied":
                state.delete(COPIES, backup["CopyId"])
        left = remove_created(state, record, lambda i: True, clock, locations)
        for root in reversed(record.get("CreatedRoots", [])):
            try:
                _remove_root(root, record, locations)
            except (OSError, BcsError):
                left.append(root)
                continue
            sessions.log(state, record["Id"], clock(), "Removed", root)
        status, result = "Undone", "Failed"

    def change(current: Record) -> None:
        for i in failed:
            current["Backups"][i]["Status"] = status
        current["State"] = "Stopped"
        current["Result"] = result
        current["EndTime"] = format_time(clock())
        current["ProcessId"] = None
        current["Actions"][-1]["Result"] = "Success" if not left else "Warning"
        if left:
            current["Reason"] = "left in place (not empty or not removable): " + ", ".join(left)

    record = sessions.update(state, session_id, change)
    release_holds(state, inventory, record, clock)  # after: see _conclude
    sessions.log(state, session_id, clock(), "SessionFinished", f"finalized with {action}")
    return record
