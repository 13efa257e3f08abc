"""Writing restore points: a full or an incremental tar archive of a job's source folder.

The order of writes is what keeps a chain valid through a crash at any moment: the archive is
written as ``.<name>.partial``, fsynced, renamed to its final name and the folder fsynced; only
then is the ``.vbm`` replaced (atomically) to list it. Leftovers of an interrupted run are never
listed, so readers ignore them; the next run removes them.

The caller must hold the job's lock: two writers in one backup folder would remove each other's
``.partial`` files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Collection, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cmdlets.backup.chain import (
    FULL,
    INCREMENT,
    JOB_TYPES,
    METADATA_SUFFIX,
    PARTIAL_SUFFIX,
    BackupFormatError,
    BackupMetadata,
    RestorePointInfo,
    as_utc,
    parse_restore_point_file_name,
    partial_file_name,
    read_metadata_file,
    restore_point_file_name,
    unique_point_time,
    validate_name,
    write_metadata,
)
from cmdlets.backup.pointindex import (
    DIR,
    FILE,
    INDEX_MEMBER,
    SYMLINK,
    Entry,
    PointIndex,
    read_index,
)
from cmdlets.host.errors import BcsError, BusyError, NotFoundError

CHUNK = 1 << 20
BACKUP_DIR_MODE = 0o755
# Restore point files hold data of every permission the source has, private files included.
POINT_FILE_MODE = 0o600
# A file that keeps changing while it is archived makes the whole point be written again, at
# most this many times in all.
ATTEMPTS = 3
_BLOCK = tarfile.BLOCKSIZE


class SourceError(BcsError):
    """The job's source folder (or something in it) cannot be read."""

    category = "ReadError"
    error_id = "SourceUnavailable"


