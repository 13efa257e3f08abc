"""Many processes on one state directory: no lost update, no torn record, bounded waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from cmdlets.store import StateDir

JOBS = ["Daily SQL", "Weekly Files", "Laptops"]


def test_twenty_processes_toggling_jobs_lose_no_update(workdir, shell):
    rounds = 4
    script = " & ".join(
        f"(for i in $(seq {rounds}); do "
        f"Disable-BackupJob -Name '{JOBS[n % 3]}' || echo \"FAILED $?\"; "
        f"Enable-BackupJob -Name '{JOBS[n % 3]}' || echo \"FAILED $?\"; done)"
        for n in range(20)
    )
    # A loaded machine may make a process wait long for a lock: that is not what this test is
    # about (a wait that runs out says so with exit 3), so give the waits room.
    result = shell(f"{script} & wait", timeout=600, environ={"BCS_LOCK_TIMEOUT": "600"})
    assert result.returncode == 0, result.stderr
    assert "FAILED" not in result.stdout, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr

    records = list((workdir / ".bcs" / "jobs").iterdir())
    assert len(records) == 3
    for path in records:
        record = json.loads(path.read_text())  # every record is complete JSON
        assert record["FormatVersion"] == 1
        assert record["Enabled"] is True
        writers = sum(1 for n in range(20) if JOBS[n % 3] == record["Name"])
        # Every Disable and every Enable counted exactly once: nothing was lost.
        assert record["Revision"] == writers * rounds * 2, record
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct((workdir / ".bcs").stat().st_mode & 0o777) == "0o700"
    leftovers = [p for p in (workdir / ".bcs" / "jobs").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def _hold_lock(state_dir: Path, key: str) -> subprocess.Popen[str]:
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from cmdlets.store import StateDir\n"
        "lock = StateDir(Path(sys.argv[1]), holder='Test-Holder').lock('jobs', sys.argv[2])\n"
        "lock.acquire()\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(state_dir), key], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_held_too_long_gives_exit_3_naming_the_holder(workdir, shell):
    holder = _hold_lock(workdir / ".bcs", "Daily SQL")
    try:
        started = time.monotonic()
        result = shell("Disable-BackupJob -Name 'Daily SQL'", environ={"BCS_LOCK_TIMEOUT": "0.5"})
        waited = time.monotonic() - started
        assert result.returncode == 3, result.stderr
        assert f"pid {holder.pid}" in result.stderr
        assert "Test-Holder" in result.stderr
        assert "BCS_LOCK_TIMEOUT" in result.stderr
        assert waited < 60
        # Other jobs are not blocked by that lock.
        assert shell("Disable-BackupJob -Name Laptops").returncode == 0
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    # The kernel released the dead holder's lock: no stale lock remains.
    assert shell("Disable-BackupJob -Name 'Daily SQL'").returncode == 0


def test_killed_writer_leaves_the_previous_record(workdir):
    state = StateDir(workdir / ".bcs")
    state.update("jobs", "x", lambda _: {"Value": 1})
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from cmdlets.store import StateDir\n"
        "state = StateDir(Path(sys.argv[1]))\n"
        "def change(record):\n"
        "    os.kill(os.getpid(), 9)\n"
        "state.update('jobs', 'x', change)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(workdir / ".bcs")], check=False)
    assert proc.returncode == -9
    assert state.read("jobs", "x") == {"FormatVersion": 1, "Value": 1}
    # And the lock it held died with it.
    state.timeout = 1
    assert state.update("jobs", "x", lambda r: {"Value": 2}) == {"Value": 2}


def test_damaged_record_is_a_clear_error(workdir, bcs):
    folder = workdir / ".bcs" / "jobs"
    folder.mkdir(parents=True)
    (folder / "Laptops.json").write_text('{"Enabled": tr')
    result = bcs("Get-BackupJob", "-Name", "Laptops")
    assert result.status == 1
    assert "damaged" in result.stderr and "Laptops.json" in result.stderr
    assert os.path.exists(folder / "Laptops.json")
