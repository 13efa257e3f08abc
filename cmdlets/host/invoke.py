"""Running one cmdlet: split common parameters off, bind the pipeline, call the function."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from typing import Any

from cmdlets.host.binder import bind_object
from cmdlets.host.context import Context, Environment, Options
from cmdlets.host.errors import BcsError, UsageError
from cmdlets.host.registry import Cmdlet, Registry

Pipeline = Iterable[tuple[int, Any]]


def options_from(item: Cmdlet, bound: dict[str, Any]) -> tuple[Options, dict[str, Any]]:
    """Separate the common parameters (into :class:`Options`) from the cmdlet's own."""
    options = Options()
    own: dict[str, Any] = {}
    common = {p.python_name for p in item.parameters if p.common}
    for key, value in bound.items():
        if key in common:
            setattr(options, key, value)
        else:
            own[key] = value
    return options, own


def make_context(env: Environment, registry: Registry, item: Cmdlet, options: Options) -> Context:
    return Context(env, options, item.name, registry)


def stdin_is_pipeline(env: Environment) -> bool:
    """Objects come on stdin only through a pipe or a redirected file, never from a terminal or
    /dev/null, so that a cmdlet run from cron or CI without input still does its work."""
    if env.stdin_is_pipe is not None:
        return env.stdin_is_pipe
    if env.stdin_is_tty:
        return False
    try:
        mode = os.fstat(env.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def wants_pipeline(item: Cmdlet, own: dict[str, Any]) -> bool:
    """A cmdlet reads the pipeline when it can take input there and none of its pipeline
    parameters was given on the command line."""
    params = item.pipeline_parameters()
    return bool(params) and not any(p.python_name in own for p in params)


def _check_mandatory(item: Cmdlet, kwargs: dict[str, Any]) -> None:
    for param in item.own_parameters():
        if param.decl.mandatory and kwargs.get(param.python_name) in (None, []):
            raise UsageError(
                f"missing mandatory parameter -{param.name} (see: Get-Help {item.name})",
                target=param.name,
                error_id="MissingMandatoryParameter",
            )


def _defaults(item: Cmdlet, kwargs: dict[str, Any]) -> dict[str, Any]:
    full = {p.python_name: p.default for p in item.own_parameters()}
    full.update(kwargs)
    return full


def _call(item: Cmdlet, ctx: Context, kwargs: dict[str, Any]) -> Iterator[Any]:
    _check_mandatory(item, kwargs)
    result = item.function(ctx, **_defaults(item, kwargs))
    if result is not None:
        yield from result


def invoke(
    item: Cmdlet, ctx: Context, own: dict[str, Any], pipeline: Pipeline | None
) -> Iterator[Any]:
    """Yield what the cmdlet writes. With a pipeline the cmdlet runs once per input object,
    except that a parameter typed as a stream receives all of them in one call."""
    if pipeline is None:
        yield from _call(item, ctx, own)
        return
    bound_objects = _bound(item, ctx, pipeline)
    streams = [p for p in item.pipeline_parameters() if p.kind == "stream"]
    if streams:
        name = streams[0].python_name

        def values() -> Iterator[Any]:
            for bound in bound_objects:
                value = bound.get(name)
                if value is not None:
                    yield from value if isinstance(value, list) else [value]

        yield from _call(item, ctx, {**own, name: values()})
        return
    for bound in bound_objects:
        yield from _call(item, ctx, {**own, **bound})


def _bound(item: Cmdlet, ctx: Context, pipeline: Pipeline) -> Iterator[dict[str, Any]]:
    """Each pipeline object bound to parameters; one that binds to nothing is an error record
    and the next object is read."""
    for line, obj in pipeline:
        try:
            yield bind_object(item, obj, line)
        except BcsError as exc:
            ctx.write_error(exc)
