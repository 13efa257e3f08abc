"""The backup format: folder and file names, the ``.vbm`` metadata, and finding backups.

A backup is a folder ``<repository>/<job name>/`` holding a chain of restore points
(``<job name>_<UTC yyyy-mm-ddTHHMMSS>.vbk`` for a full, ``.vib`` for an increment) and the
metadata file ``<job name>.vbm`` that lists them. ``docs/backup-format.md`` is the reference.

Only the metadata names what belongs to the chain: a restore point file is listed there after
it is complete and durable, so readers trust the ``.vbm`` and ignore everything else in the
folder (``.partial`` files, temporary files, a restore point a crash left unlisted).

This module is on the start-up path of ``Get-Backup``: it imports only light modules.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cmdlets.host.errors import BcsError, ExitStatus, NotFoundError

if TYPE_CHECKING:
    from cmdlets.backup.location import Location

FORMAT_VERSION = 1
METADATA_SUFFIX = ".vbm"
FULL_SUFFIX = ".vbk"
INCREMENT_SUFFIX = ".vib"
PARTIAL_SUFFIX = ".partial"

FULL = "Full"
INCREMENT = "Increment"
KIND_SUFFIX = {FULL: FULL_SUFFIX, INCREMENT: INCREMENT_SUFFIX}

BACKUP_JOB = "backup-job"
AGENT_POLICY = "agent-policy"
JOB_TYPES = (BACKUP_JOB, AGENT_POLICY)

_NAME_TIME_FORMAT = "%Y-%m-%dT%H%M%S"
_NAME_TIME = re.compile(r"_(\d{4}-\d{2}-\d{2}T\d{6})(\.vbk|\.vib)\Z")
# A restore point name plus "." and ".partial" must fit the usual 255-byte file name limit.
_MAX_NAME_BYTES = 200
# A .vbm lists ~250 bytes per restore point: 16 MiB is some 60,000 points. Anything larger is
# not metadata bcs wrote, and reading it would only cost memory.
MAX_METADATA_BYTES = 16 * 1024 * 1024
_TOO_LARGE = f"metadata is larger than {MAX_METADATA_BYTES // (1024 * 1024)} MiB"


class BackupFormatError(BcsError):
    """A backup's files do not follow the format: missing, damaged or unknown metadata."""

    category = "InvalidData"
    error_id = "InvalidBackupFormat"


class BackupUnreachableError(NotFoundError):
    """A backup folder cannot be reached: it is gone, or its disk is unplugged or failing."""

    error_id = "BackupUnreachable"


class InvalidNameError(BcsError):
    """A name that would become a path is not allowed (SPEC §10)."""

    exit_status = ExitStatus.USAGE
    category = "InvalidArgument"
    error_id = "InvalidName"


@dataclass(frozen=True)
class RestorePointInfo:
    """One restore point of a chain, as the metadata lists it.

    ``file`` is the file name inside the backup folder, ``kind`` is ``"Full"`` or
    ``"Increment"``, ``time`` the UTC time it was taken, ``size`` and ``sha256`` describe the
    complete file, ``index`` is its position in the chain (0 is the oldest).
    """

    file: str
    kind: str
    time: datetime
    size: int
    sha256: str
    index: int

    def to_json(self) -> dict[str, Any]:
        return {
            "File": self.file,
            "Kind": self.kind,
            "Time": format_time(self.time),
            "Size": self.size,
            "Sha256": self.sha256,
            "Index": self.index,
        }


@dataclass(frozen=True)
class BackupMetadata:
    """The content of a ``.vbm`` file: who the backup belongs to and its restore points."""

    backup_id: str
    job_name: str
    job_type: str
    creation_time: datetime
    restore_points: tuple[RestorePointInfo, ...] = ()

    @property
    def size(self) -> int:
        """Bytes taken by all restore point files."""
        return sum(p.size for p in self.restore_points)

    @property
    def last_point_time(self) -> datetime | None:
        return self.restore_points[-1].time if self.restore_points else None

    @property
    def metadata_file(self) -> str:
        return self.job_name + METADATA_SUFFIX

    def with_point(self, point: RestorePointInfo) -> BackupMetadata:
        """A copy with ``point`` appended to the chain."""
        return replace(self, restore_points=(*self.restore_points, point))

    def to_json(self) -> dict[str, Any]:
        return {
            "FormatVersion": FORMAT_VERSION,
            "BackupId": self.backup_id,
            "JobName": self.job_name,
            "JobType": self.job_type,
            "CreationTime": format_time(self.creation_time),
            "RestorePoints": [p.to_json() for p in self.restore_points],
        }


