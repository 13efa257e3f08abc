"""The index of a restore point: the complete state of the source when the point was taken.

Every restore point file is a tar archive whose first member, ``.bcs-index.json``, is this
index. It lists every path of the source (type, mode, size, mtime, SHA-256 of files, symlink
targets) and the paths deleted since the previous point. An incremental is built by comparing
the source with the previous point's index alone, and a restore rebuilds the exact tree of a
point from its index, taking file contents from the archives of the chain.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cmdlets.backup.chain import (
    FULL,
    INCREMENT,
    BackupFormatError,
    format_time,
    parse_time,
)

if TYPE_CHECKING:
    from cmdlets.backup.location import Location

INDEX_MEMBER = ".bcs-index.json"
INDEX_FORMAT_VERSION = 1
# Far above any real index (~200 bytes a path); a bound keeps a damaged header from making a
# reader allocate gigabytes.
MAX_INDEX_BYTES = 1 << 31

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
ENTRY_TYPES = (FILE, DIR, SYMLINK)


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the source. ``size`` is 0 for directories; ``sha256`` is set for files;
    ``target`` for symlinks. ``stored`` says this point's archive has a member for the path
    (with the content of a file); when False, the type and content are the same as in the
    previous point, and only mode or mtime may differ."""

    type: str
    mode: int
    mtime_ns: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None
    stored: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": self.type,
            "mode": self.mode,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }
        if self.sha256 is not None:
            data["sha256"] = self.sha256
        if self.target is not None:
            data["target"] = self.target
        if self.stored:
            data["stored"] = True
        return data

    def same_content(self, other: Entry | None) -> bool:
        """True if ``other`` has the same type and content (data or link target)."""
        return (
            other is not None
            and other.type == self.type
            and other.sha256 == self.sha256
            and other.target == self.target
        )


@dataclass
class PointIndex:
    """The ``.bcs-index.json`` of one restore point; ``base`` is the file name of the point an
    increment was built on (None for a full). ``entries`` is in archive order: every directory
    before what it contains."""

    kind: str
    time: datetime
    base: str | None
    entries: dict[str, Entry] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        data = {
            "format_version": INDEX_FORMAT_VERSION,
            "kind": self.kind,
            "time": format_time(self.time),
            "base": self.base,
            "entries": {path: entry.to_json() for path, entry in self.entries.items()},
            "deleted": self.deleted,
        }
        # ASCII escapes keep file names that are not valid UTF-8 (surrogate escapes) intact.
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_bytes(cls, raw: bytes, where: str) -> PointIndex:
        """Parse and check an index; ``where`` names the restore point file in errors."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            version = data.get("format_version")
            if version != INDEX_FORMAT_VERSION:
                raise ValueError(f"unknown format_version {version!r}")
            kind = data.get("kind")
            if kind not in (FULL, INCREMENT):
                raise ValueError(f"kind {kind!r} is not Full or Increment")
            base = data.get("base")
            if (kind == FULL) != (base is None) or not (base is None or isinstance(base, str)):
                raise ValueError(f"base {base!r} does not fit a {kind}")
            raw_entries, deleted = data.get("entries"), data.get("deleted")
            if not isinstance(raw_entries, dict) or not isinstance(deleted, list):
                raise ValueError("entries or deleted is missing")
            index = cls(kind, parse_time(str(data.get("time"))), base)
            for path, item in raw_entries.items():
                index.entries[check_path(path)] = _entry_from_json(item, path, index.entries)
            index.deleted = [check_path(p) for p in deleted]
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise BackupFormatError(f"{where}: damaged restore point index: {exc}") from exc
        return index


def check_path(path: Any) -> str:
    """``path`` if it is a relative path that stays inside the folder it is joined to."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"path {path!r} is empty or not a string")
    parts = path.split("/")
    if path.startswith("/") or "\0" in path or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"path {path!r} is absolute, not normalized or leaves its folder")
    return path


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def _entry_from_json(item: Any, path: str, earlier: dict[str, Entry]) -> Entry:
    if not isinstance(item, dict):
        raise ValueError(f"{path!r}: entry is not an object")
    parent = parent_of(path)
    # Every path must sit in a directory listed before it: that is what lets a restore create
    # real directories first and never write through a symlink.
    if parent and (parent not in earlier or earlier[parent].type != DIR):
        raise ValueError(f"{path!r}: its parent is not a directory listed before it")
    kind = item.get("type")
    if kind not in ENTRY_TYPES:
        raise ValueError(f"{path!r}: type {kind!r} is not one of {', '.join(ENTRY_TYPES)}")
    mode, size, mtime_ns = (_integer(item, key, path) for key in ("mode", "size", "mtime_ns"))
    if size < 0:
        raise ValueError(f"{path!r}: size {size} is negative")
    sha256, target = item.get("sha256"), item.get("target")
    if kind == FILE and not (isinstance(sha256, str) and len(sha256) == 64):
        raise ValueError(f"{path!r}: a file needs a sha256")
    if kind == SYMLINK and not (isinstance(target, str) and target and "\0" not in target):
        raise ValueError(f"{path!r}: a symlink needs a target")
    return Entry(
        type=kind,
        mode=mode & 0o7777,
        mtime_ns=mtime_ns,
        size=size,
        sha256=sha256 if kind == FILE else None,
        target=target if kind == SYMLINK else None,
        stored=item.get("stored") is True,
    )


def _integer(item: dict[str, Any], key: str, path: str) -> int:
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{path!r}: {key} {value!r} is not an integer")
    return value


def read_index(point_file: Path) -> PointIndex:
    """Read only the index (the first tar member) of a restore point file."""
    return _read_index(lambda: open(point_file, "rb"), point_file.name)


def read_index_at(folder: Location, name: str) -> PointIndex:
    """read_index of the restore point file ``name`` of a backup folder reached through a
    location (a copy on a shared folder)."""
    return _read_index(lambda: folder.open_read(name), name)


def _read_index(opener: Callable[[], BinaryIO], where: str) -> PointIndex:
    import tarfile

    from cmdlets.backup.location import LocationError

    try:
        with opener() as f, tarfile.open(fileobj=f, mode="r:") as tar:
            first = tar.next()
            if first is None or first.name != INDEX_MEMBER or not first.isreg():
                raise BackupFormatError(f"{where}: the first member is not {INDEX_MEMBER}")
            if first.size > MAX_INDEX_BYTES:
                raise BackupFormatError(f"{where}: index of {first.size} bytes is implausible")
            reader = tar.extractfile(first)
            assert reader is not None  # a regular member always has a reader
            raw = reader.read()
    except (OSError, EOFError, tarfile.TarError, LocationError) as exc:
        raise reading_failed(where, exc) from exc
    return PointIndex.from_bytes(raw, where)


def reading_failed(where: str, exc: BaseException) -> BackupFormatError:
    """The error that says why a restore point file could not be read."""
    import tarfile

    from cmdlets.backup.location import LocationError

    if isinstance(exc, FileNotFoundError):
        return BackupFormatError(f"{where}: restore point file is missing")
    if isinstance(exc, (tarfile.TarError, EOFError)):
        return BackupFormatError(f"{where}: not a readable restore point: {exc}")
    if isinstance(exc, LocationError):
        return BackupFormatError(f"{where}: {exc.message}")
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return BackupFormatError(f"{where}: cannot read: {detail}")