class _SourceChanged(Exception):
    """A file differs from what the index (written first) says about it."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def write_restore_point(
    backup_dir: Path,
    job_name: str,
    job_type: str,
    source: Path,
    *,
    full: bool = False,
    now: Callable[[], datetime] | None = None,
    on_warning: Callable[[str], None] | None = None,
    check_folder: Callable[[Path], None] | None = None,
) -> RestorePointInfo:
    """Back up ``source`` as a new restore point of the backup in ``backup_dir``.

    The first point of a chain, or any point with ``full=True``, is a full (``.vbk``); the
    others are increments (``.vib``) holding only files whose content changed since the previous
    point (found by size and mtime, then confirmed by SHA-256). ``backup_dir`` (mode 0755) and
    its metadata are created on the first run; the repository folder above it must exist.
    ``now`` is the clock (UTC); ``on_warning`` hears about skipped paths (sockets, FIFOs,
    devices). Symlinks are stored as symlinks, never followed; the backup folder itself is left
    out if it lies inside ``source``. ``check_folder`` is called once the backup folder exists,
    before anything in it is read, removed or written: it raises to refuse a folder that is not
    this job's to write (a copy lives there); a folder this call created is then removed again.

    Returns the new point as listed in the metadata. Raises SourceError when the source or a
    path in it cannot be read, or keeps changing; BackupFormatError when the existing metadata
    or the previous point cannot be read (run with ``full=True`` to start a new chain from a
    damaged last point); NotFoundError when the repository folder is missing.
    """
    validate_name(job_name)
    if job_type not in JOB_TYPES:
        raise BcsError(f"job type {job_type!r} is not one of {', '.join(JOB_TYPES)}")
    clock = now or (lambda: datetime.now(UTC))
    _check_source(source)
    created = _make_backup_dir(backup_dir)
    if check_folder is not None:
        try:
            check_folder(backup_dir)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    os.rmdir(backup_dir)
            raise
    meta = _existing_metadata(backup_dir, job_name)
    _remove_leftovers(backup_dir, job_name, meta)

    previous = _previous_index(backup_dir, meta, full)
    kind = FULL if full or previous is None else INCREMENT
    started = as_utc(clock())
    second = unique_point_time(job_name, meta, started, lambda n: _lexists(backup_dir / n))
    file_name = restore_point_file_name(job_name, second, kind)

    distrust: set[str] = set()
    for attempt in range(1, ATTEMPTS + 1):
        index = scan_source(
            source,
            previous,
            kind=kind,
            time=started,
            base=meta.restore_points[-1].file if kind == INCREMENT and meta else None,
            distrust=distrust,
            skip=_identity(backup_dir),
            on_warning=on_warning,
        )
        try:
            size, sha256 = _write_archive(backup_dir, file_name, source, index)
            break
        except _SourceChanged as changed:
            distrust.add(changed.path)
            if attempt == ATTEMPTS:
                raise SourceError(
                    f"{source / changed.path} changed while it was being backed up "
                    f"({ATTEMPTS} attempts); stop what writes to it or back up a snapshot",
                    target=str(source / changed.path),
                    error_id="SourceChanged",
                ) from None

    if meta is None:
        import uuid

        meta = BackupMetadata(str(uuid.uuid4()), job_name, job_type, started)
    point = RestorePointInfo(
        file=file_name,
        kind=kind,
        time=started,
        size=size,
        sha256=sha256,
        index=len(meta.restore_points),
    )
    write_metadata(backup_dir, meta.with_point(point))
    return point


def _check_source(source: Path) -> None:
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise SourceError(
            f"source folder {source} does not exist", target=str(source), error_id="SourceNotFound"
        ) from None
    except OSError as exc:
        raise SourceError(f"cannot read source folder {source}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SourceError(f"source {source} is not a folder", target=str(source))
    if not os.access(source, os.R_OK | os.X_OK):
        raise SourceError(
            f"cannot read source folder {source}: Permission denied", target=str(source)
        )


def _make_backup_dir(backup_dir: Path) -> bool:
    """Create the backup folder if it is missing; whether this call created it."""
    try:
        backup_dir.mkdir(mode=BACKUP_DIR_MODE)
    except FileExistsError:
        if not backup_dir.is_dir():
            raise BackupFormatError(f"{backup_dir} exists and is not a folder") from None
        return False
    except FileNotFoundError:
        raise NotFoundError(
            f"repository folder {backup_dir.parent} does not exist", target=str(backup_dir.parent)
        ) from None
    except OSError as exc:
        raise BcsError(f"cannot create backup folder {backup_dir}: {exc.strerror}") from None
    _fsync_dir(backup_dir.parent)
    return True


def _existing_metadata(backup_dir: Path, job_name: str) -> BackupMetadata | None:
    path = backup_dir / (job_name + METADATA_SUFFIX)
    if not _lexists(path):
        return None
    # A damaged .vbm is an error, never a reason to start over: that would orphan the chain.
    meta = read_metadata_file(path)
    if meta.job_name != job_name:
        raise BackupFormatError(f"{path}: belongs to job {meta.job_name!r}, not {job_name!r}")
    return meta


def _remove_leftovers(backup_dir: Path, job_name: str, meta: BackupMetadata | None) -> None:
    """Remove what an interrupted run left: ``.partial`` files, temporary metadata, and a
    restore point renamed to its final name whose metadata was never written: newer than the
    last listed point, or any point of the job's naming pattern when no point is listed yet (a
    first run killed before its ``.vbm``). Only regular files are removed. Older unlisted
    files are left alone: only this job's crashes make them, and guessing wrong would delete
    data; so is everything when another job's ``.vbm`` is in the folder."""
    names = os.listdir(backup_dir)
    listed = {p.file for p in meta.restore_points} if meta else set()
    newest = None
    if listed and meta is not None:
        parsed = parse_restore_point_file_name(job_name, meta.restore_points[-1].file)
        newest = parsed[0] if parsed else None
    own_metadata = job_name + METADATA_SUFFIX
    foreign = any(
        n.endswith(METADATA_SUFFIX) and not n.startswith(".") and n != own_metadata for n in names
    )
    metadata_temp = f".{job_name}{METADATA_SUFFIX}."
    for name in names:
        stale = name.startswith(".") and (
            name.endswith(PARTIAL_SUFFIX)
            or (name.startswith(metadata_temp) and name.endswith(".tmp"))
        )
        if not stale and not foreign and name not in listed:
            parsed = parse_restore_point_file_name(job_name, name)
            unlisted_point = parsed is not None and (
                not listed or (newest is not None and parsed[0] > newest)
            )
            stale = unlisted_point and _is_regular(backup_dir / name)
        if stale:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(backup_dir / name)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _previous_index(backup_dir: Path, meta: BackupMetadata | None, full: bool) -> PointIndex | None:
    if meta is None or not meta.restore_points:
        return None
    last = meta.restore_points[-1]
    try:
        return read_index(backup_dir / last.file)
    except BackupFormatError as exc:
        if full:
            return None  # a full needs nothing from the old chain; the index only saves reads
        raise BackupFormatError(
            f"{exc.message}; cannot build an increment on it (run a full backup)",
            target=str(backup_dir / last.file),
        ) from exc


