"""Target locations: where a copy writes, reached through one small byte-oriented interface.

The copy engine sees a target only as a :class:`Location`: relative POSIX paths (``rel``) below
its root, files written sequentially and made durable, atomic no-replace renames. A local
folder is :class:`LocalLocation`. Any other kind of path (a shared folder) is reached through a
:class:`LocationProvider` that a plugin returns from its ``bcs_locations()`` hook; the core
asks :class:`Locations` for a path and never knows which protocol answers (the ``bcs-smb``
plugin answers for ``//server/share`` and ``smb://``).

A path that carries a user name or password (``//user:pass@nas01/share``) is refused by
:class:`Locations` before any provider sees it (:func:`refuse_user_info`), with or without the
plugin, and the message never repeats it.

Safety: every ``rel`` is checked by :func:`split_rel` before it reaches the file
system, and :class:`LocalLocation` walks each path one component at a time below a descriptor
of its root, opening every component with ``O_NOFOLLOW``. A symbolic link anywhere below the
root is refused with :class:`TargetEscapeError`, so nothing is ever read or written outside the
target folder, whatever someone planted inside it. The root itself is configuration and may be
reached through links.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from cmdlets.backup.inventory import Credential, is_share_path
from cmdlets.host.errors import BcsError, ExitStatus, UsageError

DIR_MODE = 0o755
FILE_MODE = 0o644


class LocationError(BcsError):
    """A target location refused an operation: an invalid path, or something in the way."""

    category = "WriteError"
    error_id = "TargetLocationError"


class TargetEscapeError(LocationError):
    """A path below the target root goes through a symbolic link; bcs never follows those."""

    category = "SecurityError"
    error_id = "TargetEscape"


class TargetFile(Protocol):
    """A file open for writing in a location, written sequentially from its open offset."""

    def write(self, data: bytes | memoryview) -> None:
        """Write all of ``data`` (short writes are retried inside)."""

    def sync(self) -> None:
        """Make everything written so far durable (fsync).

        The copy engine calls this from a helper thread while another thread keeps calling
        ``write``, so that copying never waits for the disk; an implementation whose
        transport cannot do both at once must serialize them itself.
        """

    def close(self) -> None:
        """Release the file; calling it twice is harmless."""


class Location(Protocol):
    """A folder that copies are written to. Errors of the underlying storage are ``OSError``
    (with its errno: ENOSPC, EIO, EACCES, ...); refusals of bcs itself are LocationError."""

    description: str
    """For messages, e.g. ``/srv/copies`` or ``//nas01/backups``; never holds a password."""

    def exists(self, rel: str) -> bool:
        """Whether anything (a file, a folder, a link) has the name ``rel``."""

    def is_dir(self, rel: str) -> bool:
        """Whether ``rel`` is a folder (a link to a folder is not)."""

    def make_dir(self, rel: str) -> bool:
        """Create the one folder ``rel`` (its parent must exist): True if this call created it,
        False if it existed already, so the caller records for Undo only what it created."""

    def open_write(self, rel: str, offset: int, mode: int = FILE_MODE) -> TargetFile:
        """Open ``rel`` for writing at ``offset``: offset 0 starts a new file, created with
        permission bits ``mode`` (less the umask); a larger offset resumes an existing file,
        whose bytes after ``offset`` are dropped. The parent folder must exist."""

    def open_read(self, rel: str) -> BinaryIO:
        """Open the regular file ``rel`` for reading (to re-hash a partial file)."""

    def size(self, rel: str) -> int | None:
        """The size of the regular file ``rel``, or None if there is nothing by that name."""

    def rename(self, rel_from: str, rel_to: str) -> None:
        """Rename a file or an empty folder atomically; never replaces an existing ``rel_to``
        (FileExistsError)."""

    def sync_dir(self, rel: str) -> None:
        """Make the creations and renames in folder ``rel`` durable (``""`` is the root)."""

    def remove_file(self, rel: str) -> None:
        """Remove the file ``rel``; nothing by that name is fine."""

    def remove_dir(self, rel: str) -> None:
        """Remove the empty folder ``rel``; nothing by that name is fine."""

    def free_bytes(self) -> int | None:
        """Bytes available to this user at the location, or None if it cannot tell."""

    def list_dir(self, rel: str) -> list[str]:
        """The names in folder ``rel`` (``""`` is the root), sorted."""

    def identity(self, rel: str) -> str | None:
        """What tells the folder ``rel`` from any other folder that has, or had, its name (a
        folder removed and made again), or None if there is no folder by that name. A copy
        session records it when it makes a folder, and touches the folder later only while it
        is still that one (see cmdlets/backup/claims.py). It never changes while the folder lives,
        including when it is renamed."""