def format_time(time: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, the form every time in the format uses."""
    return as_utc(time).isoformat().replace("+00:00", "Z")


def as_utc(time: datetime) -> datetime:
    """``time`` in UTC; a naive time is taken to be UTC already (the format never writes one)."""
    if time.tzinfo is None:
        return time.replace(tzinfo=UTC)
    return time.astimezone(UTC)


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 time (``Z`` or an offset; naive means UTC) into an aware UTC time."""
    return as_utc(datetime.fromisoformat(text))


def validate_name(name: str, what: str = "job name") -> str:
    """Return ``name`` if it may become a file or folder name, else raise InvalidNameError.

    Refused: empty names, ``.``/``..``, a leading dot (hidden files are the format's temporary
    files), path separators (``/`` and ``\\``, for shared folders), control characters, and
    names too long to leave room for a restore point suffix.
    """
    problem = None
    if not name:
        problem = "is empty"
    elif name in (".", "..") or name.startswith("."):
        problem = "must not start with '.'"
    elif "/" in name or "\\" in name:
        problem = "must not contain '/' or '\\'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "must not contain control characters"
    elif len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        problem = f"is longer than {_MAX_NAME_BYTES} bytes"
    if problem:
        raise InvalidNameError(f"{what} {name!r} {problem}", target=name)
    return name


def backup_folder(repository_path: Path, job_name: str) -> Path:
    """The folder that holds the backup of ``job_name`` in a repository (or an extent)."""
    return repository_path / validate_name(job_name)


def restore_point_file_name(job_name: str, time: datetime, kind: str) -> str:
    """``<job name>_<UTC yyyy-mm-ddTHHMMSS>.vbk`` (Full) or ``.vib`` (Increment)."""
    return f"{job_name}_{as_utc(time).strftime(_NAME_TIME_FORMAT)}{KIND_SUFFIX[kind]}"


def parse_restore_point_file_name(job_name: str, file_name: str) -> tuple[datetime, str] | None:
    """The (UTC time, kind) a restore point file name encodes, or None if it is not one of
    ``job_name``'s restore point names."""
    match = _NAME_TIME.search(file_name)
    if match is None or file_name[: match.start()] != job_name:
        return None
    try:
        time = datetime.strptime(match.group(1), _NAME_TIME_FORMAT)
    except ValueError:
        return None
    kind = FULL if match.group(2) == FULL_SUFFIX else INCREMENT
    return time.replace(tzinfo=UTC), kind


def unique_point_time(
    job_name: str, meta: BackupMetadata | None, now: datetime, taken: Callable[[str], bool]
) -> datetime:
    """The second to put in a new restore point's name.

    Names must be unique and sort in chain order, so the second is bumped past the newest
    listed point (two runs within one second, or a clock set back) and past any file name that
    is ``taken`` (a restore point a crash left unlisted).
    """
    second = as_utc(now).replace(microsecond=0)
    if meta is not None:
        for point in meta.restore_points:
            parsed = parse_restore_point_file_name(meta.job_name, point.file)
            if parsed is not None and parsed[0] >= second:
                second = parsed[0] + timedelta(seconds=1)
    # Both kinds are checked: a .vbk and a .vib of the same second would read as one point.
    while taken(restore_point_file_name(job_name, second, FULL)) or taken(
        restore_point_file_name(job_name, second, INCREMENT)
    ):
        second += timedelta(seconds=1)
    return second


def partial_file_name(file_name: str) -> str:
    """The temporary name a file is written under until it is complete and durable."""
    return f".{file_name}{PARTIAL_SUFFIX}"


def metadata_path(backup_dir: Path) -> Path:
    """The ``.vbm`` file of a backup folder.

    Normally ``<folder>/<folder name>.vbm``; a copy placed under another folder name keeps the
    job's ``.vbm`` name, so a folder holding exactly one ``.vbm`` is read through that one.
    """
    usual = backup_dir / (backup_dir.name + METADATA_SUFFIX)
    # Whatever the usual name is (a symlink, a FIFO...), it is the metadata: reading it then
    # says what is wrong with it, instead of a sibling .vbm being read in its place.
    if os.path.lexists(usual):
        return usual
    try:
        found = sorted(
            entry
            for entry in backup_dir.iterdir()
            if entry.name.endswith(METADATA_SUFFIX) and not entry.name.startswith(".")
        )
    except FileNotFoundError:
        raise BackupUnreachableError(
            f"backup folder {backup_dir} does not exist", target=str(backup_dir)
        ) from None
    except NotADirectoryError:
        raise BackupFormatError(
            f"{backup_dir} is not a backup folder", target=str(backup_dir)
        ) from None
    except OSError as exc:
        # EIO, ENOTCONN, ESTALE...: the disk or the mount under the folder is failing.
        raise BackupUnreachableError(
            f"cannot list backup folder {backup_dir}: {exc.strerror}", target=str(backup_dir)
        ) from exc
    if len(found) == 1:
        return found[0]
    if not found:
        raise BackupFormatError(
            f"{usual}: metadata file is missing (not a backup folder)", target=str(usual)
        )
    names = ", ".join(p.name for p in found)
    raise BackupFormatError(
        f"{backup_dir}: several metadata files ({names}) and none named {usual.name}",
        target=str(backup_dir),
    )


def read_metadata(backup_dir: Path) -> BackupMetadata:
    """Read and check the metadata of the backup in ``backup_dir``.

    Raises NotFoundError if the folder does not exist and BackupFormatError, naming the file,
    if the metadata is missing, not JSON, of an unknown FormatVersion, or inconsistent
    (restore point file names that are not plain names, indexes out of order).
    """
    return read_metadata_file(metadata_path(backup_dir))


def read_location_metadata(folder: Location) -> BackupMetadata:
    """read_metadata for a backup folder reached through a location (a copy on a shared
    folder): ``folder`` is the backup folder itself, its description names it in errors."""
    from cmdlets.backup.location import LocationError

    where = folder.description.rstrip("/")
    usual = where.rsplit("/", 1)[-1] + METADATA_SUFFIX
    try:
        names = folder.list_dir("")
    except FileNotFoundError:
        raise BackupUnreachableError(
            f"backup folder {where} does not exist", target=where
        ) from None
    except (OSError, LocationError) as exc:
        cause = exc.message if isinstance(exc, LocationError) else exc.strerror or str(exc)
        raise BackupUnreachableError(
            f"cannot list backup folder {where}: {cause}", target=where
        ) from None
    found = sorted(n for n in names if n.endswith(METADATA_SUFFIX) and not n.startswith("."))
    if usual in found:
        name = usual
    elif len(found) == 1:
        name = found[0]
    elif not found:
        raise BackupFormatError(
            f"{where}/{usual}: metadata file is missing (not a backup folder)", target=where
        )
    else:
        raise BackupFormatError(
            f"{where}: several metadata files ({', '.join(found)}) and none named {usual}",
            target=where,
        )
    path = f"{where}/{name}"
    try:
        with folder.open_read(name) as f:
            raw = f.read(MAX_METADATA_BYTES + 1)
    except (OSError, LocationError) as exc:
        cause = exc.message if isinstance(exc, LocationError) else exc.strerror or str(exc)
        raise BackupFormatError(f"{path}: cannot read: {cause}", target=path) from None
    if len(raw) > MAX_METADATA_BYTES:
        raise BackupFormatError(f"{path}: {_TOO_LARGE}", target=path)
    return metadata_from_json(_parse_json(raw, path), path)


def read_metadata_file(path: Path) -> BackupMetadata:
    """Read and check one ``.vbm`` file (see read_metadata)."""
    return metadata_from_json(load_metadata_json(path), str(path))


def load_metadata_json(path: Path) -> Any:
    """The parsed JSON of a ``.vbm`` file, read safely: anyone who can write a backup folder
    can put a FIFO (which would block the reader forever), a device, a symlink or a huge file
    under a ``.vbm`` name. Each is refused as damaged metadata (BackupFormatError), without
    waiting, following or reading more than MAX_METADATA_BYTES."""

    def fail(problem: str) -> BackupFormatError:
        return BackupFormatError(f"{path}: {problem}", target=str(path))

    try:
        # lstat first: opening a device can have effects of its own (a tape rewinds).
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"metadata is not a regular file ({_file_type(st.st_mode)})")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise fail("metadata file is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a symlink since the lstat
            raise fail("metadata is not a regular file (symlink)") from None
        raise fail(f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"metadata is not a regular file ({_file_type(st.st_mode)})")
        if st.st_size > MAX_METADATA_BYTES:
            raise fail(_TOO_LARGE)
        with open(fd, "rb", closefd=False) as f:
            raw = f.read(MAX_METADATA_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_METADATA_BYTES:  # grew since the fstat
        raise fail(_TOO_LARGE)
    return _parse_json(raw, str(path))


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "unknown type"


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, bad UTF-8 and integers too long to convert; deep nesting
        # ([[[[...) exhausts the parser's recursion.
        raise BackupFormatError(
            f"{where}: metadata is not valid JSON: {exc}", target=where
        ) from None


def metadata_from_json(data: Any, where: str) -> BackupMetadata:
    """Build BackupMetadata from a parsed ``.vbm`` document; ``where`` names it in errors."""

    def fail(problem: str) -> BackupFormatError:
        return BackupFormatError(f"{where}: {problem}", target=where)

    if not isinstance(data, dict):
        raise fail("metadata is not a JSON object")
    version = data.get("FormatVersion")
    if version != FORMAT_VERSION:
        raise fail(f"unknown metadata FormatVersion {version!r} (this bcs reads {FORMAT_VERSION})")
    try:
        job_name = _text(data, "JobName")
        job_type = _text(data, "JobType")
        if job_type not in JOB_TYPES:
            raise ValueError(f"JobType {job_type!r} is not one of {', '.join(JOB_TYPES)}")
        points = data.get("RestorePoints")
        if not isinstance(points, list):
            raise ValueError("RestorePoints is not a list")
        meta = BackupMetadata(
            backup_id=_text(data, "BackupId"),
            job_name=job_name,
            job_type=job_type,
            creation_time=parse_time(_text(data, "CreationTime")),
            restore_points=tuple(_point_from_json(p, i) for i, p in enumerate(points)),
        )
        files = [p.file for p in meta.restore_points]
        if len(set(files)) != len(files):
            raise ValueError("a restore point file is listed twice")
    except (ValueError, TypeError) as exc:
        raise fail(str(exc)) from exc
    return meta


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} is missing or not a string")
    return value


def _point_from_json(data: Any, position: int) -> RestorePointInfo:
    if not isinstance(data, dict):
        raise ValueError(f"RestorePoints[{position}] is not an object")
    file = _text(data, "File")
    # The name is joined to the folder by every reader: it must not lead anywhere else.
    if "/" in file or "\\" in file or file.startswith(".") or "\0" in file:
        raise ValueError(f"RestorePoints[{position}].File {file!r} is not a plain file name")
    kind = _text(data, "Kind")
    if kind not in KIND_SUFFIX:
        raise ValueError(f"RestorePoints[{position}].Kind {kind!r} is not Full or Increment")
    if not file.endswith(KIND_SUFFIX[kind]):
        raise ValueError(f"{file}: a {kind} restore point must end with {KIND_SUFFIX[kind]}")
    size, index = data.get("Size"), data.get("Index")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"{file}: Size {size!r} is not a byte count")
    if index != position:
        raise ValueError(f"{file}: Index {index!r} does not match its position {position}")
    sha256 = _text(data, "Sha256").lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"{file}: Sha256 {sha256!r} is not a SHA-256 hex digest")
    return RestorePointInfo(
        file=file,
        kind=kind,
        time=parse_time(_text(data, "Time")),
        size=size,
        sha256=sha256,
        index=position,
    )


