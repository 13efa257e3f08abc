"""Plugins: distributions that declare an entry point in the group ``bcs.plugins``.

The entry point names a module (or object) with at least one of the hooks in :data:`HOOKS`:
``bcs_cmdlets() -> Iterable[Cmdlet]`` adds cmdlets, ``bcs_locations() ->
Iterable[LocationProvider]`` adds a way to reach another kind of path (a shared folder; see
``cmdlets.backup.location``). The built-in cmdlets register through the very same path
(``backup-copy-shell`` declares ``builtin = cmdlets.builtin``).
``BCS_LOAD_PLUGINS`` (comma list of entry-point names; empty loads none) chooses which outside
plugins load. A plugin that fails to load or has a malformed hook is reported by name in a
warning and skipped; it never stops the command.

Entry points are found by reading ``entry_points.txt`` of the distributions on ``sys.path``
directly: ``importlib.metadata`` alone costs about 70 ms to import, over half the start-up
budget of a cmdlet.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cmdlets.host.registry import Cmdlet, Registry

GROUP = "bcs.plugins"
CORE_DISTRIBUTION = "backup_copy_shell"
CMDLETS_HOOK = "bcs_cmdlets"
LOCATIONS_HOOK = "bcs_locations"
HOOKS = (CMDLETS_HOOK, LOCATIONS_HOOK)
# What a location provider must have, checked when its plugin loads (see check_provider).
PROVIDER_METHODS = ("handles", "open", "split")


@dataclasses.dataclass
class EntryPoint:
    name: str
    value: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == CORE_DISTRIBUTION


@dataclasses.dataclass
class PluginInfo:
    entry_point: EntryPoint
    module: Any = None
    cmdlets: list[str] = dataclasses.field(default_factory=list)
    locations: list[str] = dataclasses.field(default_factory=list)
    error: str | None = None
    enabled: bool = False
    loaded: bool = False


def _parse_entry_points(text: str) -> Iterable[tuple[str, str]]:
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == GROUP and "=" in line:
            name, value = line.split("=", 1)
            yield name.strip(), value.strip()


def discover(path: list[str] | None = None) -> list[EntryPoint]:
    """Entry points of group ``bcs.plugins``; the first distribution of a name on the path wins."""
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for folder in path if path is not None else sys.path:
        try:
            entries = sorted(os.scandir(folder or "."), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if not entry.name.endswith((".dist-info", ".egg-info")):
                continue
            stem = entry.name.rsplit(".", 1)[0]
            dist, _, version = stem.partition("-")
            dist = dist.replace("-", "_").replace(".", "_").lower()
            if dist in seen:
                continue
            try:
                with open(os.path.join(entry.path, "entry_points.txt"), encoding="utf-8") as f:
                    text = f.read()
            except OSError:
                continue
            seen.add(dist)
            found.extend(EntryPoint(n, v, dist, version) for n, v in _parse_entry_points(text))
    return found


def chosen(entry_points: list[EntryPoint], environ: Mapping[str, str]) -> list[EntryPoint]:
    wanted = environ.get("BCS_LOAD_PLUGINS")
    if wanted is None:
        return entry_points
    names = {n.strip().lower() for n in wanted.split(",") if n.strip()}
    return [ep for ep in entry_points if ep.builtin or ep.name.lower() in names]


def _resolve(value: str) -> Any:
    module_name, _, attr = value.partition(":")
    obj: Any = importlib.import_module(module_name.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def check_hooks(plugin: Any) -> dict[str, Callable[[], Iterable[Any]]]:
    """Reject a plugin whose hooks have the wrong shape now, not when they are called."""
    hooks: dict[str, Callable[[], Iterable[Any]]] = {}
    for name in HOOKS:
        function = getattr(plugin, name, None)
        if function is None:
            continue
        if not callable(function):
            raise TypeError(f"its {name} is not a function")
        required = [
            p
            for p in inspect.signature(function).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if required:
            raise TypeError(f"hook {name}() must take no arguments, it takes {required[0].name}")
        hooks[name] = function
    if not hooks:
        raise TypeError(f"it has none of the hooks {', '.join(h + '()' for h in HOOKS)}")
    return hooks


def check_provider(item: Any) -> str:
    """The name of a location provider, or TypeError if it lacks part of the protocol."""
    name = getattr(item, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{LOCATIONS_HOOK}() returned {item!r}, which has no name")
    for method in PROVIDER_METHODS:
        if not callable(getattr(item, method, None)):
            raise TypeError(f"location provider '{name}' has no {method}() method")
    return name


def load(
    environ: Mapping[str, str], warn: Callable[[str], None], path: list[str] | None = None
) -> tuple[Registry, list[PluginInfo]]:
    registry = Registry()
    infos: list[PluginInfo] = []
    found = discover(path)
    picked = chosen(found, environ)
    registry.plugins = infos
    for ep in found:
        info = PluginInfo(ep)
        infos.append(info)
        if ep not in picked:
            continue
        info.enabled = True
        try:
            info.module = _resolve(ep.value)
            hooks = check_hooks(info.module)
            items = list(hooks[CMDLETS_HOOK]()) if CMDLETS_HOOK in hooks else []
            for item in items:
                if not isinstance(item, Cmdlet):
                    raise TypeError(f"{CMDLETS_HOOK}() returned {item!r}, not a Cmdlet")
            providers = list(hooks[LOCATIONS_HOOK]()) if LOCATIONS_HOOK in hooks else []
            names = [check_provider(p) for p in providers]
            for item in items:
                try:
                    registry.add(item, ep.name)
                    info.cmdlets.append(item.name)
                except ValueError as exc:
                    warn(f"plugin '{ep.name}': {exc}; its {item.name} is ignored")
            registry.locations.extend(providers)
            info.locations.extend(names)
            info.loaded = True
        except Exception as exc:  # noqa: BLE001 - any failure of outside code is reported, not fatal
            info.error = f"{type(exc).__name__}: {exc}"
            warn(f"plugin '{ep.name}' ({ep.distribution}) failed to load, skipped: {info.error}")
    return registry, infos