class CredentialError(BcsError):
    """A credential's password cannot be read, or is kept where others could read it."""

    exit_status = ExitStatus.USAGE
    category = "SecurityError"
    error_id = "CredentialUnusable"


@dataclasses.dataclass(frozen=True)
class Login:
    """A credential of the inventory with its password read, for a provider to connect with.

    The password never leaves this object on its own: it is left out of ``repr`` and
    :meth:`mask` takes it out of any text (an error of the underlying library) before that
    text is shown or written anywhere.
    """

    name: str
    username: str
    password: str = dataclasses.field(repr=False)

    def mask(self, text: str) -> str:
        return text.replace(self.password, "********") if self.password else text


def read_login(credential: Credential, environ: Mapping[str, str]) -> Login:
    """Read the password of ``credential`` from its environment variable or password file.

    A password file must be a regular file that only its owner can read or write (mode 0600
    or stricter), like an ssh key: a looser one is refused, as it may have been read by others.
    """
    where = f"credential '{credential.name}'"
    if credential.password_env:
        password = environ.get(credential.password_env)
        if not password:
            raise CredentialError(
                f"{where}: the environment variable {credential.password_env} (its passwordEnv) "
                "is not set",
                target=credential.name,
            )
        return Login(credential.name, credential.username, password)
    file = credential.password_file
    if not file:
        raise CredentialError(f"{where} has neither passwordEnv nor passwordFile")
    try:
        fd = os.open(file, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise CredentialError(
            f"{where}: cannot read its passwordFile {file}: {exc.strerror}", target=credential.name
        ) from None
    with open(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CredentialError(
                f"{where}: its passwordFile {file} is not a regular file", target=credential.name
            )
        if st.st_mode & 0o077:
            raise CredentialError(
                f"{where}: its passwordFile {file} has mode {stat.S_IMODE(st.st_mode):04o}, "
                f"readable or writable by others; it must be 0600 or stricter (chmod 600 {file})",
                target=credential.name,
                error_id="CredentialFileTooOpen",
            )
        raw = f.read(64 * 1024)
    password = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
    if not password:
        raise CredentialError(f"{where}: its passwordFile {file} is empty", target=credential.name)
    return Login(credential.name, credential.username, password)


class PasswordInPathError(UsageError):
    """A path holds a user name or password: refused without repeating it."""

    category = "SecurityError"
    error_id = "PasswordInPath"


# A URL of any scheme (smb://, cifs://, ...): what stands before an '@' in it is user info.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def refuse_user_info(path: str) -> None:
    r"""Refuse a shared-folder path or URL that carries a user name or password.

    ``//user:pass@nas01/share``, ``smb://user:pass@nas01/share`` and ``\user:pass@nas01\share``
    all hold a password, and a password may itself hold ``/`` or ``@``: no position of an
    ``@`` tells a folder name from the end of a password, so any ``@`` in such a path is
    refused, and the message shows only what follows the last one. Passwords belong to the
    inventory's credentials, where they are never shown. A Windows ``\server\share`` path is
    refused too: bcs writes shared folders as ``//server/share``.
    """
    remote = path.startswith(("//", "\\\\")) or _URL.match(path) is not None
    if remote and "@" in path:
        shown = "<hidden>@" + path.rpartition("@")[2]
        raise PasswordInPathError(
            f"the path {shown!r} holds a user name or password before its '@': bcs never takes "
            "a password in a path, where process lists, shell history and messages would show "
            "it; give the shared folder as //server/share/folder and name a credential of the "
            "inventory (-Credential, or a shared-folder repository's credential)",
            target=shown,
        )
    if path.startswith("\\\\"):
        raise UsageError(
            f"{path!r} is a Windows UNC path: write a shared folder as //server/share/folder",
            target=path,
            error_id="InvalidSharePath",
        )


class LocationProvider(Protocol):
    """What a plugin's ``bcs_locations()`` hook returns: a way to reach one kind of path."""

    name: str
    """Short and stable, for messages (``smb``)."""

    def handles(self, path: str) -> bool:
        """Whether ``path`` is this provider's kind of path (by its form alone, no I/O)."""

    def open(self, path: str, login: Login | None) -> Location:
        """The folder ``path`` as a Location; the folder itself need not exist yet.

        Reaching the place may fail with OSError (refused, unreachable, wrong password: the
        message says which and never holds the password); a path of the right kind that is
        malformed fails with LocationError.
        """

    def split(self, path: str) -> tuple[str, str]:
        """``path`` as the topmost folder this provider can open (a share) and the location
        path of ``path`` below it (``""`` for the top itself), so that the folders leading to
        a new target can be created, and removed by Undo, one by one."""


class Locations:
    """Reaches a path: a local folder directly, any other path through the provider that
    handles it. Credentials are named; their passwords are read when a location is opened."""

    def __init__(
        self,
        providers: Sequence[LocationProvider],
        credentials: Sequence[Credential],
        environ: Mapping[str, str],
    ) -> None:
        self.providers = list(providers)
        self._credentials = {c.name.casefold(): c for c in credentials}
        self._environ = environ
        self._opened: dict[tuple[str, str | None], Location] = {}

    def provider(self, path: str) -> LocationProvider | None:
        # Every way in (is_local, require, open, open_top) comes here first, before any
        # provider sees the path, so that no plugin is needed to refuse a password in a path.
        refuse_user_info(path)
        return next((p for p in self.providers if p.handles(path)), None)

    def is_local(self, path: str) -> bool:
        return self.provider(path) is None and not is_share_path(path)

    def require(self, path: str, what: str | None = None) -> LocationProvider:
        """The provider of a path that is not local, or the error that says what is missing."""
        provider = self.provider(path)
        if provider is None:
            raise UsageError(
                f"{what or repr(path)} is a shared folder: reaching it needs the bcs-smb plugin "
                "(plugins/bcs-smb; if it is installed, see Get-Plugin and BCS_LOAD_PLUGINS)",
                target=path,
                error_id="PluginRequired",
            )
        return provider

    def credential(self, name: str) -> Credential:
        found = self._credentials.get(name.casefold())
        if found is None:
            known = ", ".join(c.name for c in self._credentials.values()) or "none"
            raise UsageError(
                f"no credential named '{name}' in the inventory (credentials: {known})",
                target=name,
                error_id="CredentialNotFound",
            )
        return found

    def login(self, name: str | None) -> Login | None:
        return None if name is None else read_login(self.credential(name), self._environ)

    def open(self, path: str, credential: str | None = None) -> Location:
        """The folder ``path`` as a Location (opened once per path and credential)."""
        key = (path, credential.casefold() if credential else None)
        if key not in self._opened:
            if self.is_local(path):
                self._opened[key] = LocalLocation(Path(path))
            else:
                provider = self.require(path)
                self._opened[key] = provider.open(path, self.login(credential))
        return self._opened[key]

    def open_top(self, path: str, credential: str | None = None) -> tuple[str, Location, str]:
        """The topmost folder the provider of ``path`` reaches (its path and location), and
        the location path of ``path`` below it."""
        top, rel = self.require(path).split(path)
        return top, self.open(top, credential), rel


def split_rel(rel: str, *, allow_root: bool = False) -> list[str]:
    """The components of a location path, or LocationError if it may lead anywhere else.

    A location path is relative and POSIX-style: no leading ``/``, no empty, ``.`` or ``..``
    component, no NUL, and no ``\\`` (a separator on shared folders). ``""`` names the root
    and is accepted only where ``allow_root`` says so.
    """
    if not isinstance(rel, str):
        raise LocationError(f"location path {rel!r} is not a string", target=rel)
    if rel == "" and allow_root:
        return []
    problem = None
    if rel == "":
        problem = "is empty"
    elif rel.startswith("/"):
        problem = "is absolute"
    elif "\0" in rel:
        problem = "contains a NUL character"
    elif "\\" in rel:
        problem = "contains '\\'"
    parts = rel.split("/")
    if problem is None:
        if "" in parts:
            problem = "has an empty component"
        elif ".." in parts:
            problem = "has a '..' component"
        elif "." in parts:
            problem = "has a '.' component"
    if problem:
        raise LocationError(
            f"location path {rel!r} {problem}: it must stay inside the target folder",
            target=rel,
            error_id="InvalidTargetPath",
        )
    return parts


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO someone planted must fail or return at once, never hang.
_EXISTING_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_RENAME_NOREPLACE = 1


class LocalFile:
    """A TargetFile on a local descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def sync(self) -> None:
        # fdatasync is enough: it also flushes the size, which reading the data back needs.
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class LocalLocation:
    """A local folder as a Location; see the module docstring for how links are refused."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = str(root)

    def __repr__(self) -> str:
        return f"LocalLocation({self.description!r})"

    def exists(self, rel: str) -> bool:
        return self._lstat(rel) is not None

    def is_dir(self, rel: str) -> bool:
        st = self._lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def make_dir(self, rel: str) -> bool:
        with self._parent(rel) as (fd, name):
            try:
                os.mkdir(name, DIR_MODE, dir_fd=fd)
                return True
            except FileExistsError:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    return False
                self._refuse_link(st, rel)
                raise LocationError(
                    f"{self._show(rel)} exists and is not a folder", target=self._show(rel)
                ) from None

    def open_write(self, rel: str, offset: int, mode: int = FILE_MODE) -> LocalFile:
        if offset < 0:
            raise ValueError(f"offset {offset} is negative")
        with self._parent(rel) as (dir_fd, name):
            if offset == 0:
                # A fresh file rather than truncating what is there: whatever had the name (a
                # link, or a hard link to a file elsewhere) loses only its name here.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                return LocalFile(os.open(name, flags, mode, dir_fd=dir_fd))
            fd = self._open_existing(dir_fd, name, os.O_WRONLY, rel)
            try:
                st = os.fstat(fd)
                if st.st_nlink != 1:
                    # Resuming would write into every other name of the file too.
                    raise LocationError(
                        f"{self._show(rel)} has {st.st_nlink} hard links; refusing to write "
                        "through it",
                        target=self._show(rel),
                    )
                if st.st_size < offset:
                    raise LocationError(
                        f"{self._show(rel)} has {st.st_size} bytes, fewer than the {offset} to "
                        "resume after",
                        target=self._show(rel),
                    )
                os.ftruncate(fd, offset)
                os.lseek(fd, offset, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
            return LocalFile(fd)

    def open_read(self, rel: str) -> BinaryIO:
        with self._parent(rel) as (dir_fd, name):
            fd = self._open_existing(dir_fd, name, os.O_RDONLY, rel)
        return open(fd, "rb", buffering=0)

    def size(self, rel: str) -> int | None:
        st = self._lstat(rel)
        if st is None:
            return None
        self._refuse_link(st, rel)
        if not stat.S_ISREG(st.st_mode):
            raise LocationError(f"{self._show(rel)} is not a regular file", target=self._show(rel))
        return st.st_size

    def rename(self, rel_from: str, rel_to: str) -> None:
        with (
            self._parent(rel_from) as (from_fd, from_name),
            self._parent(rel_to) as (
                to_fd,
                to_name,
            ),
        ):
            renameat2 = _renameat2()
            if renameat2 is not None:
                if renameat2(from_fd, os.fsencode(from_name), to_fd, os.fsencode(to_name)) == 0:
                    return
                code = _ctypes_errno()
                # EINVAL/ENOSYS: the file system or kernel lacks RENAME_NOREPLACE.
                if code not in (errno.EINVAL, errno.ENOSYS):
                    raise OSError(code, os.strerror(code), self._show(rel_to))
            if stat.S_ISDIR(os.stat(from_name, dir_fd=from_fd, follow_symlinks=False).st_mode):
                # A folder has no second name to give: an empty one (a copy session's claim,
                # see copying) is made anew by mkdir, which never replaces either.
                os.mkdir(to_name, DIR_MODE, dir_fd=to_fd)
                os.rmdir(from_name, dir_fd=from_fd)
                return
            # link() never replaces either; for a moment the file has both names, which the
            # hard-link check of open_write keeps harmless.
            os.link(from_name, to_name, src_dir_fd=from_fd, dst_dir_fd=to_fd, follow_symlinks=False)
            os.unlink(from_name, dir_fd=from_fd)

    def sync_dir(self, rel: str) -> None:
        with self._dir(rel) as fd:
            os.fsync(fd)

    def remove_file(self, rel: str) -> None:
        try:
            with self._parent(rel) as (fd, name):
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass

    def remove_dir(self, rel: str) -> None:
        try:
            with self._parent(rel) as (fd, name):
                os.rmdir(name, dir_fd=fd)
        except FileNotFoundError:
            pass

    def free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def list_dir(self, rel: str) -> list[str]:
        with self._dir(rel) as fd:
            return sorted(os.listdir(fd))

    # Walking below the root, one component at a time.

    def _show(self, rel: str) -> str:
        return f"{self.description.rstrip('/')}/{rel}" if rel else self.description

    def _open_root(self) -> int:
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _walk(self, parts: list[str], rel: str) -> int:
        """A descriptor of the folder reached through ``parts``, none of them a link."""
        fd = self._open_root()
        try:
            for part in parts:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        with contextlib.suppress(OSError):
                            self._refuse_link(os.stat(part, dir_fd=fd, follow_symlinks=False), rel)
                    raise
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def _parent(self, rel: str) -> Iterator[tuple[int, str]]:
        parts = split_rel(rel)
        fd = self._walk(parts[:-1], rel)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _dir(self, rel: str) -> Iterator[int]:
        fd = self._walk(split_rel(rel, allow_root=True), rel)
        try:
            yield fd
        finally:
            os.close(fd)

    def _lstat(self, rel: str) -> os.stat_result | None:
        parts = split_rel(rel, allow_root=True)
        try:
            if not parts:
                return os.stat(self.root)
            with self._parent(rel) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _open_existing(self, dir_fd: int, name: str, access: int, rel: str) -> int:
        try:
            fd = os.open(name, access | _EXISTING_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._refuse_link(os.stat(name, dir_fd=dir_fd, follow_symlinks=False), rel)
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LocationError(
                    f"{self._show(rel)} is not a regular file", target=self._show(rel)
                )
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _refuse_link(self, st: os.stat_result, rel: str) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise TargetEscapeError(
                f"{self._show(rel)}: refusing to follow a symbolic link inside the target folder",
                target=self._show(rel),
            )

    def identity(self, rel: str) -> str | None:
        # The inode number alone is not enough: ext4 gives a folder made right after another
        # was removed the same number. With its birth time it is unique; the device number is
        # then left out, as it changes when a disk is plugged in again.
        try:
            with self._dir(rel) as fd:
                st = os.fstat(fd)
                born = _birth_time(fd)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if born is None:  # a file system that keeps no birth time
            return f"{st.st_dev}:{st.st_ino}"
        return f"{st.st_ino}@{born}"


@functools.cache
def _renameat2() -> Callable[[int, bytes, int, bytes], int] | None:
    """``renameat2(..., RENAME_NOREPLACE)`` from the C library, or None where there is none."""
    import ctypes  # only renames need it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    int_, name = ctypes.c_int, ctypes.c_char_p
    function.argtypes = [int_, name, int_, name, ctypes.c_uint]
    function.restype = ctypes.c_int

    def rename_noreplace(from_fd: int, from_name: bytes, to_fd: int, to_name: bytes) -> int:
        return int(function(from_fd, from_name, to_fd, to_name, _RENAME_NOREPLACE))

    return rename_noreplace


def _ctypes_errno() -> int:
    import ctypes

    return ctypes.get_errno()


_AT_EMPTY_PATH = 0x1000
_STATX_BTIME = 0x800


@functools.cache
def _statx() -> Callable[[int], bytes | None] | None:
    """``statx`` of an open file from the C library (Python 3.11 has no os.statx): its
    ``struct statx`` with the birth time asked for, or None where there is none."""
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).statx
    except (OSError, AttributeError):
        return None
    int_, uint = ctypes.c_int, ctypes.c_uint
    function.argtypes = [int_, ctypes.c_char_p, int_, uint, ctypes.c_void_p]
    function.restype = int_

    def statx(fd: int) -> bytes | None:
        buffer = ctypes.create_string_buffer(256)  # sizeof(struct statx)
        if function(fd, b"", _AT_EMPTY_PATH, _STATX_BTIME, buffer) != 0:
            return None
        return buffer.raw

    return statx


def _birth_time(fd: int) -> int | None:
    """When the open file ``fd`` was made, in nanoseconds since the epoch, or None where the
    kernel or the file system does not say."""
    import struct

    statx = _statx()
    buffer = statx(fd) if statx is not None else None
    if buffer is None:
        return None
    (mask,) = struct.unpack_from("=I", buffer, 0)  # stx_mask
    if not mask & _STATX_BTIME:
        return None
    seconds, nanoseconds = struct.unpack_from("=qI", buffer, 80)  # stx_btime
    return int(seconds) * 1_000_000_000 + int(nanoseconds)
