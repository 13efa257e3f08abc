"""Claimed folders: how a copy session makes a folder its own, and knows it still is.

Undo removes what the session made and nothing else (README, "Copying backups"), and a name
cannot tell what the session made. Two sessions that passed their checks at once may both make
the same folder; so each folder a session makes (a backup's folder, or a folder on the way to
the target) is made under a name only that session uses (:func:`claim_name`), then renamed into
place by a rename that never replaces anything. Exactly one of them gets it; the others record
nothing in it and never write into it.

A folder can also be replaced later: an administrator removes a session's folder by hand, and
another session makes one of the same name, with files of the same names. So the session also
records the folder's identity when it claims it (``Location.identity``: inode number and birth
time on a local disk, file id and creation time on a share). Retry writes into a recorded
folder, and SkipFailed and Undo remove anything from it, only while it is still that folder.
Records written before identities were have none, and are trusted by name as before.

A session record lists ``Created`` (backup folders, as ``Dir`` entries, and the files the
session made in them), ``CreatedRoots`` (folders made on the way, by the name shown to
people), ``Claiming`` (folders whose claim folder exists or was renamed into place) and
``Identities`` (the identity of each folder claimed or being claimed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from cmdlets.backup import sessions
from cmdlets.backup.location import Location
from cmdlets.host.errors import BcsError, InvalidOperationError
from cmdlets.store import StateDir

Record = dict[str, Any]
Clock = Callable[[], datetime]


class FolderReplacedError(InvalidOperationError):
    """A folder the session made was removed and another one made under its name."""

    error_id = "TargetReplaced"

    def __init__(self, shown: str) -> None:
        super().__init__(
            f"{replaced_text(shown)} (removed, and made again by someone else?): the session "
            "does not write into it; finalize the session (SkipFailed and Undo leave that "
            "folder and everything in it alone), then copy again",
            target=shown,
        )


def replaced_text(shown: str) -> str:
    return f"{shown} is no longer the folder this session made"


@dataclasses.dataclass(frozen=True)
class Folder:
    """A folder a session makes at ``rel`` of ``location``: the folder of the backup at index
    ``backup``, or (``backup`` None) a folder on the way to the target; ``shown`` names it for
    people."""

    location: Location
    rel: str
    backup: int | None
    shown: str

    @property
    def claiming(self) -> dict[str, Any]:
        return {"Backup": self.backup, "Rel": self.rel}

    def _entry(self) -> Any:
        if self.backup is None:
            return self.shown
        return {"Backup": self.backup, "Kind": "Dir", "Rel": self.rel}

    def _list(self, record: Record) -> list[Any]:
        listed: list[Any] = record.setdefault(
            "CreatedRoots" if self.backup is None else "Created", []
        )
        return listed

    def mine(self, record: Record) -> bool:
        return self._entry() in self._list(record)

    def own(self, record: Record) -> None:
        if not self.mine(record):
            self._list(record).append(self._entry())

    def disown(self, record: Record) -> None:
        """No longer the session's: with the folder go the files recorded in it (removed, or
        gone with the folder) and its identity."""
        if self.mine(record):
            self._list(record).remove(self._entry())
        if self.backup is not None:
            record["Created"] = [e for e in record["Created"] if e["Backup"] != self.backup]
        self._forget_identity(record)

    def claimed(self, record: Record) -> None:
        claims = record.setdefault("Claiming", [])
        if self.claiming not in claims:
            claims.append(self.claiming)

    def unclaimed(self, record: Record) -> None:
        claims = record.setdefault("Claiming", [])
        if self.claiming in claims:
            claims.remove(self.claiming)

    def lost(self, record: Record) -> None:
        """A claim that did not get the folder: nothing of it stays in the record."""
        self.unclaimed(record)
        self._forget_identity(record)

    def _is(self, entry: dict[str, Any]) -> bool:
        return (entry["Backup"], entry["Rel"]) == (self.backup, self.rel)

    def identity(self, record: Record) -> str | None:
        """The identity recorded for the folder (or its claim folder), if any."""
        found = [e["Identity"] for e in record.get("Identities", []) if self._is(e)]
        return str(found[0]) if found else None

    def identify(self, record: Record, identity: str | None) -> None:
        self._forget_identity(record)
        if identity is not None:
            record.setdefault("Identities", []).append({**self.claiming, "Identity": identity})

    def _forget_identity(self, record: Record) -> None:
        if "Identities" in record:
            record["Identities"] = [e for e in record["Identities"] if not self._is(e)]

    def replaced(self, record: Record) -> bool:
        """Whether a folder other than the one the session claimed has the name now. Not when
        nothing is there, nor when no identity was recorded (a record written before
        identities were, or a location that cannot tell)."""
        recorded = self.identity(record)
        if recorded is None:
            return False
        now = self.location.identity(self.rel)
        return now is not None and now != recorded


def claim_name(rel: str, session_id: str) -> str:
    """The name a folder is made under before it is renamed into place: beside it, hidden,
    and used by this session alone."""
    head, _, name = rel.rpartition("/")
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > 200:  # room for the rest within a file system's 255 bytes
        name = hashlib.sha256(raw).hexdigest()[:16]
    claim = f".{name}.{session_id}.claim"
    return f"{head}/{claim}" if head else claim


def claim(
    state: StateDir, session_id: str, folder: Folder, also: Sequence[tuple[str, str]] = ()
) -> bool:
    """Make ``folder`` this session's own: True if it is (made now, or by an interrupted
    earlier attempt), False if anything else has its name; FolderReplacedError if the
    session made it but it has been replaced since.

    The claim folder is recorded with its identity once it is made, before the rename, so
    after a crash a recorded claim folder that is gone was renamed into place if the folder
    there now has that identity. ``also`` lists (kind, rel) of what the session is about to
    create in the folder, recorded for Undo in the same write that records the folder as its
    own."""
    location, rel = folder.location, folder.rel
    name = claim_name(rel, session_id)

    def take(identity: str | None) -> Callable[[Record], None]:
        def change(record: Record) -> None:
            folder.unclaimed(record)
            folder.own(record)
            folder.identify(record, identity)
            add_created(record, folder.backup, also)

        return change

    record = sessions.read(state, session_id) or {}
    if folder.mine(record):
        if location.is_dir(rel):
            if folder.replaced(record):
                raise FolderReplacedError(folder.shown)
            if also:
                sessions.update(state, session_id, take(folder.identity(record)))
            return True
        # Gone: removed by hand (an interrupted Undo lets only Undo go on). Claimed anew.
        sessions.update(state, session_id, folder.disown)
    elif (
        folder.claiming in record.get("Claiming", [])
        and not location.exists(name)
        and location.is_dir(rel)
        and not folder.replaced(record)
    ):
        # Renamed into place before a crash (the folder there has the claim's identity).
        sessions.update(state, session_id, take(folder.identity(record)))
        return True
    location.make_dir(name)  # False: this session's claim folder, left by an earlier attempt
    identity = location.identity(name)

    def claimed(record: Record) -> None:
        folder.claimed(record)
        folder.identify(record, identity)

    if folder.claiming not in record.get("Claiming", []) or folder.identity(record) != identity:
        sessions.update(state, session_id, claimed)
    try:
        location.rename(name, rel)
    except FileExistsError:
        with contextlib.suppress(OSError, BcsError):
            location.remove_dir(name)
        sessions.update(state, session_id, folder.lost)
        return False
    # Read again: where a folder cannot be renamed, it was made anew in place (see
    # LocalLocation.rename).
    sessions.update(state, session_id, take(location.identity(rel)))
    return True


def settle_claim(state: StateDir, session_id: str, folder: Folder, clock: Clock) -> list[str]:
    """Before Undo removes ``folder``: remove a claim folder an interrupted claim left, or
    take the folder as the session's own if the claim was renamed into place before a crash
    (and the folder there is still that one). Returns what could not be removed."""
    location = folder.location
    name = claim_name(folder.rel, session_id)
    record = sessions.read(state, session_id) or {}
    recorded = folder.claiming in record.get("Claiming", [])
    present = owned = False
    try:
        present = location.is_dir(name)
        if present:
            location.remove_dir(name)
            shown = f"{location.description.rstrip('/')}/{name}"
            sessions.log(state, session_id, clock(), "Removed", shown)
        elif recorded and location.is_dir(folder.rel) and not folder.replaced(record):
            owned = True
    except (OSError, BcsError) as exc:
        if not recorded and not present:
            return []  # nothing recorded, and no claim folder could be looked for
        # A link in the way, or a claim folder someone put something into: it stays.
        return [f"{name} ({getattr(exc, 'strerror', None) or exc})"]
    if owned:

        def own(current: Record) -> None:
            folder.unclaimed(current)
            folder.own(current)

        sessions.update(state, session_id, own)
    elif recorded:
        sessions.update(state, session_id, folder.lost)
    return []


def add_created(record: Record, index: int | None, paths: Sequence[tuple[str, str]]) -> None:
    for kind, rel in paths:
        entry = {"Backup": index, "Kind": kind, "Rel": rel}
        if entry not in record["Created"]:
            record["Created"].append(entry)


def leave(state: StateDir, session_id: str, folder: Folder, clock: Clock) -> None:
    """SkipFailed or Undo found ``folder`` replaced: it stays as it is, with everything in it.
    The session forgets it and what it recorded in it, and keeps its name in ``Replaced`` for
    the Reason of the session (an Undo run again after a crash still says so)."""

    def change(record: Record) -> None:
        folder.disown(record)
        replaced = record.setdefault("Replaced", [])
        if folder.shown not in replaced:
            replaced.append(folder.shown)

    sessions.update(state, session_id, change)
    message = f"left in place: {replaced_text(folder.shown)}"
    sessions.log(state, session_id, clock(), "LeftInPlace", message)
