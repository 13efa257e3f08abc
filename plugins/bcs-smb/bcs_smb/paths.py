"""Shared-folder paths: ``//server/share/folder`` and ``smb://server[:port]/share/folder``."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cmdlets.backup.location import LocationError

DEFAULT_PORT = 445


def is_smb_path(path: str) -> bool:
    return path.startswith("//") or path[:6].lower() == "smb://"


@dataclasses.dataclass(frozen=True)
class SharePath:
    """A folder on a share: ``prefix`` is how the server is written (``//nas01``,
    ``smb://nas01:4445``), ``parts`` the folders below the share (none for the share)."""

    prefix: str
    server: str
    port: int
    share: str
    parts: tuple[str, ...]

    @classmethod
    def parse(cls, path: str) -> SharePath:
        """Parse and check a path; LocationError names what is wrong with it, and a path
        with a user name or password in it is a usage error that never repeats it."""
        from cmdlets.backup.location import refuse_user_info

        # The core refuses these before any provider sees them; this keeps the plugin as
        # safe when it is called directly. Every message below shows the path, so this
        # comes first.
        refuse_user_info(path)
        if path[:6].lower() == "smb://":
            authority, _, rest = path[6:].partition("/")
            server, port = _authority(path, authority)
            host = f"[{server}]" if ":" in server else server
            prefix = "smb://" + host + (f":{port}" if port != DEFAULT_PORT else "")
        elif path.startswith("//"):
            server, _, rest = path[2:].partition("/")
            port, prefix = DEFAULT_PORT, "//" + server
        else:
            raise _invalid(path, "is not a shared folder (//server/share or smb://server/share)")
        if not server:
            raise _invalid(path, "names no server")
        names = rest.rstrip("/").split("/") if rest.rstrip("/") else []
        if not names:
            raise _invalid(path, "names no share (//server/share/folder)")
        for name in names:
            problem = _name_problem(name)
            if problem:
                raise _invalid(path, problem)
        share, *parts = names
        return cls(prefix, server, port, share, tuple(parts))

    @property
    def text(self) -> str:
        """The path as bcs shows it."""
        return "/".join((self.prefix, self.share, *self.parts))

    def top(self) -> SharePath:
        """The share itself."""
        return dataclasses.replace(self, parts=())

    def unc(self, more: list[str] | tuple[str, ...] = ()) -> str:
        """The UNC path smbclient takes (backslashes), with ``more`` folders below."""
        return "\\\\" + "\\".join((self.server, self.share, *self.parts, *more))


def _authority(path: str, authority: str) -> tuple[str, int]:
    port_text = ""
    if authority.startswith("["):  # an IPv6 address
        host, _, after = authority[1:].partition("]")
        if after.startswith(":"):
            port_text = after[1:]
        elif after:
            raise _invalid(path, "has a malformed server address")
    else:
        host, _, port_text = authority.partition(":")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _invalid(path, f"has an invalid port {port_text!r}")
    return host, int(port_text)


def _name_problem(name: str) -> str | None:
    if name == "":
        return "has an empty folder name (two '/' in a row)"
    if name in (".", ".."):
        return f"has a '{name}' folder name"
    if "\\" in name or "\0" in name or any(ord(c) < 32 for c in name):
        return "has a folder name with '\\' or a control character"
    return None


def _invalid(path: str, problem: str) -> LocationError:
    # Imported here: every command loads the plugin, few of them parse a share path.
    from cmdlets.backup.location import LocationError

    return LocationError(
        f"shared folder path {path!r} {problem}", target=path, error_id="InvalidSharePath"
    )