def write_metadata(backup_dir: Path, meta: BackupMetadata) -> None:
    """Replace the backup's ``<job name>.vbm`` atomically (temp file, fsync, rename, fsync of
    the folder). Call it only once every file it lists is complete and durable."""
    from cmdlets.store.records import write_json_atomic

    # The metadata holds names and checksums, no data: readable like the folder (0755), so
    # monitoring can list chains; the restore point files themselves are 0600.
    write_json_atomic(backup_dir / meta.metadata_file, meta.to_json(), mode=0o644)


def find_backups(
    root: Path, *, on_problem: Callable[[BcsError], None] | None = None
) -> list[tuple[Path, BackupMetadata]]:
    """Every backup directly under ``root`` (a repository or extent path), sorted by folder.

    A folder counts as a backup when it holds a ``.vbm`` file. A backup whose metadata cannot
    be read is left out and reported to ``on_problem`` (as are a missing or unreadable
    ``root``); without ``on_problem`` such problems are skipped silently. One bad folder never
    stops the scan.
    """
    found: list[tuple[Path, BackupMetadata]] = []
    for folder, meta in scan_backups(root, on_problem=on_problem):
        if isinstance(meta, BackupMetadata):
            found.append((folder, meta))
        elif on_problem:
            on_problem(meta)
    return found


