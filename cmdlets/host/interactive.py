"""The interactive shell: ``bcs`` with no arguments on a terminal.

One line is one pipeline, run in this process exactly as ``bcs -Command`` runs it; what the
last cmdlet writes is formatted for the terminal. Tab completes (see
:mod:`cmdlets.host.completion`); history is kept in ``<state dir>/history`` (mode 0600) and
searched with Ctrl-R. An error prints its line and the shell goes on; Ctrl-C stops the running
pipeline (or clears the line) and returns to the prompt; Ctrl-D or ``exit`` leaves.

This is the one module that imports prompt_toolkit, and only when the shell starts: a
cmdlet's start-up never pays for it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

# TID253 is ignored here, and only here: this module is the shell, imported only when it
# starts (cmdlets.host.shell.start_shell), never on a cmdlet's start-up path; its classes
# subclass prompt_toolkit's.
from prompt_toolkit import PromptSession  # noqa: TID253
from prompt_toolkit.completion import CompleteEvent, Completer, Completion  # noqa: TID253
from prompt_toolkit.document import Document  # noqa: TID253
from prompt_toolkit.filters import is_searching  # noqa: TID253
from prompt_toolkit.history import FileHistory, History, InMemoryHistory  # noqa: TID253
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent  # noqa: TID253
from prompt_toolkit.search import accept_search  # noqa: TID253

from cmdlets.host.completion import complete
from cmdlets.host.context import Context, Environment, Options
from cmdlets.host.errors import BcsError, ExitStatus
from cmdlets.host.registry import Registry
from cmdlets.host.shell import run_pipeline_text

PROMPT = "bcs> "


class ShellCompleter(Completer):
    """prompt_toolkit's view of :func:`cmdlets.host.completion.complete`."""

    def __init__(self, env: Environment, registry: Registry) -> None:
        self.env = env
        self.registry = registry

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        line = document.text_before_cursor
        try:
            candidates = complete(line, self.registry, self.env)
        except Exception:  # noqa: BLE001 - a completion problem must never end the session
            return
        for candidate in candidates:
            yield Completion(
                candidate.text,
                start_position=candidate.start - len(line),
                display=candidate.display,
                display_meta=candidate.meta,
            )


class StateHistory(FileHistory):
    """History in the state directory, created (0700 folder, 0600 file) on first use; a
    history that cannot be written is reported once and the shell goes on without it."""

    def __init__(self, path: Path, env: Environment) -> None:
        super().__init__(str(path))
        self.path = path
        self.env = env
        self.broken = False

    def store_string(self, string: str) -> None:
        if self.broken:
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                if os.fstat(fd).st_mode & 0o077:
                    os.fchmod(fd, 0o600)  # history may hold names the administrator typed
            finally:
                os.close(fd)
            super().store_string(string)
        except OSError as exc:
            self.broken = True
            self.env.stderr.write(f"WARNING: history not saved to {self.path}: {exc.strerror}\n")
            self.env.stderr.flush()


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("enter", filter=is_searching)
    def _run_found_line(event: KeyPressEvent) -> None:
        """Enter in a Ctrl-R search runs the line found, as in bash and PSReadLine."""
        accept_search()
        event.app.current_buffer.validate_and_handle()

    return bindings


def history_path(env: Environment, registry: Registry) -> Path:
    """``<state dir>/history``: -StateDir cannot be given to the shell, so $BCS_STATE_DIR,
    else ``.bcs/`` beside the inventory."""
    return Context(env, Options(), "bcs", registry).state_path / "history"


def _terminal_width(env: Environment) -> int:
    try:
        return os.get_terminal_size(env.stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return env.terminal_width


def _exit_status(line: str) -> int | None:
    """The status ``exit`` or ``exit N`` asks for, or None when the line is something else."""
    words = line.split()
    if not words or words[0].lower() not in ("exit", "quit") or len(words) > 2:
        return None
    if len(words) == 1:
        return ExitStatus.SUCCESS
    try:
        return int(words[1]) & 0xFF
    except ValueError:
        return None


def interactive_shell(env: Environment, registry: Registry) -> int:
    history: History
    try:
        history = StateHistory(history_path(env, registry), env)
    except (BcsError, OSError):
        history = InMemoryHistory()
    session: PromptSession[str] = PromptSession(
        history=history,
        completer=ShellCompleter(env, registry),
        complete_while_typing=False,
        search_ignore_case=True,
        key_bindings=key_bindings(),
    )
    while True:
        try:
            line = session.prompt(PROMPT)
        except KeyboardInterrupt:
            continue  # Ctrl-C at the prompt drops the line
        except EOFError:
            return ExitStatus.SUCCESS
        status = _exit_status(line)
        if status is not None:
            return status
        run_line(line, dataclasses.replace(env, terminal_width=_terminal_width(env)), registry)


def run_line(line: str, env: Environment, registry: Registry) -> int:
    """Run one typed pipeline; errors have been written, and Ctrl-C only stops the pipeline."""
    try:
        return run_pipeline_text(line, env, registry)
    except KeyboardInterrupt:
        # Ctrl-C outside the pipeline's own handler (while it was being set up or torn down).
        env.stderr.write("interrupted\n")
        env.stderr.flush()
        return ExitStatus.INTERRUPTED
