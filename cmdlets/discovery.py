"""Discovery cmdlets: Get-Command, Get-Help, Get-Plugin."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Annotated, Any

from cmdlets.host.context import Context
from cmdlets.host.errors import NotFoundError
from cmdlets.host.registry import Param, cmdlet

COMMAND_NAME = Param(
    position=0,
    by_property=True,
    aliases=("Cmdlet",),
    help="Cmdlet name or wildcard pattern.",
    completes="cmdlet",
)


@cmdlet("Get-Command", output_type="BackupCopy.Command")
def get_command(
    ctx: Context,
    name: Annotated[list[str] | None, COMMAND_NAME] = None,
    noun: Annotated[
        str | None, Param(help="Only cmdlets of this noun (wildcards allowed).")
    ] = None,
    verb: Annotated[
        str | None, Param(help="Only cmdlets of this verb (wildcards allowed).")
    ] = None,
) -> Iterator[dict[str, Any]]:
    """List the cmdlets that bcs and its plugins provide.

    Examples:
      Get-Command
      Get-Command -Noun CopySession
      Get-Command *-BackupJob
    """
    patterns = [n.lower() for n in name or ["*"]]
    for item in ctx.registry:
        if not any(fnmatch.fnmatch(item.name.lower(), p) for p in patterns):
            continue
        if noun and not fnmatch.fnmatch(item.noun.lower(), noun.lower()):
            continue
        if verb and not fnmatch.fnmatch(item.verb.lower(), verb.lower()):
            continue
        yield {
            "TypeName": "BackupCopy.Command",
            "Name": item.name,
            "Verb": item.verb,
            "Noun": item.noun,
            "Plugin": item.plugin,
            "Synopsis": item.synopsis,
        }


@cmdlet("Get-Help")
def get_help(
    ctx: Context,
    name: Annotated[str | None, COMMAND_NAME] = None,
    examples: Annotated[bool, Param(help="Only the examples.")] = False,
    full: Annotated[bool, Param(help="Everything, common parameters included.")] = False,
) -> None:
    """Show the help of a cmdlet: synopsis, syntax, parameters, examples and exit status.

    Help is text for a person: it goes straight to the output, not into the pipeline.

    Examples:
      Get-Help Start-BackupCopy
      Get-Help Resume-CopySession -Examples
      Get-Help Get-BackupJob -Full
    """
    from cmdlets.host.help import render_help
    from cmdlets.host.runner import USAGE, unknown_cmdlet

    if not name:
        text = USAGE
    else:
        item = ctx.registry.get(name)
        if item is None:
            raise unknown_cmdlet(name, ctx.registry)
        text = render_help(item, examples_only=examples, full=full) + "\n"
    ctx.env.stdout.write(text)
    ctx.env.stdout.flush()


@cmdlet("Get-Plugin", output_type="BackupCopy.Plugin")
def get_plugin(
    ctx: Context,
    name: Annotated[list[str] | None, Param(position=0, help="Plugin names.")] = None,
) -> Iterator[dict[str, Any]]:
    """List the plugins found through the entry-point group bcs.plugins, loaded or not.

    BCS_LOAD_PLUGINS (a comma list; empty loads none) chooses which outside plugins load; the
    built-in cmdlets are a plugin too and always load. Locations names the kinds of path a
    plugin reaches (smb: shared folders).

    Examples:
      Get-Plugin
      BCS_LOAD_PLUGINS= Get-Plugin
    """
    wanted = {n.lower() for n in name or []}
    found = False
    for info in ctx.registry.plugins:
        ep = info.entry_point
        if wanted and ep.name.lower() not in wanted:
            continue
        found = True
        yield {
            "TypeName": "BackupCopy.Plugin",
            "Name": ep.name,
            "Distribution": ep.distribution,
            "Version": ep.version,
            "Module": ep.value,
            "Builtin": ep.builtin,
            "Enabled": info.enabled,
            "Loaded": info.loaded,
            "Cmdlets": info.cmdlets,
            "Locations": info.locations,
            "Error": info.error,
        }
    if wanted and not found:
        raise NotFoundError(f"no plugin named {', '.join(sorted(wanted))}")
