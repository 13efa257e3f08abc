"""Checking a backup against its metadata: every file re-read and hashed, the chain's shape."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cmdlets.backup.chain import FULL, INCREMENT, RestorePointInfo, read_metadata
from cmdlets.backup.pointindex import read_index
from cmdlets.host.errors import BcsError


def verify_backup(backup_dir: Path) -> list[str]:
    """Every problem of the backup in ``backup_dir``; an empty list means it is sound.

    Checks that the metadata is readable, that the chain starts with a full (``.vbk``), and
    for each restore point file: that it exists, has the recorded size (a smaller one is
    truncated), hashes to the recorded SHA-256 (a flipped byte), and that its embedded index
    says the same kind and builds on the point listed before it. Each problem is one line that
    starts with the name of the file concerned. Files the metadata does not list (leftovers of
    an interrupted run) are not part of the backup and are not checked.
    """
    try:
        meta = read_metadata(backup_dir)
    except BcsError as exc:
        return [exc.message]
    problems: list[str] = []
    points = meta.restore_points
    if points and points[0].kind != FULL:
        problems.append(
            f"{points[0].file}: the chain starts with an increment; it needs a full (.vbk) first"
        )
    for point in points:
        problem = check_point_file(backup_dir / point.file, point)
        if problem is None:
            problem = _check_index(backup_dir, point, points)
        if problem is not None:
            problems.append(problem)
    return problems


def check_point_file(path: Path, point: RestorePointInfo) -> str | None:
    """The problem with one restore point file's size or checksum, or None."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{point.file}: missing"
    except OSError as exc:
        return f"{point.file}: cannot read: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{point.file}: not a regular file"
    if st.st_size != point.size:
        # No need to hash: the size alone proves the content is not what was written.
        how = "truncated" if st.st_size < point.size else "longer than written"
        return f"{point.file}: {how}: {st.st_size} bytes, the metadata records {point.size}"
    try:
        with path.open("rb") as f:
            actual = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        return f"{point.file}: cannot read: {exc.strerror}"
    if actual != point.sha256:
        return (
            f"{point.file}: checksum mismatch (content damaged): SHA-256 {actual}, "
            f"the metadata records {point.sha256}"
        )
    return None


def _check_index(
    backup_dir: Path, point: RestorePointInfo, points: tuple[RestorePointInfo, ...]
) -> str | None:
    try:
        index = read_index(backup_dir / point.file)
    except BcsError as exc:
        return exc.message
    if index.kind != point.kind:
        return f"{point.file}: the metadata lists a {point.kind}, the file holds a {index.kind}"
    if point.kind == INCREMENT:
        expected = points[point.index - 1].file if point.index else None
        if index.base != expected:
            return f"{point.file}: built on {index.base}, but the chain lists {expected} before it"
    return None
