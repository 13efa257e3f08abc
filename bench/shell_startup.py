"""Start-up of the interactive shell: from spawning ``bcs`` on a pseudo-terminal to its first
prompt, median of five runs. ``run_bench.py`` calls :func:`measure_shell_startup`; run this
file alone to print the figure.

The first run after an install also compiles prompt_toolkit's bytecode; one untimed run
comes first so that the median is of the state a user lives in.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pexpect

BIN = Path(sys.executable).parent
PROMPT = "bcs>"
RUNS = 5


def _environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCS_")}
    env["TERM"] = "xterm-256color"
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"  # pexpect does not answer cursor position requests
    return env


def _time_to_prompt(folder: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    child = pexpect.spawn(str(BIN / "bcs"), cwd=str(folder), env=env, encoding="utf-8", timeout=60)
    child.expect_exact(PROMPT)
    elapsed = time.perf_counter() - started
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    if child.exitstatus != 0:
        raise RuntimeError(f"bcs left the shell with status {child.exitstatus}")
    return elapsed


def measure_shell_startup(runs: int = RUNS) -> float:
    """Median seconds from spawning ``bcs`` on a terminal to its first prompt."""
    env = _environ()
    with tempfile.TemporaryDirectory(prefix="bcs-shell-") as tmp:
        folder = Path(tmp)
        _time_to_prompt(folder, env)  # warm-up: bytecode compiled, files in the page cache
        return statistics.median(_time_to_prompt(folder, env) for _ in range(runs))


if __name__ == "__main__":
    print(f"bcs interactive shell to first prompt: {measure_shell_startup() * 1000:.1f} ms")
