"""Cmdlets of the noun Inventory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from cmdlets.host.context import Context
from cmdlets.host.registry import cmdlet


@cmdlet("Test-Inventory", output_type="BackupCopy.InventoryTest")
def test_inventory(ctx: Context) -> Iterator[dict[str, Any]]:
    """Validate the inventory file against its schema and its cross-references.

    Every problem is reported with the YAML line and column and the field path, e.g.
    inventory.yaml:14:5: jobs[1].repository: 'Mian' is not a defined repository.
    The exit status is 2 when the inventory is invalid.

    Examples:
      Test-Inventory
      Test-Inventory -Inventory /etc/bcs/inventory.yaml
    """
    inventory = ctx.inventory
    yield {
        "TypeName": "BackupCopy.InventoryTest",
        "Path": str(inventory.path),
        "Valid": True,
        "Server": inventory.server,
        "Repositories": len(inventory.repositories),
        "Extents": sum(len(r.extents) for r in inventory.repositories),
        "Credentials": len(inventory.credentials),
        "Jobs": len(inventory.jobs),
    }