def scan_backups(
    root: Path, *, on_problem: Callable[[BcsError], None] | None = None
) -> list[tuple[Path, BackupMetadata | BcsError]]:
    """Every backup folder directly under ``root``, sorted, with its metadata or the error
    that keeps it from being read (a damaged ``.vbm``): a damaged backup is still a backup.

    Problems that are not about one backup (``root`` missing or unreadable, a folder that
    cannot be listed) go to ``on_problem``.
    """
    found: list[tuple[Path, BackupMetadata | BcsError]] = []
    try:
        folders = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    except FileNotFoundError:
        if on_problem:
            on_problem(NotFoundError(f"repository folder {root} does not exist", target=str(root)))
        return found
    except OSError as exc:
        if on_problem:
            on_problem(BcsError(f"cannot list {root}: {exc.strerror}", target=str(root)))
        return found
    for folder in folders:
        try:
            if not folder.is_dir() or not any(
                n.endswith(METADATA_SUFFIX) and not n.startswith(".")
                for n in (e.name for e in folder.iterdir())
            ):
                continue
        except OSError as exc:
            if on_problem:
                on_problem(BackupFormatError(f"{folder}: {exc.strerror}", target=str(folder)))
            continue
        try:
            found.append((folder, read_metadata(folder)))
        except BcsError as exc:
            found.append((folder, exc))
    return found


