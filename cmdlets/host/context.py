"""The environment a command runs in, and the per-invocation context handed to cmdlets.

Nothing deeper than this module reads ``sys.stdin``, ``os.environ`` or the clock: tests build
an :class:`Environment` per case instead of patching globals.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cmdlets.host.errors import BcsError, UsageError

if TYPE_CHECKING:
    from cmdlets.backup.inventory import Inventory
    from cmdlets.backup.location import Locations
    from cmdlets.host.registry import Registry
    from cmdlets.store import StateDir


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass
class Environment:
    stdin: IO[bytes]
    stdout: IO[str]
    stderr: IO[str]
    environ: Mapping[str, str]
    cwd: Path
    stdin_is_tty: bool = False
    stdout_is_tty: bool = False
    stderr_is_tty: bool = False
    clock: Callable[[], datetime] = _utcnow
    terminal_width: int = 120
    # Whether stdin carries pipeline objects; None means: find out from the file type.
    stdin_is_pipe: bool | None = None

    @classmethod
    def from_process(cls) -> Environment:
        def tty(stream: Any) -> bool:
            try:
                return bool(stream.isatty())
            except (AttributeError, ValueError):
                return False

        try:
            width = os.get_terminal_size(sys.stdout.fileno()).columns
        except (OSError, ValueError, AttributeError):
            width = 120
        return cls(
            stdin=sys.stdin.buffer,
            stdout=sys.stdout,
            stderr=sys.stderr,
            environ=os.environ,
            cwd=Path.cwd(),
            stdin_is_tty=tty(sys.stdin),
            stdout_is_tty=tty(sys.stdout),
            stderr_is_tty=tty(sys.stderr),
            terminal_width=width,
        )


@dataclasses.dataclass
class Options:
    """The common parameters of one invocation."""

    inventory: str | None = None
    state_dir: str | None = None
    output_format: str | None = None
    verbose: bool = False
    debug: bool = False
    error_action: str = "Continue"
    what_if: bool = False
    confirm: bool | None = None
    force: bool = False


class Context:
    """What a cmdlet sees: the environment, its common parameters, lazy inventory and state."""

    def __init__(
        self, env: Environment, options: Options, cmdlet_name: str, registry: Registry
    ) -> None:
        self.env = env
        self.options = options
        self.cmdlet_name = cmdlet_name
        self.registry = registry
        self.errors: list[BcsError] = []
        # Raised by a cmdlet whose outcome is a failure that is not an error record (a copy
        # session that ended in ActionRequired, a backup test that found damage).
        self.status = 0

    # -- where things are ------------------------------------------------------------------
    @cached_property
    def inventory_path(self) -> Path:
        given = self.options.inventory or self.env.environ.get("BCS_INVENTORY") or "inventory.yaml"
        return self.resolve(given)

    @cached_property
    def state_path(self) -> Path:
        given = self.options.state_dir or self.env.environ.get("BCS_STATE_DIR")
        if given:
            return self.resolve(given)
        return self.inventory_path.parent / ".bcs"

    def resolve(self, path: str) -> Path:
        return self.env.cwd / os.path.expanduser(path)

    @cached_property
    def inventory(self) -> Inventory:
        from cmdlets.backup.inventory import load_inventory

        return load_inventory(self.inventory_path, cache_dir=self.state.directory("cache"))

    @cached_property
    def locations(self) -> Locations:
        """Reaches target and copy paths: local folders, and what plugins provide."""
        from cmdlets.backup.location import Locations

        return Locations(self.registry.locations, self.inventory.credentials, self.env.environ)

    @cached_property
    def state(self) -> StateDir:
        from cmdlets.store import StateDir
        from cmdlets.store.records import lock_timeout

        return StateDir(
            self.state_path,
            holder=self.cmdlet_name,
            timeout=lock_timeout(dict(self.env.environ)),
        )

    def now(self) -> datetime:
        return self.env.clock()

    # -- talking to the user ---------------------------------------------------------------
    def verbose(self, message: str) -> None:
        if self.options.verbose:
            self.env.stderr.write(f"VERBOSE: {message}\n")
            self.env.stderr.flush()

    def warn(self, message: str) -> None:
        self.env.stderr.write(f"WARNING: {message}\n")
        self.env.stderr.flush()

    def write_error(self, error: BcsError) -> None:
        """A non-terminating error: report it and go on (unless -ErrorAction Stop)."""
        if self.options.error_action == "Stop":
            raise error
        self.errors.append(error)
        if self.options.error_action != "SilentlyContinue":
            from cmdlets.host.errors_output import write_error

            write_error(self.env, self.cmdlet_name, error)

    def should_process(self, target: str, operation: str, destructive: bool | None = None) -> bool:
        """False (after saying what would happen) under -WhatIf; else asks when destructive
        (by default: when the cmdlet is declared destructive)."""
        if self.options.what_if:
            self.env.stderr.write(
                f'What if: Performing the operation "{operation}" on target "{target}".\n'
            )
            self.env.stderr.flush()
            return False
        if destructive is None:
            item = self.registry.get(self.cmdlet_name)
            destructive = item is not None and item.destructive
        if destructive:
            return self._confirm(target, operation)
        return True

    def _confirm(self, target: str, operation: str) -> bool:
        if self.options.force or self.options.confirm is False:
            return True
        if not (self.env.stdin_is_tty and self.env.stderr_is_tty):
            raise UsageError(
                f'"{operation}" on "{target}" needs confirmation and there is no terminal to '
                "ask on; add -Force or -Confirm:$false",
                target=target,
                error_id="ConfirmationRequired",
            )
        self.env.stderr.write(
            f"Confirm\nAre you sure you want to perform this action?\nPerforming the operation "
            f'"{operation}" on target "{target}".\n[Y] Yes  [N] No  (default is "N"): '
        )
        self.env.stderr.flush()
        answer = self.env.stdin.readline().decode(errors="replace").strip().lower()
        return answer in ("y", "yes")
