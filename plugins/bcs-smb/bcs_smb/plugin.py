"""The plugin module named by the ``smb`` entry point of the group ``bcs.plugins``.

Every bcs command loads its plugins, so this module stays light: smbprotocol (and the
cryptography it pulls in) is imported only when a shared folder is first reached.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bcs_smb.paths import SharePath, is_smb_path

if TYPE_CHECKING:
    from cmdlets.backup.location import Location, LocationProvider, Login


class SmbProvider:
    """Reaches ``//server/share/folder`` (port 445) and ``smb://server[:port]/share/folder``."""

    name = "smb"

    def handles(self, path: str) -> bool:
        return is_smb_path(path)

    def open(self, path: str, login: Login | None) -> Location:
        from bcs_smb.location import SmbLocation

        return SmbLocation(SharePath.parse(path), login)

    def split(self, path: str) -> tuple[str, str]:
        share = SharePath.parse(path)
        return share.top().text, "/".join(share.parts)


def bcs_locations() -> list[LocationProvider]:
    return [SmbProvider()]