def scan_source(
    source: Path,
    previous: PointIndex | None,
    *,
    kind: str,
    time: datetime,
    base: str | None,
    distrust: Collection[str] = (),
    skip: tuple[int, int] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> PointIndex:
    """The index of ``source`` as it is now.

    A file whose size and mtime match ``previous`` keeps its recorded SHA-256 without being
    read (unless its path is in ``distrust``); others are hashed. In an increment a path is
    ``stored`` (gets an archive member) only when it is new, changed type, or its content (file
    data, link target) differs from ``previous``; a change of mode or mtime alone lives in the
    index. ``skip`` is the (st_dev, st_ino) of a folder to leave out.
    """
    old = previous.entries if previous is not None else {}
    index = PointIndex(kind=kind, time=time, base=base)
    for rel, path, st in _walk(source, skip, on_warning):
        mode = stat.S_IMODE(st.st_mode)
        before = old.get(rel)
        if stat.S_ISDIR(st.st_mode):
            entry = Entry(DIR, mode, st.st_mtime_ns)
        elif stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except FileNotFoundError:
                continue  # removed since it was listed: it is simply not part of this point
            entry = Entry(SYMLINK, mode, st.st_mtime_ns, st.st_size, target=target)
        else:
            if (
                before is not None
                and before.type == FILE
                and before.size == st.st_size
                and before.mtime_ns == st.st_mtime_ns
                and rel not in distrust
            ):
                size, sha256 = before.size, before.sha256
            else:
                hashed = _hash_file(path)
                if hashed is None:
                    continue
                size, sha256 = hashed
            entry = Entry(FILE, mode, st.st_mtime_ns, size, sha256)
        stored = kind == FULL or not entry.same_content(before)
        index.entries[rel] = replace(entry, stored=stored)
    if kind == INCREMENT:
        index.deleted = [p for p in old if p not in index.entries]
    return index


def _walk(
    source: Path, skip: tuple[int, int] | None, on_warning: Callable[[str], None] | None
) -> Iterator[tuple[str, str, os.stat_result]]:
    """(relative path, path, lstat) of everything under ``source``, depth first, sorted by
    name, every folder before its content; never follows a symlink."""
    stack: list[Iterator[tuple[str, str]]] = [_children(str(source), "")]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
            continue
        rel, path = child
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}", target=path) from None
        if stat.S_ISDIR(st.st_mode):
            if skip is not None and (st.st_dev, st.st_ino) == skip:
                continue
            yield rel, path, st
            stack.append(_children(path, rel))
        elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            yield rel, path, st
        elif on_warning is not None:
            on_warning(f"{path}: skipped (not a file, folder or symlink)")


