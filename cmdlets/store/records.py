"""Atomic JSON records and bounded flock locks (see the package docstring)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from cmdlets.host.errors import BcsError, BusyError

FORMAT_VERSION = 1
DEFAULT_LOCK_TIMEOUT = 30.0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600) -> None:
    """Write ``data`` as JSON so that readers see either the old or the new document."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_json(path: Path) -> Any | None:
    """The record at ``path``, or None when there is none."""
    try:
        with path.open("rb") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BcsError(f"state record {path} is damaged: {exc}", error_id="DamagedRecord") from exc


def record_key(name: str) -> str:
    """A file name for any record key (job names may hold spaces and other characters)."""
    return quote(name, safe=" -_.()") if name not in (".", "..") else quote(name, safe="")


def key_from_file(file_name: str) -> str:
    return unquote(file_name.removesuffix(".json"))


def lock_timeout(environ: dict[str, str] | None = None) -> float:
    raw = (environ if environ is not None else os.environ).get("BCS_LOCK_TIMEOUT")
    if not raw:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT
    return max(value, 0.0)


class LockTimeout(BusyError):
    """A lock was held by ``holder`` for longer than we were willing to wait."""

    error_id = "LockTimeout"

    def __init__(self, what: str, holder: str, timeout: float) -> None:
        super().__init__(
            f"{what} is locked by {holder}; gave up after {timeout:g} s "
            "(set BCS_LOCK_TIMEOUT to wait longer)",
            target=what,
        )
        self.holder = holder


class Lock:
    """An exclusive flock on ``path``; the file's content names the current holder."""

    def __init__(self, path: Path, what: str, holder: str, timeout: float) -> None:
        self.path = path
        self.what = what
        self.holder = holder
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> Lock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if time.monotonic() >= deadline:
                holder = _read_holder(fd)
                os.close(fd)
                raise LockTimeout(self.what, holder, self.timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        info = f"pid {os.getpid()} ({self.holder}) since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process"


class StateDir:
    """The shared state directory, laid out as ``<root>/<kind>/<key>.json`` plus ``locks/``."""

    def __init__(self, root: Path, *, holder: str = "bcs", timeout: float | None = None) -> None:
        self.root = root
        self.holder = holder
        self.timeout = lock_timeout() if timeout is None else timeout
        self._made: set[Path] = set()

    def directory(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts)
        if path not in self._made:
            old = os.umask(0o077)
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise BcsError(f"cannot create state directory {path}: {exc.strerror}") from exc
            finally:
                os.umask(old)
            self._made.add(path)
        return path

    def record_path(self, kind: str, key: str) -> Path:
        return self.directory(kind) / f"{record_key(key)}.json"

    def lock(self, kind: str, key: str) -> Lock:
        """The lock guarding record ``kind/key`` (use as a context manager)."""
        path = self.directory("locks", kind) / f"{record_key(key)}.lock"
        return Lock(path, f"{kind} '{key}'", self.holder, self.timeout)

    def read(self, kind: str, key: str) -> dict[str, Any] | None:
        """Read without a lock: atomic renames mean a reader never sees half a record."""
        path = self.root / kind / f"{record_key(key)}.json"
        data = read_json(path)
        return data if isinstance(data, dict) else None

    def write(self, kind: str, key: str, record: dict[str, Any]) -> None:
        """Write a record; the caller holds the record's lock."""
        write_json_atomic(self.record_path(kind, key), {"FormatVersion": FORMAT_VERSION, **record})

    def delete(self, kind: str, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.record_path(kind, key).unlink()

    def update(
        self,
        kind: str,
        key: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
    ) -> dict[str, Any] | None:
        """Read-modify-write ``kind/key`` under its lock; ``change`` returns the new record
        (None deletes it)."""
        with self.lock(kind, key):
            new = change(self.read(kind, key))
            if new is None:
                self.delete(kind, key)
            else:
                self.write(kind, key, new)
            return new

    def keys(self, kind: str) -> list[str]:
        folder = self.root / kind
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(
            key_from_file(n) for n in names if n.endswith(".json") and not n.startswith(".")
        )

    def records(self, kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
        for key in self.keys(kind):
            record = self.read(kind, key)
            if record is not None:
                yield key, record
