"""The built-in cmdlets, registered as the plugin ``builtin`` like any outside plugin."""

from __future__ import annotations

from cmdlets import backupjob, backups, copysession, discovery, inventory, objects, repository
from cmdlets.host.registry import Cmdlet

CMDLETS: list[Cmdlet] = [
    inventory.test_inventory,
    repository.get_repository,
    backupjob.get_backup_job,
    backupjob.enable_backup_job,
    backupjob.disable_backup_job,
    backupjob.start_backup_job,
    backups.get_backup,
    backups.get_restore_point,
    backups.test_backup,
    backups.restore_backup,
    copysession.start_backup_copy,
    copysession.get_copy_session,
    copysession.wait_copy_session,
    copysession.stop_copy_session,
    copysession.resume_copy_session,
    discovery.get_command,
    discovery.get_help,
    discovery.get_plugin,
    objects.where_object,
    objects.select_object,
    objects.sort_object,
    objects.format_table,
    objects.format_list,
    objects.convert_to_json,
    objects.convert_from_json,
]


def bcs_cmdlets() -> list[Cmdlet]:
    return CMDLETS
