"""The front door: ``bcs <Cmdlet> ...`` and every ``<Cmdlet>`` console script.

One top-level handler maps errors to stderr lines and exit statuses (SPEC §4).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from cmdlets.host.binder import bind_arguments
from cmdlets.host.context import Environment
from cmdlets.host.errors import BcsError, ExitStatus, UsageError
from cmdlets.host.errors_output import write_error
from cmdlets.host.invoke import (
    Pipeline,
    invoke,
    make_context,
    options_from,
    stdin_is_pipeline,
    wants_pipeline,
)
from cmdlets.host.output import ObjectWriter
from cmdlets.host.plugins import load
from cmdlets.host.registry import Cmdlet, Registry

HELP_FLAGS = {"-?", "-h", "--help", "-help"}

USAGE = """\
bcs — Backup Copy Shell

Usage:
  bcs <Cmdlet> [-Parameter value ...]     run one cmdlet (every cmdlet is also its own command)
  bcs -Command '<pipeline>'               run one pipeline: 'Get-BackupJob | Disable-BackupJob'
  bcs                                     on a terminal: the interactive shell

  bcs Get-Command                         list the cmdlets
  bcs Get-Help <Cmdlet> [-Examples|-Full] help on one cmdlet

  eval "$(bcs --completion bash)"         Tab completion in bash (zsh: --completion zsh);
                                          add the line to ~/.bashrc to keep it
"""


def load_registry(env: Environment) -> Registry:
    def warn(message: str) -> None:
        env.stderr.write(f"WARNING: {message}\n")

    registry, _ = load(env.environ, warn)
    return registry


def unknown_cmdlet(name: str, registry: Registry) -> UsageError:
    names = registry.names()
    import difflib

    close = difflib.get_close_matches(name.lower(), [n.lower() for n in names], n=3, cutoff=0.5)
    proper = [n for c in close for n in names if n.lower() == c]
    hint = f"; did you mean {', '.join(proper)}?" if proper else "; see: bcs Get-Command"
    return UsageError(
        f"the term '{name}' is not recognized as the name of a cmdlet{hint}",
        target=name,
        error_id="CommandNotFound",
    )


Stage = tuple[Cmdlet, Sequence[Any]]


def run_cmdlet(item: Cmdlet, tokens: Sequence[Any], env: Environment, registry: Registry) -> int:
    """Bind, run and write one cmdlet invocation; returns its exit status."""
    return run_stages([(item, tokens)], env, registry)


def run_stages(stages: list[Stage], env: Environment, registry: Registry) -> int:
    """Run a pipeline of cmdlets in this process, objects passed directly from one to the next;
    the last stage's objects are written (JSON Lines, or formatted on a terminal)."""
    for item, tokens in stages:
        if any(isinstance(t, str) and t.lower() in HELP_FLAGS for t in tokens):
            from cmdlets.host.help import render_help

            env.stdout.write(render_help(item, full=True) + "\n")
            return ExitStatus.SUCCESS
    debug = any(
        isinstance(t, str) and t.lower() in ("-debug", "--debug") for _, ts in stages for t in ts
    )
    contexts: list[Any] = []
    current = stages[0][0]
    try:
        flow: Iterator[Any] | None = None
        output_format = None
        for index, (item, tokens) in enumerate(stages):
            current = item
            options, own = options_from(item, bind_arguments(item, tokens))
            ctx = make_context(env, registry, item, options)
            contexts.append(ctx)
            output_format = options.output_format
            upstream: Pipeline | None = None
            if wants_pipeline(item, own):
                if flow is not None:
                    upstream = enumerate(flow, 1)
                elif index == 0 and stdin_is_pipeline(env):
                    from cmdlets.host.pipeline import read_objects

                    upstream = read_objects(env.stdin)
            elif flow is not None:
                flow = _drained_first(flow, item, ctx, own)
                continue
            flow = _tracking(invoke(item, ctx, own, upstream), item)
        writer = ObjectWriter(env, output_format)
        try:
            for obj in flow or ():
                writer.write(obj)
        finally:
            writer.close()
    except BcsError as exc:
        name = getattr(exc, "cmdlet", None) or current.name
        write_error(env, name, exc)
        return max(exc.exit_status, _status(contexts))
    except KeyboardInterrupt:
        env.stderr.write(f"{current.name}: interrupted\n")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return ExitStatus.SUCCESS
    except Exception as exc:  # noqa: BLE001 - the one place that turns a bug into a clean line
        if debug:
            import traceback

            traceback.print_exception(exc, file=env.stderr)
        message = f"internal error: {type(exc).__name__}: {exc} (run with -Debug for details)"
        write_error(env, current.name, BcsError(message, error_id="InternalError"))
        return ExitStatus.FAILED
    return _status(contexts)


