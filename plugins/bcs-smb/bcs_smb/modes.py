"""Unix permission bits of new files on a share, sent as a security descriptor.

SMB has no mode bits: without more, a new file gets what the server decides (Samba: the share's
``create mask``, 0744 by default, so a 0600 restore point file became 0644). What a client can
send is an NT security descriptor. Samba maps its DACL onto the file's POSIX ACL (or its mode
bits on a file system without ACLs): an ACE for the file's owner becomes the owner's
permissions, one for the file's group the group's, one for Everyone the others'. So a new file
is created with three such ACEs built from the source's mode, inside the CREATE request itself
(``SMB2_CREATE_SD_BUFFER``): it never exists with looser permissions, not even for a moment.

ACEs name SIDs, and the owner and group SIDs the server gives a new file depend on its
configuration (``force user``, ``inherit owner``, a domain): they are learnt from a probe, an
empty file created with ``FILE_DELETE_ON_CLOSE`` in the same folder, whose security descriptor
says who owns what is created there; the server removes it when it is closed, or when the
connection drops. A server that gives no answer, or refuses the descriptor, gets files as
before, and its own settings decide.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from smbprotocol.create_contexts import CreateContextName, SMB2CreateContextRequest
from smbprotocol.file_info import InfoType
from smbprotocol.open import SMB2QueryInfoRequest, SMB2QueryInfoResponse
from smbprotocol.security_descriptor import (
    AccessAllowedAce,
    AclPacket,
    SDControl,
    SIDPacket,
    SMB2CreateSDBuffer,
)

EVERYONE = "S-1-1-0"
_OWNER_AND_GROUP = 0x1 | 0x2  # OWNER_ and GROUP_SECURITY_INFORMATION
# FILE_GENERIC_READ, _WRITE and _EXECUTE: what Samba maps to and from r, w and x.
_READ, _WRITE, _EXECUTE = 0x120089, 0x120116, 0x1200A0
# The owner keeps read and write whatever the mode: a copy must stay resumable (Retry) and
# removable (Undo) by the account that writes it.
_OWNER_ALWAYS = 0o6
_DELETE = 0x00010000


@dataclasses.dataclass(frozen=True)
class Owners:
    """The owner and group SIDs the server gives a new file in one folder."""

    owner: str
    group: str


def owners_of(raw: Any) -> Owners | None:
    """The owner and group of the open file ``raw`` (opened with READ_CONTROL)."""
    request = SMB2QueryInfoRequest()
    request["info_type"] = InfoType.SMB2_0_INFO_SECURITY
    request["file_info_class"] = 0
    request["output_buffer_length"] = 4096
    request["additional_information"] = _OWNER_AND_GROUP
    request["file_id"] = raw.fd.file_id
    fd = raw.fd
    sent = fd.connection.send(
        request, sid=fd.tree_connect.session.session_id, tid=fd.tree_connect.tree_connect_id
    )
    answer = SMB2QueryInfoResponse()
    answer.unpack(fd.connection.receive(sent)["data"].get_value())
    descriptor = SMB2CreateSDBuffer()
    descriptor.unpack(answer["buffer"].get_value())
    owner, group = descriptor.get_owner(), descriptor.get_group()
    if owner is None or group is None:
        return None
    return Owners(str(owner), str(group))


def mode_context(owners: Owners, mode: int) -> SMB2CreateContextRequest:
    """The create context that gives a new file the permissions of ``mode``."""
    aces = []
    for sid, bits, extra in (
        (owners.owner, (mode >> 6 & 7) | _OWNER_ALWAYS, _DELETE),
        (owners.group, mode >> 3 & 7, 0),
        (EVERYONE, mode & 7, 0),
    ):
        if bits:
            aces.append(_ace(sid, bits, extra))
    acl = AclPacket()
    acl["aces"] = aces
    descriptor = SMB2CreateSDBuffer()
    descriptor["control"].set_flag(SDControl.SELF_RELATIVE)
    descriptor.set_dacl(acl)
    context = SMB2CreateContextRequest()
    context["buffer_name"] = CreateContextName.SMB2_CREATE_SD_BUFFER
    context["buffer_data"] = descriptor
    return context


def _ace(sid: str, bits: int, extra: int) -> AccessAllowedAce:
    ace = AccessAllowedAce()
    mask = extra
    if bits & 4:
        mask |= _READ
    if bits & 2:
        mask |= _WRITE
    if bits & 1:
        mask |= _EXECUTE
    ace["mask"] = mask
    packet = SIDPacket()
    packet.from_string(sid)
    ace["sid"] = packet
    return ace
