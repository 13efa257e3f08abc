"""Restoring a restore point: the exact tree the source had when the point was taken.

The index of the chosen point (see ``pointindex``) says what the tree was: every folder,
symlink, file, mode and mtime. Folders and symlinks are made from it; the content of each file
is read once, from the newest archive in the chain (the full, then the increments up to the
point) that holds it, and checked against its SHA-256 as it is written. The backup is read
through a location, so a copy on a shared folder restores like a local one: each archive is
read front to back, skipping only data that is not needed.

Every archive is checked before anything is written: a member with an absolute name, a ``..``
component, a hard link, a device or any name the index does not list makes the restore refuse.
The destination is written through folder descriptors only (see "Writing the tree" below):
nothing is ever created, removed, chmodded or touched through a symlink, even one that someone
puts in place of a folder while the restore runs. Symlinks themselves are restored as they
were, whatever they point to (``/etc/localtime -> /usr/share/zoneinfo/UTC`` is data, too).
Owners are not restored, and neither are setuid and setgid bits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from cmdlets.backup.chain import (
    FULL,
    BackupFormatError,
    BackupMetadata,
    RestorePointInfo,
)
from cmdlets.backup.location import Location, LocationError
from cmdlets.backup.pointindex import (
    DIR,
    FILE,
    INDEX_MEMBER,
    SYMLINK,
    Entry,
    PointIndex,
    check_path,
    read_index_at,
    reading_failed,
)
from cmdlets.host.errors import BcsError, InvalidOperationError, NotFoundError

CHUNK = 1 << 20


class RestoreError(BcsError):
    """Writing the restored tree failed part way (the destination holds a partial restore)."""

    category = "WriteError"
    error_id = "RestoreFailed"


@dataclass(frozen=True)
class _Content:
    """Where the content of one restored file lies inside an archive."""

    path: str
    entry: Entry
    offset: int


class _Archive(Protocol):
    """What restoring needs of an open restore point file (a file, or one on a share)."""

    def readinto(self, buffer: memoryview) -> int | None: ...

    def seek(self, offset: int, whence: int = 0) -> int: ...


def restore_point(
    backup_dir: Path | Location,
    destination: Path,
    point: int | None = None,
    *,
    force: bool = False,
) -> RestorePointInfo:
    """Restore a restore point of the backup in ``backup_dir`` into ``destination``.

    ``backup_dir`` is a local folder, or a backup folder reached through a location (a copy
    on a shared folder).

    ``point`` is an index into the chain (0 the oldest, negative from the newest; None the
    newest; see chain.select_point to turn a user's ``-RestorePoint`` into one). The full the
    point depends on and the increments up to it are applied.

    ``destination`` must not exist (it is created, parents too) or be an empty folder. With
    ``force=True`` it may hold files: paths of the restore point replace what is in their way
    (a file, a symlink, a whole folder), and other files are left alone. The tree gets the
    files, folders, symlinks, modes and mtimes of the point; owners are not restored, nor are
    setuid and setgid bits.

    Returns the restored point. Raises NotFoundError (no such point), BackupFormatError (a
    missing or damaged restore point file, an unsafe archive member: nothing written then),
    InvalidOperationError (destination not empty or not a folder), RestoreError (writing
    failed part way; RestoreTargetChangedError when a folder of the restore was replaced by a
    link or a file while it ran).
    """
    from cmdlets.backup.verify import open_backup

    meta, folder = open_backup(backup_dir)
    target = _point(meta, point)
    chain = _chain_up_to(meta, target)
    indexes = [read_index_at(folder, p.file) for p in chain]
    _check_chain(chain, indexes)
    wanted = _contents(chain, indexes)
    plans = [
        _check_archive(folder, info, indexes[position], wanted[position])
        for position, info in enumerate(chain)
    ]
    dest = _open_destination(destination, force)
    final = indexes[-1]
    try:
        _make_tree(dest, final, force)
        # Each phase walks again from the destination, so a folder replaced meanwhile is seen.
        dest.reset()
        for info, plan in zip(chain, plans, strict=True):
            _write_files(folder, info.file, dest, plan, force)
            dest.reset()
        _finish_folders(dest, final)
    except OSError as exc:
        raise RestoreError(
            f"restoring {target.file} to {dest.path} failed at {dest.show(dest.at)}: "
            f"{exc.strerror or exc}; the destination holds a partial restore",
            target=str(dest.path),
        ) from exc
    finally:
        dest.close()
    return target


def _point(meta: BackupMetadata, point: int | None) -> RestorePointInfo:
    points = meta.restore_points
    if not points:
        raise NotFoundError(f"backup {meta.job_name!r} has no restore points")
    if point is None:
        return points[-1]
    if not -len(points) <= point < len(points):
        raise NotFoundError(
            f"backup {meta.job_name!r} has no restore point {point} (it has {len(points)})"
        )
    return points[point]


def _chain_up_to(meta: BackupMetadata, target: RestorePointInfo) -> list[RestorePointInfo]:
    """The full the target depends on, then every increment up to the target."""
    start = target.index
    while start >= 0 and meta.restore_points[start].kind != FULL:
        start -= 1
    if start < 0:
        raise BackupFormatError(
            f"{target.file}: no full restore point (.vbk) before it in the chain",
            target=target.file,
        )
    return list(meta.restore_points[start : target.index + 1])


def _check_chain(chain: list[RestorePointInfo], indexes: list[PointIndex]) -> None:
    for position, (info, index) in enumerate(zip(chain, indexes, strict=True)):
        if index.kind != info.kind:
            raise BackupFormatError(
                f"{info.file}: the metadata lists a {info.kind}, the file holds a {index.kind}"
            )
        expected = chain[position - 1].file if position else None
        if index.base != expected:
            raise BackupFormatError(
                f"{info.file}: built on {index.base}, but the chain lists {expected} before it"
            )


def _contents(chain: list[RestorePointInfo], indexes: list[PointIndex]) -> list[dict[str, Entry]]:
    """For each archive of the chain, the files of the final tree whose content it holds."""
    wanted: list[dict[str, Entry]] = [{} for _ in chain]
    final = indexes[-1]
    for path, entry in final.entries.items():
        if entry.type != FILE:
            continue
        position = len(indexes) - 1
        found = entry
        # Not stored means "same content as in the point before": walk back to where it was.
        while not found.stored and position > 0:
            position -= 1
            earlier = indexes[position].entries.get(path)
            if earlier is None or earlier.type != FILE:
                break
            found = earlier
        if not found.stored or found.sha256 != entry.sha256 or found.size != entry.size:
            raise BackupFormatError(
                f"{chain[position].file}: no restore point of the chain holds the data of {path!r}",
            )
        wanted[position][path] = entry
    return wanted


def _check_archive(
    folder: Location, info: RestorePointInfo, index: PointIndex, wanted: dict[str, Entry]
) -> list[_Content]:
    """Check every member of one archive; return where the wanted files' data is, in archive
    order so that reading the point file stays sequential."""
    name = info.file
    found: dict[str, int] = {}
    try:
        # A cheap first check; the content is checked file by file as it is restored.
        size = folder.size(name)
        if size is None:
            raise FileNotFoundError(name)
        if size != info.size:
            raise BackupFormatError(
                f"{name}: {size} bytes, the metadata records {info.size} (truncated or damaged)"
            )
        with folder.open_read(name) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != INDEX_MEMBER:
                raise BackupFormatError(f"{name}: the first member is not {INDEX_MEMBER}")
            while (member := tar.next()) is not None:
                entry = _checked_member(name, member, index)
                if entry.type == FILE and member.name in wanted:
                    found[member.name] = member.offset_data
    except (OSError, EOFError, tarfile.TarError, LocationError) as exc:
        raise reading_failed(name, exc) from exc
    missing = [p for p in wanted if p not in found]
    if missing:
        raise BackupFormatError(f"{name}: the data of {missing[0]!r} is missing from the archive")
    return sorted((_Content(p, wanted[p], found[p]) for p in wanted), key=lambda c: c.offset)


def _checked_member(archive: str, member: tarfile.TarInfo, index: PointIndex) -> Entry:
    def refuse(reason: str) -> BackupFormatError:
        return BackupFormatError(
            f"{archive}: refusing archive member {member.name!r}: {reason}",
            target=archive,
            error_id="UnsafeArchiveMember",
        )

    try:
        check_path(member.name)
    except ValueError:
        raise refuse("absolute, not normalized or outside the destination") from None
    if member.islnk():
        raise refuse("hard links are not part of the format")
    if member.issparse() or not (member.isreg() or member.isdir() or member.issym()):
        raise refuse("not a file, folder or symlink")
    entry = index.entries.get(member.name)
    kind = FILE if member.isreg() else DIR if member.isdir() else SYMLINK
    if entry is None or entry.type != kind:
        raise refuse("the restore point's index does not list it as such")
    if kind == FILE and member.size != entry.size:
        raise refuse(f"{member.size} bytes, the index says {entry.size}")
    return entry


# Writing the tree. The destination may lie where others can write (a shared /srv/restore):
# whatever they rename or replace while the restore runs, nothing may be written, removed or
# changed outside it. So the destination is walked with folder descriptors, one component at
# a time (openat-style) and never by a full path: each folder of the restore is opened with
# O_NOFOLLOW below a descriptor of its parent, each file created with O_EXCL|O_NOFOLLOW below a
# descriptor of its folder, and modes and times are set through descriptors. A folder of the
# restore that a symbolic link or a file took the place of stops the restore; a folder moved
# away meanwhile gets the rest of its own content wherever it went, never anything else.

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Owners are not restored, so neither are the bits that run a file as its owner or group: a
# setuid file restored by root would be a setuid-root program.
_NOT_RESTORED = stat.S_ISUID | stat.S_ISGID


class RestoreTargetChangedError(RestoreError):
    """A folder the restore made was replaced by a symbolic link or a file while it ran."""

    category = "SecurityError"
    error_id = "RestoreTargetChanged"


class _Destination:
    """The destination folder, reached only through descriptors.

    ``folder(rel)`` is a descriptor of the restored folder ``rel`` (``""``: the destination).
    The descriptors of the folders leading to the last one asked for stay open, so that a walk
    in archive order opens each folder once; ``reset`` closes them, so that the next phase
    finds a folder replaced meanwhile. ``at`` is the path being worked on, for messages.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.at = ""
        self._open: list[tuple[str, int]] = []  # (name, descriptor), each inside the one before

    def show(self, rel: str) -> str:
        return os.path.join(self.path, rel) if rel else str(self.path)

    def folder(self, rel: str) -> int:
        parts = rel.split("/") if rel else []
        keep = 0
        while keep < min(len(parts), len(self._open)) and self._open[keep][0] == parts[keep]:
            keep += 1
        self._close_from(keep)
        fd = self._open[-1][1] if self._open else self.fd
        for depth in range(keep, len(parts)):
            fd = _open_folder(self, fd, parts[depth], "/".join(parts[: depth + 1]))
            self._open.append((parts[depth], fd))
        return fd

    def reset(self) -> None:
        self._close_from(0)

    def close(self) -> None:
        self.reset()
        os.close(self.fd)

    def _close_from(self, depth: int) -> None:
        for _, fd in reversed(self._open[depth:]):
            os.close(fd)
        del self._open[depth:]


def _open_folder(dest: _Destination, parent: int, name: str, rel: str) -> int:
    try:
        return os.open(name, _FOLDER_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
    raise RestoreTargetChangedError(
        f"{dest.show(rel)} is no longer the folder this restore made: a symbolic link or a file "
        f"took its place while the restore ran (can others write in {dest.path}?); nothing was "
        "written through it, and the destination holds a partial restore",
        target=dest.show(rel),
    )


def _open_destination(destination: Path, force: bool) -> _Destination:
    """Open the destination folder, creating it and its missing parents; refuse one that is
    not a folder, or not empty unless ``force``. The path to it is the user's and may go
    through links; what this call creates is entered without following any."""
    path = destination if destination.is_absolute() else Path.cwd() / destination
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = _create_destination(path)
    except NotADirectoryError:
        raise InvalidOperationError(
            f"destination {path} exists and is not a folder",
            target=str(path),
            error_id="DestinationNotAFolder",
        ) from None
    except OSError as exc:
        raise RestoreError(f"cannot open {path}: {exc.strerror}", target=str(path)) from exc
    try:
        if not force and os.listdir(fd):
            raise InvalidOperationError(
                f"destination {path} is not empty; use -Force to restore over its content",
                target=str(path),
                error_id="DestinationNotEmpty",
            )
    except BaseException:
        os.close(fd)
        raise
    return _Destination(path, fd)


def _create_destination(path: Path) -> int:
    missing: list[str] = []
    here = path
    while True:
        try:
            fd = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            break
        except FileNotFoundError:
            if here.parent == here:
                raise RestoreError(f"cannot create {path}: no folder of it exists") from None
            missing.append(here.name)
            here = here.parent
        except OSError as exc:
            raise RestoreError(f"cannot create {path}: {here}: {exc.strerror}") from exc
    try:
        for name in reversed(missing):
            with contextlib.suppress(FileExistsError):  # made meanwhile: entered the same way
                os.mkdir(name, 0o777, dir_fd=fd)
            child = os.open(name, _FOLDER_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        raise RestoreError(f"cannot create {path}: {exc.strerror}", target=str(path)) from exc
    return fd


def _make_tree(dest: _Destination, final: PointIndex, force: bool) -> None:
    """Create the folders (writable for now) and symlinks of the restored tree."""
    for path, entry in final.entries.items():
        if entry.type not in (DIR, SYMLINK):
            continue
        dest.at = path
        parent_rel, _, name = path.rpartition("/")
        parent = dest.folder(parent_rel)
        if entry.type == DIR:
            if force and _is_real_dir(parent, name):
                continue
            if force:
                _remove(parent, name)
            _make_dir(parent, name)
        else:
            assert entry.target is not None
            if force:
                _remove(parent, name)
            os.symlink(entry.target, name, dir_fd=parent)
            times = (entry.mtime_ns, entry.mtime_ns)
            os.utime(name, ns=times, dir_fd=parent, follow_symlinks=False)


def _make_dir(parent: int, name: str) -> None:
    os.mkdir(name, 0o700, dir_fd=parent)


def _write_files(
    folder: Location, name: str, dest: _Destination, contents: list[_Content], force: bool
) -> None:
    if not contents:
        return
    buffer = memoryview(bytearray(CHUNK))
    try:
        reader = folder.open_read(name)
    except LocationError as exc:
        raise BackupFormatError(f"{name}: {exc.message}") from exc
    with reader:
        # Every Location's reader is a binary file with readinto; BinaryIO does not say so.
        archive = cast(_Archive, reader)
        for content in contents:
            archive.seek(content.offset)
            _write_file(archive, name, dest, content, buffer, force)


def _write_file(
    archive: _Archive,
    archive_name: str,
    dest: _Destination,
    content: _Content,
    buffer: memoryview,
    force: bool,
) -> None:
    entry = content.entry
    dest.at = content.path
    parent_rel, _, name = content.path.rpartition("/")
    parent = dest.folder(parent_rel)
    if force:
        _remove(parent, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, 0o600, dir_fd=parent)
    try:
        digest = hashlib.sha256()
        left = entry.size
        while left:
            count = archive.readinto(buffer[: min(CHUNK, left)])
            if not count:
                raise BackupFormatError(f"{archive_name}: the data of {content.path!r} is cut off")
            digest.update(buffer[:count])
            _write_all(fd, buffer[:count])
            left -= count
        if digest.hexdigest() != entry.sha256:
            raise BackupFormatError(
                f"{archive_name}: the data of {content.path!r} does not match its SHA-256 "
                "(damaged restore point); the destination holds a partial restore"
            )
        os.fchmod(fd, entry.mode & ~_NOT_RESTORED)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _finish_folders(dest: _Destination, final: PointIndex) -> None:
    # Innermost first: setting a folder read-only must wait until everything in it is done.
    for path, entry in reversed(final.entries.items()):
        if entry.type == DIR:
            dest.at = path
            fd = dest.folder(path)
            os.fchmod(fd, entry.mode & ~_NOT_RESTORED)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


def _is_real_dir(parent: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _remove(parent: int, name: str) -> None:
    """Remove whatever has ``name`` in the folder ``parent`` (a folder with its content),
    following no symlink: rmtree with ``dir_fd`` walks by descriptors and refuses a folder
    that a link replaced while it works."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent)
    else:
        os.unlink(name, dir_fd=parent)
