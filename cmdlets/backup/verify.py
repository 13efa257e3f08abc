"""Checking a backup against its metadata: every file re-read and hashed, the chain's shape."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import cast

from cmdlets.backup.chain import (
    FULL,
    INCREMENT,
    BackupMetadata,
    RestorePointInfo,
    read_location_metadata,
    read_metadata,
)
from cmdlets.backup.location import LocalLocation, Location, LocationError
from cmdlets.backup.pointindex import read_index_at
from cmdlets.host.errors import BcsError


def verify_backup(backup: Path | Location) -> list[str]:
    """Every problem of the backup in ``backup`` (a local folder, or a backup folder reached
    through a location: a copy on a shared folder); an empty list means it is sound.

    Checks that the metadata is readable, that the chain starts with a full (``.vbk``), and
    for each restore point file: that it exists, has the recorded size (a smaller one is
    truncated), hashes to the recorded SHA-256 (a flipped byte), and that its embedded index
    says the same kind and builds on the point listed before it. Each problem is one line that
    starts with the name of the file concerned. Files the metadata does not list (leftovers of
    an interrupted run) are not part of the backup and are not checked.
    """
    try:
        meta, folder = open_backup(backup)
    except BcsError as exc:
        return [exc.message]
    problems: list[str] = []
    points = meta.restore_points
    if points and points[0].kind != FULL:
        problems.append(
            f"{points[0].file}: the chain starts with an increment; it needs a full (.vbk) first"
        )
    for point in points:
        problem = check_point_file(folder, point)
        if problem is None:
            problem = _check_index(folder, point, points)
        if problem is not None:
            problems.append(problem)
    return problems


def open_backup(backup: Path | Location) -> tuple[BackupMetadata, Location]:
    """The metadata of a backup folder and the folder as a location to read its files from."""
    if isinstance(backup, Path):
        # A local folder's metadata is read by path: its errors name the folder as it is.
        return read_metadata(backup), LocalLocation(backup)
    return read_location_metadata(backup), backup


def check_point_file(folder: Location, point: RestorePointInfo) -> str | None:
    """The problem with one restore point file's size or checksum, or None."""
    try:
        size = folder.size(point.file)
    except LocationError:
        return f"{point.file}: not a regular file"
    except OSError as exc:
        return f"{point.file}: cannot read: {exc.strerror or exc}"
    if size is None:
        return f"{point.file}: missing"
    if size != point.size:
        # No need to hash: the size alone proves the content is not what was written.
        how = "truncated" if size < point.size else "longer than written"
        return f"{point.file}: {how}: {size} bytes, the metadata records {point.size}"
    try:
        with folder.open_read(point.file) as f:
            # Every Location's reader has readinto, which BinaryIO does not promise.
            actual = hashlib.file_digest(cast(io.BufferedReader, f), "sha256").hexdigest()
    except LocationError:
        return f"{point.file}: not a regular file"
    except OSError as exc:
        return f"{point.file}: cannot read: {exc.strerror or exc}"
    if actual != point.sha256:
        return (
            f"{point.file}: checksum mismatch (content damaged): SHA-256 {actual}, "
            f"the metadata records {point.sha256}"
        )
    return None


def _check_index(
    folder: Location, point: RestorePointInfo, points: tuple[RestorePointInfo, ...]
) -> str | None:
    try:
        index = read_index_at(folder, point.file)
    except BcsError as exc:
        return exc.message
    if index.kind != point.kind:
        return f"{point.file}: the metadata lists a {point.kind}, the file holds a {index.kind}"
    if point.kind == INCREMENT:
        expected = points[point.index - 1].file if point.index else None
        if index.base != expected:
            return f"{point.file}: built on {index.base}, but the chain lists {expected} before it"
    return None
