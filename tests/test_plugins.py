"""Plugins through the entry-point group bcs.plugins: found, chosen, and failing safely."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from cmdlets.builtin import CMDLETS
from cmdlets.host.plugins import discover, load

ROOT = Path(__file__).resolve().parent.parent

GOOD = '''
from typing import Annotated
from cmdlets.host.registry import Param, cmdlet

@cmdlet("Get-Greeting", output_type="Demo.Greeting")
def get_greeting(ctx, name: Annotated[str, Param(position=0)] = "world"):
    """Say hello.

    Examples:
      Get-Greeting Ann
    """
    yield {"TypeName": "Demo.Greeting", "Text": f"hello {name}"}

def bcs_cmdlets():
    return [get_greeting]
'''

BROKEN = "raise RuntimeError('cannot start')\n"
BAD_HOOK = "def bcs_cmdlets(registry):\n    return []\n"


def add_plugin(site: Path, dist: str, name: str, module: str, code: str) -> None:
    (site / f"{module}.py").write_text(code)
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "entry_points.txt").write_text(f"[bcs.plugins]\n{name} = {module}\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    add_plugin(folder, "bcs_greeting", "greeting", "bcs_greeting_plugin", GOOD)
    add_plugin(folder, "bcs_broken", "broken", "bcs_broken_plugin", BROKEN)
    add_plugin(folder, "bcs_badhook", "badhook", "bcs_badhook_plugin", BAD_HOOK)
    return folder


def test_outside_plugin_adds_cmdlets_and_failures_are_warnings(site, shell):
    result = shell("bcs Get-Greeting Ann", environ={"PYTHONPATH": str(site)})
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"TypeName": "Demo.Greeting", "Text": "hello Ann"}
    assert "plugin 'broken' (bcs_broken) failed to load" in result.stderr
    assert "cannot start" in result.stderr
    assert "plugin 'badhook'" in result.stderr and "must take no arguments" in result.stderr
    assert "Traceback" not in result.stderr


def test_get_plugin_lists_every_plugin(site, shell):
    result = shell("bcs Get-Plugin 2>/dev/null", environ={"PYTHONPATH": str(site)})
    plugins = {o["Name"]: o for o in map(json.loads, result.stdout.splitlines())}
    assert plugins["builtin"]["Builtin"] and plugins["builtin"]["Loaded"]
    assert plugins["greeting"]["Cmdlets"] == ["Get-Greeting"]
    assert not plugins["broken"]["Loaded"] and "cannot start" in plugins["broken"]["Error"]
    assert not plugins["badhook"]["Loaded"]


def test_bcs_load_plugins_chooses(site, shell):
    env = {"PYTHONPATH": str(site), "BCS_LOAD_PLUGINS": "greeting"}
    only = shell("bcs Get-Greeting", environ=env)
    assert only.returncode == 0 and only.stderr == ""
    none = shell("bcs Get-Greeting", environ={**env, "BCS_LOAD_PLUGINS": ""})
    assert none.returncode == 2 and "not recognized" in none.stderr
    # The built-in cmdlets always load: they are the product, registered like a plugin.
    assert shell("Get-BackupJob", environ={**env, "BCS_LOAD_PLUGINS": ""}).returncode == 0


def test_builtin_cmdlets_come_through_the_entry_point():
    found = [ep for ep in discover() if ep.builtin]
    assert [(ep.name, ep.value) for ep in found] == [("builtin", "cmdlets.builtin")]
    warned: list[str] = []
    registry, _ = load({"BCS_LOAD_PLUGINS": ""}, warned.append)
    assert warned == []
    assert {c.name for c in registry} == {c.name for c in CMDLETS}
    assert all(c.plugin == "builtin" for c in registry)


def test_every_builtin_cmdlet_has_a_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) - {"bcs"} == {c.name for c in CMDLETS}
    assert set(scripts.values()) == {"cmdlets.host.runner:main"}


def test_every_cmdlet_has_help_with_examples(bcs):
    for item in CMDLETS:
        assert item.synopsis, item.name
        result = bcs("Get-Help", item.name, "-Examples")
        assert result.status == 0
        assert item.name in result.stdout.split("EXAMPLES", 1)[1], item.name


LOCATIONS_ONLY = """
class Provider:
    name = "demo"

    def handles(self, path):
        return path.startswith("demo://")

    def open(self, path, login):
        raise OSError(5, "no demo server")

    def split(self, path):
        return "demo://top", path[len("demo://top/"):]

def bcs_locations():
    return [Provider()]
"""
BAD_PROVIDER = "class P:\n    name = 'bad'\n\ndef bcs_locations():\n    return [P()]\n"
NO_HOOK = "VALUE = 1\n"


def test_a_plugin_may_bring_only_location_providers_checked_when_it_loads(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    add_plugin(site, "bcs_demo", "demo", "bcs_demo_plugin", LOCATIONS_ONLY)
    add_plugin(site, "bcs_bad", "bad", "bcs_bad_plugin", BAD_PROVIDER)
    add_plugin(site, "bcs_none", "none", "bcs_none_plugin", NO_HOOK)
    monkeypatch.syspath_prepend(str(site))
    warned: list[str] = []
    registry, infos = load({}, warned.append, path=[str(site)])
    by_name = {info.entry_point.name: info for info in infos}
    assert by_name["demo"].loaded and by_name["demo"].locations == ["demo"]
    assert [p.name for p in registry.locations] == ["demo"]
    assert not by_name["bad"].loaded and "has no handles() method" in by_name["bad"].error
    assert not by_name["none"].loaded and "none of the hooks" in by_name["none"].error
    assert len(warned) == 2
