"""Cmdlets of the noun Repository."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Annotated, Any

from cmdlets.backup.inventory import Repository
from cmdlets.host.context import Context
from cmdlets.host.errors import NotFoundError
from cmdlets.host.registry import Param, cmdlet

REPOSITORY = "BackupCopy.Repository"


def free_bytes(path: str | None) -> int | None:
    """Free space for an unprivileged writer, or None where it cannot be known here."""
    if not path or path.startswith(("//", "smb://")):
        return None
    probe = path
    # A repository folder may not exist yet: measure the nearest existing parent.
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
    try:
        st = os.statvfs(probe)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def repository_object(repo: Repository) -> dict[str, Any]:
    extents: list[dict[str, Any]] = [
        {
            "Name": e.name,
            "Path": e.path,
            "Maintenance": e.maintenance,
            "FreeBytes": free_bytes(e.path),
        }
        for e in repo.extents
    ]
    free: int | None
    if extents:
        free = sum(e["FreeBytes"] or 0 for e in extents if not e["Maintenance"])
    else:
        free = free_bytes(repo.path)
    return {
        "TypeName": REPOSITORY,
        "Name": repo.name,
        "Kind": repo.kind,
        "Path": repo.path,
        "Extents": extents,
        "Credential": repo.credential,
        "FreeBytes": free,
    }


@cmdlet("Get-Repository", output_type=REPOSITORY)
def get_repository(
    ctx: Context,
    name: Annotated[
        list[str] | None,
        Param(
            position=0,
            by_value={"BackupCopy.Backup": "Repository", "BackupCopy.BackupJob": "Repository"},
            by_property=True,
            aliases=("Repository",),
            help="Repository names (comma-separated).",
            completes="repository",
        ),
    ] = None,
) -> Iterator[dict[str, Any]]:
    """Get the repositories of the inventory: folders, scale-out repositories with their
    extents, and shared folders, with free space.

    For a scale-out repository FreeBytes adds up the extents that are not in maintenance.

    Examples:
      Get-Repository
      Get-Repository -Name SOBR-1 -OutputFormat List
      Get-BackupJob -Name 'Daily SQL' | Get-Repository
    """
    inventory = ctx.inventory
    if not name:
        for repo in inventory.repositories:
            yield repository_object(repo)
        return
    for wanted in name:
        found = inventory.repository(wanted)
        if found is None:
            known = ", ".join(r.name for r in inventory.repositories) or "none"
            ctx.write_error(
                NotFoundError(
                    f"no repository named '{wanted}' (repositories: {known})", target=wanted
                )
            )
            continue
        yield repository_object(found)
