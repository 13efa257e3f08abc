"""Tree snapshots and edits shared by the tests that compare restored trees with sources."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root``: type, mode, mtime and content (bytes, or the SHA-256 of files
    over 1 MiB so that keeping one snapshot per restore point stays cheap); symlink targets."""
    tree: dict[str, tuple[Any, ...]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mode, mtime = stat.S_IMODE(st.st_mode), st.st_mtime_ns
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("symlink", os.readlink(path), mtime)
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", mode, mtime)
            else:
                with open(path, "rb") as f:
                    data = f.read() if st.st_size <= MiB else hashlib.file_digest(f, "sha256")
                content = data if isinstance(data, bytes) else ("sha256", data.hexdigest())
                tree[rel] = ("file", mode, mtime, content)
    return tree


_edits = iter(range(1, 1_000_000))


def edit(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write a file and give it an mtime of its own: two writes within one tick of the
    filesystem's coarse clock would otherwise share an mtime, and an edit that keeps the size
    would go unseen (as with rsync and every mtime-based backup)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        path.chmod(mode)
    stamp = 1_700_000_000_000_000_000 + next(_edits) * 1_000_003
    os.utime(path, ns=(stamp, stamp))
