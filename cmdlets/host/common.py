"""The common parameters every cmdlet takes (SPEC §3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cmdlets.host.registry import Param, Parameter

if TYPE_CHECKING:
    from cmdlets.host.registry import Cmdlet

OUTPUT_FORMATS = ("Table", "List", "Json")
ERROR_ACTIONS = ("Stop", "Continue", "SilentlyContinue")


def _common(name: str, kind: str, help: str, values: tuple[str, ...] | None = None) -> Parameter:
    python_name = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")
    return Parameter(name, python_name, kind, Param(help=help, values=values), None, common=True)


_ALWAYS = (
    _common("Inventory", "str", "Inventory file (else $BCS_INVENTORY, else ./inventory.yaml)."),
    _common(
        "StateDir", "str", "State directory (else $BCS_STATE_DIR, else .bcs/ beside the inventory)."
    ),
    _common("OutputFormat", "str", "How to write objects: Table, List or Json.", OUTPUT_FORMATS),
    _common("Verbose", "bool", "Write what is being done to stderr."),
    _common("Debug", "bool", "Show tracebacks of internal errors."),
    _common(
        "ErrorAction",
        "str",
        "What an error does: Stop, Continue or SilentlyContinue.",
        ERROR_ACTIONS,
    ),
)
_CHANGING = (_common("WhatIf", "bool", "Show what would happen and change nothing."),)
_DESTRUCTIVE = (
    _common("Confirm", "bool", "Ask before acting (-Confirm:$false never asks)."),
    _common("Force", "bool", "Act without asking for confirmation."),
)


def common_parameters(item: Cmdlet, own: set[str]) -> list[Parameter]:
    """The common parameters for ``item``; ``own`` names (lower case) it declares itself."""
    params = list(_ALWAYS)
    if item.changes_state:
        params.extend(_CHANGING)
    if item.destructive:
        params.extend(p for p in _DESTRUCTIVE if p.name.lower() not in own)
    return params