def select_point(meta: BackupMetadata, spec: str) -> RestorePointInfo:
    """The restore point named by ``spec``:

    - ``latest`` (any case): the newest point;
    - an integer: an index into the chain, 0 the oldest, negative counting from the newest
      (``-1`` is the newest);
    - a restore point file name;
    - an ISO 8601 time (``2024-05-01``, ``2024-05-01T12:00``, ``...Z``, with an offset; a time
      without an offset is UTC, like the file names): the newest point taken at or before it.

    Raises NotFoundError when nothing matches.
    """
    points = meta.restore_points
    if not points:
        raise NotFoundError(f"backup {meta.job_name!r} has no restore points", target=spec)
    text = spec.strip()
    if text.lower() == "latest":
        return points[-1]
    if re.fullmatch(r"[+-]?\d+", text):
        index = int(text)
        if -len(points) <= index < len(points):
            return points[index]
        raise NotFoundError(
            f"backup {meta.job_name!r} has {len(points)} restore points: index {index} is not "
            f"between {-len(points)} and {len(points) - 1}",
            target=spec,
        )
    for point in points:
        if point.file == text:
            return point
    try:
        when = parse_time(text)
    except ValueError:
        raise NotFoundError(
            f"restore point {spec!r} is neither 'latest', an index, a file name of backup "
            f"{meta.job_name!r}, nor an ISO 8601 time",
            target=spec,
        ) from None
    # Highest index rather than latest Time: after a clock was set back, the chain order wins.
    candidates = [p for p in points if p.time <= when]
    if not candidates:
        raise NotFoundError(
            f"backup {meta.job_name!r} has no restore point at or before {format_time(when)}; "
            f"the oldest is {format_time(points[0].time)}",
            target=spec,
        )
    return candidates[-1]
