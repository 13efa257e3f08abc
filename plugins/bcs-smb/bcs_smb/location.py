"""A folder on an SMB share as a bcs Location, over smbprotocol (SMB 2/3, pure Python).

What the copy engine asks of a location maps onto SMB this way:

- a new file is created exclusively (``FILE_CREATE``), with the permissions of its source
  sent as a security descriptor in the same request (see ``bcs_smb.modes``); a resumed one is
  opened and cut to the durable offset (``FileEndOfFileInformation``);
- ``sync`` waits for every write sent so far, then sends ``SMB2 FLUSH``, which a Samba server
  turns into an fsync (``strict sync = yes``, its default) and a Windows server into a flush
  of the file to its disk;
- ``rename`` is ``FileRenameInformation`` with ``ReplaceIfExists`` false: the server refuses
  to replace anything (``STATUS_OBJECT_NAME_COLLISION``, FileExistsError here);
- ``sync_dir`` is a flush of the folder's handle where the server allows one; elsewhere the
  server's own metadata durability is all there is;
- ``free_bytes`` is ``FileFsFullSizeInformation`` of the share: what the server lets this
  user write (quotas included).

Writes are pipelined: up to :data:`WINDOW` write requests of a file are on the wire at once,
so a copy does not wait one round trip per MiB. Their answers are collected before any sync
and as the window fills, and a failure of any of them fails the file.

Every failure reaches the core as OSError with an errno it knows (ENOSPC, EACCES,
ECONNREFUSED, ECONNRESET, ETIMEDOUT, ...) and a one-line message; the password of the login is
masked out of every message. Symbolic links on the share are the server's business: Samba's
``wide links = no`` (its default) keeps every path inside the share, and a link that the
server reports as a reparse point is refused here.

Connections are pooled per server, port and login for the life of the process, and closed
without waiting for the server when the process ends.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import functools
import hashlib
import io
import logging
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

import smbclient
from smbclient._io import SMBDirectoryIO, SMBFileIO
from smbprotocol.exceptions import (
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
    SMBResponseException,
)
from smbprotocol.open import CreateOptions, FilePipePrinterAccessMask, SMB2WriteResponse

from bcs_smb import modes
from bcs_smb.paths import SharePath
from cmdlets.backup.location import (
    LocationError,
    Login,
    TargetEscapeError,
    split_rel,
)

# smbprotocol logs a dying connection with a traceback; with no logging set up, Python would
# print that on stderr. bcs reports the failure itself, in one line.
for _name in ("smbprotocol", "smbclient", "spnego"):
    logging.getLogger(_name).addHandler(logging.NullHandler())
    logging.getLogger(_name).propagate = False

CONNECT_TIMEOUT = 15
# A request the server has not answered in this long fails the operation (a server that
# hangs, a network that drops packets); the connection is then dropped and made anew.
RESPONSE_TIMEOUT = 120
# Writes in flight per file. Four of 1 MiB keep the loopback and a LAN busy.
WINDOW = 4
# Credits left to other requests (opens, closes, stats of the other files being copied):
# writes never take the last of them.
SPARE_CREDITS = 8
_PAYLOAD = 65536  # one credit's worth of data

_NT = {
    0xC000006D: (errno.EACCES, "logon failure"),  # STATUS_LOGON_FAILURE
    0xC000006A: (errno.EACCES, "logon failure"),  # STATUS_WRONG_PASSWORD
    0xC0000071: (errno.EACCES, "the password has expired"),
    0xC0000072: (errno.EACCES, "the account is disabled"),
    0xC0000234: (errno.EACCES, "the account is locked out"),
    0xC000006E: (errno.EACCES, "the account may not log on"),
    0xC0000022: (errno.EACCES, "access denied"),  # STATUS_ACCESS_DENIED
    0xC000007F: (errno.ENOSPC, "no space left on the share"),  # STATUS_DISK_FULL
    0xC0000044: (errno.EDQUOT, "disk quota exceeded on the share"),  # STATUS_QUOTA_EXCEEDED
    0xC00000A2: (errno.EROFS, "the share is read-only"),  # STATUS_MEDIA_WRITE_PROTECTED
    0xC00000CC: (errno.ENOENT, "no such share on the server"),  # STATUS_BAD_NETWORK_NAME
    0xC0000035: (errno.EEXIST, "already exists"),  # STATUS_OBJECT_NAME_COLLISION
    0xC0000034: (errno.ENOENT, "no such file or folder"),  # STATUS_OBJECT_NAME_NOT_FOUND
    0xC000003A: (errno.ENOENT, "no such file or folder"),  # STATUS_OBJECT_PATH_NOT_FOUND
    0xC0000101: (errno.ENOTEMPTY, "the folder is not empty"),  # STATUS_DIRECTORY_NOT_EMPTY
    0xC00000BA: (errno.EISDIR, "is a folder"),  # STATUS_FILE_IS_A_DIRECTORY
    0xC0000103: (errno.ENOTDIR, "is not a folder"),  # STATUS_NOT_A_DIRECTORY
    0xC00000C9: (errno.ECONNRESET, "the server closed the share"),  # NETWORK_NAME_DELETED
    0xC0000203: (errno.ECONNRESET, "the server ended the session"),  # USER_SESSION_DELETED
    0xC000020C: (errno.ECONNRESET, "the connection to the server was lost"),
    0xC000020D: (errno.ECONNRESET, "the connection to the server was reset"),
    0xC0000128: (errno.EBADF, "the server closed the file"),  # STATUS_FILE_CLOSED
}
# A folder flush the server does not do: the folder's durability is then the server's own.
_NO_DIR_FLUSH = {0xC0000022, 0xC0000010, 0xC00000BB, 0xC0000008, 0xC0000002}
# A security descriptor the server will not apply at create: ACCESS_DENIED (no WRITE_DAC
# there), INVALID_ACL, INVALID_SID, INVALID_SECURITY_DESCR, NOT_SUPPORTED, INVALID_PARAMETER.
_DESCRIPTOR_REFUSED = {0xC0000022, 0xC0000077, 0xC0000078, 0xC0000079, 0xC00000BB, 0xC000000D}


class _Pool:
    """smbclient connection caches, one per server, port and login: a wrong password in one
    command never rides on a session another login opened, and nothing is shared with
    smbclient's global pool (which it closes at exit by logging off, waiting on the server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: dict[tuple[str, int, str, str], dict[str, Any]] = {}
        atexit.register(self.close_all)

    def cache(self, server: str, port: int, login: Login | None) -> dict[str, Any]:
        secret = hashlib.sha256(login.password.encode()).hexdigest() if login else ""
        key = (server.lower(), port, login.username if login else "", secret)
        with self._lock:
            return self._caches.setdefault(key, {})

    def drop(self, cache: dict[str, Any]) -> None:
        """Close the connections of a cache whose server stopped answering."""
        for connection in list(cache.values()):
            with contextlib.suppress(Exception):
                connection.disconnect(close=False)
        cache.clear()

    def close_all(self) -> None:
        with self._lock:
            caches = list(self._caches.values())
        for cache in caches:
            self.drop(cache)


