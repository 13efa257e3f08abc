"""`make demo`: build a sample inventory and sample data under demo-run/, then tour bcs.

Every step prints the command as an administrator would type it, then runs the real
console script. The folder is rebuilt from scratch on each run.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo-run"
BIN = Path(sys.executable).parent

INVENTORY = """\
version: 1
server: backup01
repositories:
  - name: Main
    path: ./repositories/main
  - name: Offsite
    path: ./repositories/offsite
  - name: SOBR-1                 # a scale-out repository: each chain lives on one extent
    extents:
      - {name: Ext-A, path: ./repositories/sobr/a}
      - {name: Ext-B, path: ./repositories/sobr/b}
jobs:
  - name: Daily SQL
    type: backup-job
    repository: Main
    source: ./sources/sql
  - name: Mail
    type: backup-job
    repository: Main
    source: ./sources/mail
  - name: File Server
    type: backup-job
    repository: SOBR-1
    source: ./sources/files
  - name: Laptops
    type: agent-policy           # agent backup policy: its backups cannot be copied
    repository: Main
    source: ./sources/laptops
"""


def make_sources(root: Path) -> None:
    rng = random.Random(42)
    for name, files in (("sql", 6), ("mail", 5), ("files", 12), ("laptops", 4)):
        folder = root / "sources" / name
        for i in range(files):
            path = folder / f"dir{i % 3}" / f"file{i:02d}.dat"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rng.randbytes(rng.randint(10_000, 400_000)))
        (folder / "empty").mkdir(exist_ok=True)


def make_repositories(root: Path) -> None:
    for sub in ("main", "offsite", "sobr/a", "sobr/b"):
        (root / "repositories" / sub).mkdir(parents=True)


def change_sources(root: Path) -> None:
    """A day of changes: a new file, a modified one, a deleted one."""
    sql = root / "sources" / "sql"
    (sql / "dir0" / "new-table.dat").write_bytes(random.Random(7).randbytes(50_000))
    with open(sql / "dir1" / "file01.dat", "r+b") as f:
        f.write(b"changed")
    (sql / "dir2" / "file02.dat").unlink()


def corrupt_restore_point(root: Path) -> tuple[Path, bytes]:
    point = sorted((root / "repositories" / "main" / "Daily SQL").glob("*.vbk"))[0]
    original = point.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    point.write_bytes(bytes(damaged))
    return point, original


def step(title: str, command: str, expect_failure: bool = False) -> None:
    print(f"\n### {title}\nPS> {command}", flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BCS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"
    result = subprocess.run(
        # Output here goes to a log as often as to a terminal: ask for tables either way.
        ["bash", "-c", command + " -OutputFormat Table"],
        cwd=DEMO,
        env=env,
    )
    if result.returncode != 0 and not expect_failure:
        sys.exit(f"demo step failed with exit status {result.returncode}: {command}")
    if expect_failure:
        print(f"(exit status {result.returncode})")


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir()
    (DEMO / "inventory.yaml").write_text(INVENTORY)
    make_sources(DEMO)
    make_repositories(DEMO)
    print(f"Sample inventory and data in {DEMO}")
    step("Validate the inventory", "Test-Inventory")
    step("Repositories, extents and free space", "Get-Repository")
    step("Backup jobs", "Get-BackupJob")
    step("Disable a job, then look at it", "Disable-BackupJob -Name 'File Server' -PassThru")
    step("What would enabling every job do?", "Get-BackupJob | Enable-BackupJob -WhatIf")
    step("Enable it again", "Enable-BackupJob -Name 'File Server' -PassThru")
    step("A typo gets a suggestion (exit status 2)", "Get-BackupJob -Nmae x", expect_failure=True)
    step("Run every job once: full restore points", "Get-BackupJob | Start-BackupJob")
    change_sources(DEMO)
    step("A day later: incrementals", "Start-BackupJob -Name 'Daily SQL',Mail")
    step("The backups in the repositories and extents", "Get-Backup")
    step("The chain of one backup", "Get-RestorePoint -Backup 'Daily SQL'")
    step("Every file re-read and checked against the metadata", "Get-Backup | Test-Backup")
    step(
        "Restore the first restore point of Daily SQL",
        "Restore-Backup -Backup 'Daily SQL' -Destination restored/sql -RestorePoint 0",
    )
    step(
        "A disabled job writes nothing (exit status 1)",
        "Disable-BackupJob Mail; Start-BackupJob Mail",
        expect_failure=True,
    )
    step("Enable it again", "Enable-BackupJob Mail")

    # Copying backups: the heart of bcs.
    step(
        "Copy a backup to another repository",
        "Get-Backup -Name 'Daily SQL' | Start-BackupCopy -Repository Offsite",
    )
    step(
        "Copy two backups to a local folder, in one session",
        "Start-BackupCopy -Backup Mail,'File Server' -Path copies/usb",
    )
    step("The copies are backups too", "Get-Backup -Origin Copy")
    step(
        "Agent policy backups cannot be copied (exit status 1)",
        "Start-BackupCopy -Backup Laptops -Path copies/usb",
        expect_failure=True,
    )
    damaged, original = corrupt_restore_point(DEMO)
    print(f"\n(The demo flips one byte of {damaged.name} in the source, to make a copy fail.)")
    step(
        "A copy that fails: the session waits for the administrator (exit status 1)",
        "Start-BackupCopy -Backup 'Daily SQL',Mail -Path copies/nas -RunAsync | Wait-CopySession",
        expect_failure=True,
    )
    step("Sessions that need action", "Get-CopySession -State ActionRequired")
    step("The job stays disabled, held by the session", "Get-BackupJob")
    step(
        "What happened",
        "Get-CopySession -State ActionRequired | Select-Object -First 1 | Get-CopySession -Log",
    )
    damaged.write_bytes(original)
    print(f"\n(The demo repairs {damaged.name}.)")
    step(
        "Retry copies only what was not copied yet",
        "Get-CopySession -State ActionRequired | Resume-CopySession -Action Retry",
    )
    step("Every session", "Get-CopySession")
    step("Every job enabled again", "Get-BackupJob")


if __name__ == "__main__":
    main()
