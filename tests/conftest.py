"""Shared fixtures: a sample inventory, and runners for cmdlets in process and as processes."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cmdlets.host.context import Environment
from cmdlets.host.runner import run

BIN = Path(sys.executable).parent

SAMPLE_INVENTORY = """\
version: 1
server: backup01
repositories:
  - name: Main
    path: ./repo/main
  - name: Offsite
    path: ./repo/offsite
  - name: SOBR-1
    extents:
      - {name: Ext-A, path: ./sobr/a}
      - {name: Ext-B, path: ./sobr/b}
jobs:
  - name: Daily SQL
    type: backup-job
    repository: Main
    source: ./data/sql
  - name: Weekly Files
    type: backup-job
    repository: SOBR-1
    source: ./data/files
  - name: Laptops
    type: agent-policy
    repository: Main
    source: ./data/laptops
    enabled: false
"""


@dataclasses.dataclass
class Result:
    status: int
    stdout: str
    stderr: str

    @property
    def objects(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "inventory.yaml").write_text(SAMPLE_INVENTORY)
    for sub in ("data/sql", "data/files", "data/laptops"):
        (tmp_path / sub).mkdir(parents=True)
    return tmp_path


def clean_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCS_")}
    env.update(extra or {})
    return env


@pytest.fixture
def bcs(workdir: Path) -> Callable[..., Result]:
    """Run a cmdlet in this process: ``bcs("Get-BackupJob", "-Name", "x", input=[...])``."""

    def invoke(
        *argv: str,
        input: list[Any] | str | bytes | None = None,
        environ: dict[str, str] | None = None,
        program: str = "bcs",
    ) -> Result:
        if isinstance(input, list):
            data = "".join(json.dumps(o) + "\n" for o in input).encode()
        elif isinstance(input, str):
            data = input.encode()
        else:
            data = input or b""
        out, err = io.StringIO(), io.StringIO()
        env = Environment(
            stdin=io.BytesIO(data),
            stdout=out,
            stderr=err,
            environ=clean_environ(environ),
            cwd=workdir,
            stdin_is_pipe=input is not None,
        )
        status = run(list(argv), env, program)
        return Result(int(status), out.getvalue(), err.getvalue())

    return invoke


@pytest.fixture
def shell(workdir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a Unix shell command line in the work folder with the venv's commands on PATH."""

    def run_shell(
        command: str, timeout: float = 120, environ: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = clean_environ(environ)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        return subprocess.run(
            ["bash", "-c", command],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    return run_shell


def write_inventory(folder: Path, text: str) -> Path:
    path = folder / "inventory.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def mount_tmpfs(tmp_path: Path):
    """Mount a small tmpfs (root only; skipped with the reason otherwise)."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def small_tmpfs(mount_tmpfs) -> Path:
    return mount_tmpfs("small", "size=1m")


def start_process(workdir: Path, *argv: str) -> subprocess.Popen[str]:
    """Start a cmdlet's console script as its own process (stdin at /dev/null)."""
    return subprocess.Popen(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=workdir,
        env=clean_environ(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` (an event to wait for, not a time) within a generous bound."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
