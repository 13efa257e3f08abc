"""Start-up stays light: heavy modules are imported where they are used, not by every cmdlet.

Timing is measured in make bench; here we check the cause of slowness that can be asserted
without a clock: what a cached Get-BackupJob imports."""

from __future__ import annotations

import subprocess
import sys

from conftest import clean_environ

HEAVY = ("yaml", "jsonschema", "prompt_toolkit", "importlib.metadata", "difflib", "hashlib")


def imported_modules(workdir, *argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "cmdlets", *argv],
        cwd=workdir,
        env=clean_environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_a_cached_cmdlet_imports_nothing_heavy(workdir):
    first = imported_modules(workdir, "Get-BackupJob")
    assert "yaml" in first  # the first run parses the inventory and fills the cache
    cached = imported_modules(workdir, "Get-BackupJob")
    assert not [m for m in cached if m.split(".")[0] in HEAVY or m in HEAVY]
