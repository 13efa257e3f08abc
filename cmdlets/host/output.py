"""Where cmdlet objects go: JSON Lines when stdout is not a terminal, else formatted text."""

from __future__ import annotations

from typing import Any

from cmdlets.host.context import Environment
from cmdlets.host.pipeline import encode


class HostText(str):
    """Text made for a person or a file (Format-Table, ConvertTo-Json): written as it is,
    never wrapped as a JSON string, so ``Get-Backup | ConvertTo-Json > backups.json`` is a
    JSON document and ``Format-Table > report.txt`` a table."""


class ObjectWriter:
    def __init__(self, env: Environment, output_format: str | None) -> None:
        self.env = env
        self.how = output_format or ("Table" if env.stdout_is_tty else "Json")
        self._held: list[Any] = []

    def write(self, obj: Any) -> None:
        if self.how == "Json":
            text = obj if isinstance(obj, HostText) else encode(obj)
            self.env.stdout.write(text + "\n")
            self.env.stdout.flush()
        else:
            self._held.append(obj)

    def close(self) -> None:
        if self._held:
            from cmdlets.host.formatting import format_objects

            text = format_objects(self._held, self.how, self.env.terminal_width)
            self._held.clear()
            self.env.stdout.write(text + "\n")
            self.env.stdout.flush()
