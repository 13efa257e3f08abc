"""Cmdlets as typed functions: the ``@cmdlet`` decorator, parameter declarations, the registry.

A cmdlet is a function whose keyword parameters are its PowerShell parameters. Each is
annotated ``Annotated[<type>, Param(...)]``; the Python name ``restore_point`` becomes
``-RestorePoint``. The function's docstring is its help (summary, description, ``Examples:``).
The function receives the invocation :class:`~cmdlets.host.context.Context` first and yields
the objects it writes.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, Union

# Pipeline binding: accept objects of these TypeNames by value and bind this property of them
# (an empty string binds the whole object; "String" accepts JSON strings).
ByValue = Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class Param:
    position: int | None = None
    mandatory: bool = False
    by_value: ByValue | None = None
    by_property: bool = False
    aliases: tuple[str, ...] = ()
    values: tuple[str, ...] | None = None
    help: str = ""
    # What live names complete this parameter in the shell: backup, job, repository, session...
    completes: str | None = None


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A bound-ready description of one parameter, derived from the function signature."""

    name: str
    python_name: str
    kind: str  # str | int | float | bool | duration | object | list | stream
    decl: Param
    default: Any
    common: bool = False

    @property
    def is_switch(self) -> bool:
        return self.kind == "bool"

    @property
    def takes_many(self) -> bool:
        return self.kind in ("list", "stream")

    @property
    def from_pipeline(self) -> bool:
        return self.decl.by_value is not None or self.decl.by_property

    def all_names(self) -> tuple[str, ...]:
        return (self.name, *self.decl.aliases)


def pascal_case(python_name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in python_name.split("_"))


_KINDS: dict[Any, str] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    timedelta: "duration",
    dict: "object",
}


def _kind_of(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind_of(inner[0])
    if origin in (list, tuple):
        return "list"
    if origin in (Iterator, Iterable):
        return "stream"
    if origin is dict:
        return "object"
    kind = _KINDS.get(annotation)
    if kind is None:
        raise TypeError(f"unsupported parameter type {annotation!r}")
    return kind


@dataclasses.dataclass
class Cmdlet:
    """One registered cmdlet. Parameters are derived lazily (start-up time matters)."""

    name: str
    function: Callable[..., Iterable[Any] | None]
    output_type: str | None = None
    changes_state: bool = False
    destructive: bool = False
    plugin: str = "builtin"
    _parameters: list[Parameter] | None = dataclasses.field(default=None, repr=False)

    @property
    def noun(self) -> str:
        return self.name.split("-", 1)[1]

    @property
    def verb(self) -> str:
        return self.name.split("-", 1)[0]

    @property
    def help_text(self) -> str:
        return inspect.cleandoc(self.function.__doc__ or "")

    @property
    def synopsis(self) -> str:
        return self.help_text.split("\n", 1)[0]

    @property
    def parameters(self) -> list[Parameter]:
        if self._parameters is None:
            self._parameters = self._derive_parameters()
        return self._parameters

    def own_parameters(self) -> list[Parameter]:
        return [p for p in self.parameters if not p.common]

    def pipeline_parameters(self) -> list[Parameter]:
        return [p for p in self.parameters if p.from_pipeline]

    def _derive_parameters(self) -> list[Parameter]:
        from cmdlets.host.common import common_parameters

        hints = typing.get_type_hints(self.function, include_extras=True)
        params: list[Parameter] = []
        signature = inspect.signature(self.function)
        for index, (python_name, sig) in enumerate(signature.parameters.items()):
            if index == 0:
                continue  # the Context
            annotation = hints[python_name]
            decl = Param()
            if typing.get_origin(annotation) is typing.Annotated:
                base, *extras = typing.get_args(annotation)
                decl = next((e for e in extras if isinstance(e, Param)), decl)
                annotation = base
            default = None if sig.default is inspect.Parameter.empty else sig.default
            params.append(
                Parameter(
                    pascal_case(python_name), python_name, _kind_of(annotation), decl, default
                )
            )
        params.extend(common_parameters(self, {p.name.lower() for p in params}))
        return params


def cmdlet(
    name: str,
    *,
    output_type: str | None = None,
    changes_state: bool = False,
    destructive: bool = False,
) -> Callable[[Callable[..., Any]], Cmdlet]:
    """Declare a function as the cmdlet ``name`` (Verb-Noun)."""
    if "-" not in name:
        raise ValueError(f"cmdlet name {name!r} is not Verb-Noun")

    def wrap(function: Callable[..., Any]) -> Cmdlet:
        return Cmdlet(name, function, output_type, changes_state, destructive)

    return wrap


class Registry:
    """Cmdlets by case-insensitive name, as registered by plugins."""

    def __init__(self) -> None:
        self._cmdlets: dict[str, Cmdlet] = {}
        # What plugin loading found (cmdlets.host.plugins.PluginInfo), for Get-Plugin.
        self.plugins: list[Any] = []
        # Location providers of the loaded plugins (cmdlets.backup.location.LocationProvider),
        # in load order: the first that handles a path reaches it.
        self.locations: list[Any] = []

    def add(self, item: Cmdlet, plugin: str) -> None:
        key = item.name.lower()
        if key in self._cmdlets:
            other = self._cmdlets[key].plugin
            raise ValueError(f"cmdlet {item.name} is already provided by plugin '{other}'")
        item.plugin = plugin
        self._cmdlets[key] = item

    def get(self, name: str) -> Cmdlet | None:
        return self._cmdlets.get(name.lower())

    def __iter__(self) -> Iterator[Cmdlet]:
        return iter(sorted(self._cmdlets.values(), key=lambda c: (c.noun, c.verb)))

    def names(self) -> list[str]:
        return sorted(c.name for c in self._cmdlets.values())
