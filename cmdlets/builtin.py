"""The built-in cmdlets, registered as the plugin ``builtin`` like any outside plugin."""

from __future__ import annotations

from cmdlets import backupjob, discovery, inventory, repository
from cmdlets.host.registry import Cmdlet

CMDLETS: list[Cmdlet] = [
    inventory.test_inventory,
    repository.get_repository,
    backupjob.get_backup_job,
    backupjob.enable_backup_job,
    backupjob.disable_backup_job,
    discovery.get_command,
    discovery.get_help,
    discovery.get_plugin,
]


def bcs_cmdlets() -> list[Cmdlet]:
    return CMDLETS
