"""Faults at exact points of real bcs processes.

``start_injected(workdir, faults, "Start-BackupCopy", ...)`` starts the cmdlet as its own
process, like its console script, after wrapping named functions of bcs's modules:

- ``Fault("cmdlets.backup.copying:_register", "kill-after")`` dies by SIGKILL right after the
  function returns (``kill-before``: right before it runs);
- ``Fault(..., "pause-before", signal_file=p)`` / ``"pause-after"``: creates ``p`` and waits
  until ``p`` is removed, so a test can run another real process at exactly that point;
- ``nth=k`` acts on the k-th call only (1-based).

Functions are patched on their module, so calls through the module's globals (which is every
call inside bcs's own modules, and ``module.function`` calls elsewhere) see the fault.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from conftest import BIN, clean_environ

_BOOT = r"""
import functools, importlib, json, os, signal, sys, time

def wrap(spec):
    module_name, _, attr = spec["target"].partition(":")
    module = importlib.import_module(module_name)
    owner = module
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def act(when):
        if spec["how"] == "kill-" + when:
            os.kill(os.getpid(), signal.SIGKILL)
        if spec["how"] == "pause-" + when:
            flag = spec["signal_file"]
            open(flag, "w").close()
            while os.path.exists(flag):
                time.sleep(0.005)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        calls[0] += 1
        hit = spec["nth"] in (None, calls[0])
        if hit:
            act("before")
        result = original(*args, **kwargs)
        if hit:
            act("after")
        return result

    setattr(owner, name, wrapper)

for spec in json.loads(os.environ.pop("BCS_TEST_FAULTS")):
    wrap(spec)
program = sys.argv[1]
sys.argv = [program] + sys.argv[2:]
from cmdlets.host.runner import main
sys.exit(main())
"""


@dataclasses.dataclass(frozen=True)
class Fault:
    target: str  # "package.module:function" or "package.module:Class.method"
    how: str  # kill-before | kill-after | pause-before | pause-after
    nth: int | None = None
    signal_file: str | None = None


def start_injected(
    workdir: Path,
    faults: list[Fault],
    *argv: str,
    environ: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``argv`` (a cmdlet name and its arguments) with ``faults`` in place."""
    env = clean_environ(environ)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env["BCS_TEST_FAULTS"] = json.dumps([dataclasses.asdict(f) for f in faults])
    return subprocess.Popen(
        [sys.executable, "-c", _BOOT, *argv],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_injected(
    workdir: Path, faults: list[Fault], *argv: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    process = start_injected(workdir, faults, *argv)
    out, err = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)