_POOL = _Pool()


class SmbLocation:
    """A folder on a share; every ``rel`` is checked by ``split_rel`` first."""

    def __init__(self, folder: SharePath, login: Login | None) -> None:
        self.folder = folder
        self.login = login
        self.description = folder.text
        self._cache = _POOL.cache(folder.server, folder.port, login)
        self._send_lock = threading.Lock()
        self._dir_flush = True
        self._keep_modes = True
        self._owners: dict[str, modes.Owners | None] = {}

    def __repr__(self) -> str:
        return f"SmbLocation({self.description!r})"

    # The protocol.

    def exists(self, rel: str) -> bool:
        return self._lstat(rel) is not None

    def is_dir(self, rel: str) -> bool:
        st = self._lstat(rel)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def make_dir(self, rel: str) -> bool:
        path = self._unc(rel)
        try:
            with self._errors(rel):
                smbclient.mkdir(path, **self._session())
            return True
        except FileExistsError:
            if self.is_dir(rel):
                return False
            raise LocationError(
                f"{self._show(rel)} exists and is not a folder", target=self._show(rel)
            ) from None

    def open_write(self, rel: str, offset: int, mode: int = 0o644) -> SmbFile:
        # ``mode`` goes to the server as a security descriptor (see bcs_smb.modes).
        if offset < 0:
            raise ValueError(f"offset {offset} is negative")
        path = self._unc(rel)
        if offset == 0:
            # A fresh file rather than truncating what is there, as on a local folder.
            self.remove_file(rel)
        with self._errors(rel):
            if offset == 0:
                raw = self._create(rel, path, mode)
            else:
                raw = SMBFileIO(path, mode="r+b", share_access="r", **self._session())
                raw.open()
                try:
                    have = raw.fd.end_of_file
                    if have < offset:
                        raise LocationError(
                            f"{self._show(rel)} has {have} bytes, fewer than the {offset} to "
                            "resume after",
                            target=self._show(rel),
                        )
                    raw.truncate(offset)
                except BaseException:
                    _close_quietly(raw)
                    raise
        return SmbFile(self, rel, raw, offset)

    def open_read(self, rel: str) -> BinaryIO:
        path = self._unc(rel)
        st = self._lstat(rel)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no such file", self._show(rel))
        self._refuse_link(st, rel)
        if not stat.S_ISREG(st.st_mode):
            raise LocationError(f"{self._show(rel)} is not a regular file", target=self._show(rel))
        with self._errors(rel):
            raw = SMBFileIO(path, mode="rb", share_access="r", **self._session())
            raw.open()
        # One read request per MiB: restoring and re-hashing read front to back.
        return io.BufferedReader(_Reader(self, rel, raw), buffer_size=1 << 20)

    def size(self, rel: str) -> int | None:
        st = self._lstat(rel)
        if st is None:
            return None
        self._refuse_link(st, rel)
        if not stat.S_ISREG(st.st_mode):
            raise LocationError(f"{self._show(rel)} is not a regular file", target=self._show(rel))
        return int(st.st_size)

    def rename(self, rel_from: str, rel_to: str) -> None:
        source, target = self._unc(rel_from), self._unc(rel_to)
        with self._errors(rel_to):
            smbclient.rename(source, target, **self._session())

    def sync_dir(self, rel: str) -> None:
        if not self._dir_flush:
            return
        path = self._unc(rel, allow_root=True)
        access = (
            FilePipePrinterAccessMask.FILE_READ_ATTRIBUTES
            | FilePipePrinterAccessMask.FILE_WRITE_DATA  # FILE_ADD_FILE, for a folder
            | FilePipePrinterAccessMask.FILE_APPEND_DATA  # FILE_ADD_SUBDIRECTORY
        )
        with self._errors(rel):
            folder = SMBDirectoryIO(
                path, mode="r", share_access="rwd", desired_access=access, **self._session()
            )
            folder.open()
            try:
                self._receive_flush(folder.fd)
            except SMBResponseException as exc:
                if exc.status not in _NO_DIR_FLUSH:
                    raise
                self._dir_flush = False
            finally:
                _close_quietly(folder)

    def remove_file(self, rel: str) -> None:
        path = self._unc(rel)
        with contextlib.suppress(FileNotFoundError), self._errors(rel):
            smbclient.remove(path, **self._session())

    def remove_dir(self, rel: str) -> None:
        path = self._unc(rel)
        with contextlib.suppress(FileNotFoundError), self._errors(rel):
            smbclient.rmdir(path, **self._session())

    def free_bytes(self) -> int | None:
        with self._errors(""):
            try:
                volume = smbclient.stat_volume(self.folder.top().unc(), **self._session())
            except SMBOSError as exc:
                if exc.errno == 0:  # a size query this server does not answer
                    return None
                raise
        return int(volume.caller_available_size)

    def list_dir(self, rel: str) -> list[str]:
        path = self._unc(rel, allow_root=True)
        with self._errors(rel):
            return sorted(smbclient.listdir(path, **self._session()))

    # New files with the source's permissions.

    def _create(self, rel: str, path: str, mode: int) -> SMBFileIO:
        owners = self._owners_in(rel.rpartition("/")[0]) if self._keep_modes else None
        if owners is not None:
            raw = SMBFileIO(path, mode="xb", share_access="r", **self._session())
            # SMBFileIO has no way to pass create contexts: give them to its CREATE request.
            raw.fd.create = functools.partial(
                raw.fd.create, create_contexts=[modes.mode_context(owners, mode)]
            )
            try:
                raw.open()
                return raw
            except (SMBOSError, SMBResponseException) as exc:
                status = getattr(exc, "ntstatus", None) or getattr(exc, "status", None)
                if status not in _DESCRIPTOR_REFUSED:
                    raise
        raw = SMBFileIO(path, mode="xb", share_access="r", **self._session())
        raw.open()
        if owners is not None:
            self._keep_modes = False  # refused the descriptor, not the file: stop sending it
        return raw

    def _owners_in(self, folder: str) -> modes.Owners | None:
        """Who owns a file created in ``folder``, from a probe (see bcs_smb.modes)."""
        if folder not in self._owners:
            name = f".bcs-probe-{secrets.token_hex(8)}"
            probe = SMBFileIO(
                self._unc(f"{folder}/{name}" if folder else name),
                mode="xb",
                share_access="rwd",
                desired_access=FilePipePrinterAccessMask.READ_CONTROL
                | FilePipePrinterAccessMask.DELETE,
                create_options=CreateOptions.FILE_DELETE_ON_CLOSE,
                **self._session(),
            )
            found = None
            try:
                probe.open()
                try:
                    found = modes.owners_of(probe)
                finally:
                    _close_quietly(probe)
            except (SMBOSError, SMBResponseException):
                pass  # a server that will not say: its own settings decide
            self._owners[folder] = found
        return self._owners[folder]

    # Helpers.

    def _session(self) -> dict[str, Any]:
        login = self.login
        return {
            "port": self.folder.port,
            "username": login.username if login else None,
            "password": login.password if login else None,
            "connection_cache": self._cache,
            "connection_timeout": CONNECT_TIMEOUT,
        }

    def _unc(self, rel: str, *, allow_root: bool = False) -> str:
        return self.folder.unc(split_rel(rel, allow_root=allow_root))

    def _show(self, rel: str) -> str:
        return f"{self.description}/{rel}" if rel else self.description

    def _lstat(self, rel: str) -> Any:
        path = self._unc(rel, allow_root=True)
        try:
            with self._errors(rel):
                return smbclient.lstat(path, **self._session())
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _refuse_link(self, st: Any, rel: str) -> None:
        if stat.S_ISLNK(st.st_mode):
            raise TargetEscapeError(
                f"{self._show(rel)}: refusing to follow a symbolic link inside the target folder",
                target=self._show(rel),
            )

    @contextlib.contextmanager
    def _errors(self, rel: str) -> Iterator[None]:
        """Turn whatever smbprotocol raises into OSError (see the module docstring)."""
        try:
            yield
        except (LocationError, FileNotFoundError, FileExistsError, NotADirectoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - every library failure becomes an OSError
            raise self.os_error(exc, rel) from None

    def os_error(self, exc: BaseException, rel: str) -> OSError:
        where = self._show(rel)
        server = f"{self.folder.server}:{self.folder.port}"
        status = getattr(exc, "ntstatus", None) or getattr(exc, "status", None)
        if isinstance(exc, SMBOSError | SMBResponseException) and status in _NT:
            code, text = _NT[status]
            if text == "logon failure":
                who = f"user '{self.login.username}'" if self.login else "an anonymous user"
                cred = f" (credential '{self.login.name}')" if self.login else ""
                text = f"logon failure: {server} refused {who}{cred}: wrong user name or password"
            return OSError(code, self._mask(text), where)
        if isinstance(exc, SMBOSError) and exc.errno:
            return OSError(exc.errno, self._mask(exc.strerror or str(exc)), where)
        if isinstance(exc, SMBAuthenticationError):
            return OSError(errno.EACCES, self._mask(f"cannot log on to {server}: {exc}"), where)
        if isinstance(exc, SMBConnectionClosed | ConnectionError | BrokenPipeError):
            _POOL.drop(self._cache)
            return OSError(
                errno.ECONNRESET, f"the connection to {server} was lost (server down?)", where
            )
        if isinstance(exc, ValueError) and "Failed to connect" in str(exc):
            # smbprotocol wraps the socket's error in a ValueError: say what the socket said.
            cause = exc.__cause__
            if isinstance(cause, ConnectionRefusedError):
                code, text = errno.ECONNREFUSED, "connection refused (is the server down?)"
            elif isinstance(cause, OSError):
                code, text = errno.EHOSTUNREACH, cause.strerror or str(cause)
            else:
                code, text = errno.EHOSTUNREACH, str(exc)
            return OSError(code, self._mask(f"cannot connect to {server}: {text}"), where)
        if isinstance(exc, SMBException) and "timeout" in str(exc).lower():
            _POOL.drop(self._cache)
            return OSError(errno.ETIMEDOUT, f"{server} did not answer in time", where)
        if isinstance(exc, OSError):
            return OSError(exc.errno or errno.EIO, self._mask(exc.strerror or str(exc)), where)
        name = f"NTSTATUS 0x{status:08X}" if isinstance(status, int) else type(exc).__name__
        return OSError(errno.EIO, self._mask(f"{server} failed the request ({name}: {exc})"), where)

    def _mask(self, text: str) -> str:
        return self.login.mask(text) if self.login else text

    # Requests sent by hand: pipelined writes and flushes, with a response timeout.

    def send_write(self, raw: SMBFileIO, data: memoryview, offset: int) -> tuple[Any, int]:
        """Send one write of a prefix of ``data`` at ``offset``; the request and its size."""
        return self._send(
            raw,
            len(data),
            "write",
            lambda size: raw.fd.write(bytes(data[:size]), offset=offset, send=False)[0],
        )

    def send_read(self, raw: SMBFileIO, offset: int, length: int) -> tuple[Any, Any, int]:
        """Send one read of up to ``length`` bytes at ``offset``: the request, the function
        that receives its data, and the size asked for."""
        receive: list[Any] = []

        def message(size: int) -> Any:
            request, unpack = raw.fd.read(offset, size, send=False)
            receive.append(unpack)
            return request

        request, size = self._send(raw, length, "read", message)
        return request, receive[0], size

    def _send(self, raw: SMBFileIO, length: int, operation: str, message: Any) -> tuple[Any, int]:
        """Send a read or write of as much of ``length`` as the credits allow.

        Credits are counted and spent under one lock, so that the files copied at once never
        both count on the same credits (smbprotocol fails a request it has no credits for).
        Big requests leave a few credits to other requests; a request of one credit waits
        only for an empty window, which the answers in flight refill.
        """
        connection = raw.fd.connection
        most = getattr(connection, f"max_{operation}_size")
        deadline = time.monotonic() + RESPONSE_TIMEOUT
        while True:
            with self._send_lock:
                window = connection.sequence_window
                available = window["high"] - window["low"]
                if available >= 1:
                    size = min(length, most)
                    if connection.supports_multi_credit:
                        size = min(size, max(1, available - SPARE_CREDITS) * _PAYLOAD)
                    charge = (size - 1) // _PAYLOAD + 1
                    # Ask for enough credits to keep a whole window of requests in flight.
                    wanted = WINDOW * (most // _PAYLOAD) + SPARE_CREDITS
                    more = min(256, max(0, wanted - (available - charge)))
                    request = connection.send(
                        message(size),
                        sid=raw.fd.tree_connect.session.session_id,
                        tid=raw.fd.tree_connect.tree_connect_id,
                        credit_request=charge + more,
                    )
                    return request, size
            if time.monotonic() > deadline:
                raise SMBException("timeout waiting for credits from the server")
            time.sleep(0.001)

    def receive_write(self, raw: SMBFileIO, request: Any) -> int:
        response = raw.fd.connection.receive(request, timeout=RESPONSE_TIMEOUT)
        answer = SMB2WriteResponse()
        answer.unpack(response["data"].get_value())
        return int(answer["count"].get_value())

    def _receive_flush(self, fd: Any) -> None:
        message, _ = fd.flush(send=False)
        request = fd.connection.send(
            message, sid=fd.tree_connect.session.session_id, tid=fd.tree_connect.tree_connect_id
        )
        fd.connection.receive(request, timeout=RESPONSE_TIMEOUT)

    def flush(self, raw: SMBFileIO) -> None:
        self._receive_flush(raw.fd)

    # The protocol, continued.

    def identity(self, rel: str) -> str | None:
        # smbclient's stat asks the server for FileInternalInformation (st_ino: the file id)
        # and FileBasicInformation (st_ctime_ns: the creation time). Samba's file id is the
        # inode number on its disk, which ext4 gives again to a folder made right after one
        # was removed; the creation time tells those apart. Both survive a rename.
        st = self._lstat(rel)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return None
        return f"{st.st_ino}@{st.st_ctime_ns}"


class SmbFile:
    """A TargetFile on a share: writes go out pipelined, ``sync`` collects them and flushes.

    ``write`` and ``sync`` may run at once in two threads (the copy engine's checkpoint
    helper): the list of writes in flight is shared under a lock, and each answer is
    collected by exactly one of them.
    """

    def __init__(self, location: SmbLocation, rel: str, raw: SMBFileIO, offset: int) -> None:
        self._location = location
        self._rel = rel
        self._raw = raw
        self._offset = offset
        self._lock = threading.Lock()
        self._in_flight: collections.deque[tuple[Any, int]] = collections.deque()
        self._closed = False

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        with self._location._errors(self._rel):
            while view:
                request, size = self._location.send_write(self._raw, view, self._offset)
                with self._lock:
                    self._in_flight.append((request, size))
                self._offset += size
                view = view[size:]
                while len(self._in_flight) >= WINDOW:
                    self._collect(1)

    def sync(self) -> None:
        with self._location._errors(self._rel):
            self._collect(None)
            self._location.flush(self._raw)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with self._location._errors(self._rel):
                self._collect(None)
        finally:
            _close_quietly(self._raw)

    def _collect(self, count: int | None) -> None:
        """Wait for the answers of the ``count`` oldest writes in flight (None: all of them)."""
        with self._lock:
            taken = len(self._in_flight) if count is None else min(count, len(self._in_flight))
            mine = [self._in_flight.popleft() for _ in range(taken)]
        for request, size in mine:
            written = self._location.receive_write(self._raw, request)
            if written != size:
                raise OSError(errno.EIO, f"the server wrote {written} of {size} bytes", self._rel)


class _Reader(io.RawIOBase):
    """A file on the share, read sequentially or with seeks; errors become OSError."""

    def __init__(self, location: SmbLocation, rel: str, raw: SMBFileIO) -> None:
        super().__init__()
        self._location = location
        self._rel = rel
        self._raw = raw
        self._offset = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        # The size is the one the file had when it was opened: a file bcs reads is complete.
        if self._offset >= self._raw.fd.end_of_file or not len(buffer):
            return 0
        with self._location._errors(self._rel):
            request, receive, _ = self._location.send_read(self._raw, self._offset, len(buffer))
            data = receive(request)
        buffer[: len(data)] = data
        self._offset += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        end = int(self._raw.fd.end_of_file)
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._offset, io.SEEK_END: end}
        position = base[whence] + offset
        if position < 0:
            raise OSError(errno.EINVAL, "negative seek position", self._rel)
        self._offset = position
        return position

    def tell(self) -> int:
        return self._offset

    def close(self) -> None:
        if not self.closed:
            _close_quietly(self._raw)
        super().close()


def _close_quietly(raw: Any) -> None:
    """Close a handle; on a connection that is gone, forget it (the server closed it)."""
    try:
        raw.close()
    except Exception:  # noqa: BLE001 - a handle of a dead connection is closed already
        # Without this, smbclient would warn about an unclosed handle when it is collected.
        raw.fd._connected = False