def _tracking(objects: Iterator[Any], item: Cmdlet) -> Iterator[Any]:
    """Tag an error raised while a stage runs with the stage's cmdlet name."""
    try:
        yield from objects
    except BcsError as exc:
        if not getattr(exc, "cmdlet", None):
            exc.cmdlet = item.name  # type: ignore[attr-defined]
        raise


def _drained_first(
    upstream: Iterator[Any], item: Cmdlet, ctx: Any, own: dict[str, Any]
) -> Iterator[Any]:
    """A stage that takes no pipeline input still lets the stages before it run to the end."""
    for _ in upstream:
        pass
    yield from _tracking(invoke(item, ctx, own, None), item)


def _status(contexts: list[Any]) -> int:
    statuses = [int(ExitStatus.SUCCESS)]
    for ctx in contexts:
        statuses.append(ctx.status)
        if ctx.options.error_action != "SilentlyContinue":
            statuses.extend(e.exit_status for e in ctx.errors)
    return max(statuses)


def _quiet_stdout() -> None:
    # The reader went away (``| head``): point stdout at /dev/null so the interpreter's final
    # flush does not raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run(argv: Sequence[str], env: Environment, program: str = "bcs") -> int:
    registry = load_registry(env)
    tokens = list(argv)
    item = registry.get(program)
    if item is not None:
        return run_cmdlet(item, tokens, env, registry)
    if program != "bcs":
        # A cmdlet's own console script whose plugin did not load (the warning said why).
        write_error(env, program, unknown_cmdlet(program, registry))
        return ExitStatus.USAGE
    if not tokens:
        if env.stdin_is_tty and env.stdout_is_tty:
            from cmdlets.host.shell import start_shell

            return start_shell(env, registry)
        env.stdout.write(USAGE)
        return ExitStatus.SUCCESS
    first = tokens[0]
    if first.lower() in HELP_FLAGS:
        env.stdout.write(USAGE)
        return ExitStatus.SUCCESS
    if first.lower() in ("--version", "-version"):
        from cmdlets import __version__

        env.stdout.write(f"bcs {__version__}\n")
        return ExitStatus.SUCCESS
    if first.lower() in ("-command", "--command", "-c"):
        if len(tokens) != 2:
            write_error(env, "bcs", UsageError("-Command takes one pipeline string"))
            return ExitStatus.USAGE
        from cmdlets.host.shell import run_pipeline_text

        return run_pipeline_text(tokens[1], env, registry)
    if first in ("--completion", "--complete"):
        from cmdlets.host.completion import completion_main

        return completion_main(first, tokens[1:], env, registry)
    item = registry.get(first)
    if item is None:
        write_error(env, "bcs", unknown_cmdlet(first, registry))
        return ExitStatus.USAGE
    return run_cmdlet(item, tokens[1:], env, registry)


def main() -> None:
    program = os.path.basename(sys.argv[0])
    if program.endswith(".py") or program in ("__main__", "-c", "-m"):
        program = "bcs"
    env = Environment.from_process()
    try:
        status = run(sys.argv[1:], env, program)
        sys.stdout.flush()
    except KeyboardInterrupt:
        status = ExitStatus.INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        status = ExitStatus.SUCCESS
    sys.exit(int(status))
