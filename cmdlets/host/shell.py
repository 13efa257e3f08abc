"""Pipelines typed as text: ``bcs -Command '<pipeline>'`` (and the interactive shell)."""

from __future__ import annotations

from cmdlets.host.commandline import split_pipeline
from cmdlets.host.context import Environment
from cmdlets.host.errors import BcsError, ExitStatus
from cmdlets.host.errors_output import write_error
from cmdlets.host.registry import Registry


def run_pipeline_text(text: str, env: Environment, registry: Registry) -> int:
    from cmdlets.host.runner import Stage, run_stages, unknown_cmdlet

    try:
        stages: list[Stage] = []
        for words in split_pipeline(text):
            head = words[0]
            item = registry.get(head) if isinstance(head, str) else None
            if item is None:
                raise unknown_cmdlet(head if isinstance(head, str) else ",".join(head), registry)
            stages.append((item, words[1:]))
    except BcsError as exc:
        write_error(env, "bcs", exc)
        return exc.exit_status
    if not stages:
        return ExitStatus.SUCCESS
    return run_stages(stages, env, registry)


BANNER = (
    "bcs {version} — Backup Copy Shell. Get-Command lists the cmdlets, Get-Help <Cmdlet> "
    "explains one.\nTab completes, Ctrl-R searches the history, Ctrl-D or 'exit' leaves.\n"
)


def start_shell(env: Environment, registry: Registry) -> int:
    """The interactive shell (:mod:`cmdlets.host.interactive`). The banner is written before
    prompt_toolkit is imported, the slowest part of the start."""
    from cmdlets import __version__

    env.stdout.write(BANNER.format(version=__version__))
    env.stdout.flush()
    from cmdlets.host.interactive import interactive_shell

    return interactive_shell(env, registry)