def _children(path: str, rel: str) -> Iterator[tuple[str, str]]:
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return  # removed since its parent was listed
    except OSError as exc:
        raise SourceError(f"cannot read folder {path}: {exc.strerror}", target=path) from None
    for name in names:
        yield (f"{rel}/{name}" if rel else name), os.path.join(path, name)


def _hash_file(path: str) -> tuple[int, str] | None:
    """(size, SHA-256) of a file's content, or None if it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}", target=path) from None
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
            size += len(chunk)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}", target=path) from None
    finally:
        os.close(fd)
    return size, digest.hexdigest()


class _HashingWriter:
    """Hashes and counts everything written, so the archive's checksum needs no second read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.digest.update(data)
        self.raw.write(data)
        self.size += len(data)


def _write_archive(
    backup_dir: Path, file_name: str, source: Path, index: PointIndex
) -> tuple[int, str]:
    """Write the restore point file durably under its final name; return (size, SHA-256)."""
    partial = backup_dir / partial_file_name(file_name)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, POINT_FILE_MODE)
    except FileExistsError:
        raise BusyError(f"{partial} exists: another process is writing this backup") from None
    try:
        with open(fd, "wb", buffering=CHUNK) as raw:
            out = _HashingWriter(raw)
            payload = index.to_bytes()
            _write_header(out, INDEX_MEMBER, tarfile.REGTYPE, 0o644, index.time, len(payload))
            out.write(payload)
            _pad(out, len(payload))
            _write_members(out, source, index)
            # End of archive: two zero blocks, then zeros up to a whole tar record.
            out.write(bytes(2 * _BLOCK))
            out.write(bytes(-out.size % tarfile.RECORDSIZE))
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(partial, backup_dir / file_name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    _fsync_dir(backup_dir)
    return out.size, out.digest.hexdigest()


def _write_members(out: _HashingWriter, source: Path, index: PointIndex) -> None:
    for rel, entry in index.entries.items():
        if not entry.stored:
            continue
        mtime = datetime.fromtimestamp(entry.mtime_ns // 1_000_000_000, UTC)
        if entry.type == FILE:
            _write_header(out, rel, tarfile.REGTYPE, entry.mode, mtime, entry.size)
            _copy_file(out, os.path.join(source, rel), rel, entry)
            _pad(out, entry.size)
        else:
            kind = tarfile.DIRTYPE if entry.type == DIR else tarfile.SYMTYPE
            _write_header(out, rel, kind, entry.mode, mtime, 0, entry.target or "")


def _write_header(
    out: _HashingWriter,
    name: str,
    kind: bytes,
    mode: int,
    mtime: datetime,
    size: int,
    linkname: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    # Whole seconds: a fractional mtime would cost a PAX header per member, and the index
    # keeps the exact nanoseconds anyway.
    info.mtime = int(mtime.timestamp())
    info.size = size
    info.linkname = linkname
    out.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))


def _pad(out: _HashingWriter, size: int) -> None:
    if size % _BLOCK:
        out.write(bytes(_BLOCK - size % _BLOCK))


def _copy_file(out: _HashingWriter, path: str, rel: str, entry: Entry) -> None:
    """Copy exactly ``entry.size`` bytes of the file, checking they hash to ``entry.sha256``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise _SourceChanged(rel) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symlink since the scan
            raise _SourceChanged(rel) from None
        raise SourceError(f"cannot read {path}: {exc.strerror}", target=path) from None
    digest = hashlib.sha256()
    left = entry.size
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _SourceChanged(rel)
        while left:
            chunk = os.read(fd, min(CHUNK, left))
            if not chunk:
                raise _SourceChanged(rel)  # shorter than when it was hashed
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}", target=path) from None
    finally:
        os.close(fd)
    if digest.hexdigest() != entry.sha256:
        raise _SourceChanged(rel)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
