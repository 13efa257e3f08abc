"""A password written inside a path is refused, and never shown or written anywhere.

``//user:pass@host/share``, ``smb://user:pass@host/...`` and ``\\\\user:pass@host\\share`` (with
passwords that hold '/' or '@' too) are refused with exit status 2 by every command that takes
a path — with the plugin loaded or not, in the inventory or on the command line — and the
password appears in no output, error, record or log.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from conftest import write_inventory
from trees import edit

from cmdlets.backup.inventory import load_inventory
from cmdlets.host.errors import InventoryError

MARK = "Zq7Secr3t"  # in every password below, so that any piece of one is found
PASSWORDS = [f"Hunter2-{MARK}", f"pa/ss-{MARK}", f"p@ss/{MARK}/x", f"{MARK}:9/w@"]
PATHS = [
    "smb://backup:{pw}@127.0.0.1:4445/backups/copies",
    "SMB://backup:{pw}@nas01/backups",
    "//backup:{pw}@nas01/backups/copies",
    "\\\\backup:{pw}@nas01\\backups\\copies",
    "cifs://backup:{pw}@nas01/backups",
]
NO_PLUGINS = {"BCS_LOAD_PLUGINS": ""}


def everything_under(folder: Path) -> str:
    found = []
    for root, dirs, files in os.walk(folder):
        found += dirs + files
        for name in files:
            found.append(Path(root, name).read_bytes().decode("utf-8", "replace"))
    return "\n".join(found)


@pytest.fixture
def chain(workdir: Path, bcs) -> Path:
    (workdir / "repo/main").mkdir(parents=True)
    edit(workdir / "data/sql/db.mdf", b"data")
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    return workdir


def assert_refused_without_the_secret(result, workdir: Path) -> None:
    assert result.status == 2, result.stderr
    assert "user name or password" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert MARK not in result.stdout + result.stderr
    assert MARK not in everything_under(workdir / ".bcs")


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("path", PATHS)
def test_a_password_in_a_path_is_refused_and_never_repeated(chain, bcs, path, password):
    target = path.format(pw=password)
    commands = [
        ("Start-BackupCopy", "Daily SQL", "-Path", target),
        ("Start-BackupCopy", "Daily SQL", "-Path", target, "-Credential", "nas"),
        ("Start-BackupCopy", "Daily SQL", "-Path", target, "-RunAsync"),
        ("Start-BackupCopy", "Daily SQL", "-Path", target, "-WhatIf"),
        ("Restore-Backup", "Daily SQL", "-Destination", target),
    ]
    for environ in ({}, NO_PLUGINS):
        for argv in commands:
            assert_refused_without_the_secret(bcs(*argv, environ=environ), chain)
    assert bcs("Get-CopySession").objects == []
    assert not [p for p in Path(chain).rglob("*") if "nas01" in p.name or "127.0.0.1" in p.name]


def test_a_password_in_an_inventory_path_is_refused_and_never_repeated(chain, bcs, shell):
    password = f"pa/ss@{MARK}"
    write_inventory(
        chain,
        f"""\
        version: 1
        repositories:
          - name: Main
            path: ./repo/main
          - name: NAS
            path: smb://backup:{password}@127.0.0.1/backups
          - name: SOBR
            extents:
              - {{name: A, path: '//backup:{password}@nas01/sobr'}}
        jobs:
          - name: Daily SQL
            type: backup-job
            repository: Main
            source: ./data/sql
        """,
    )
    for command in (
        "Test-Inventory",
        "Get-Repository",
        "Get-Backup",
        "Start-BackupCopy 'Daily SQL' -Repository NAS",
        "Start-BackupCopy 'Daily SQL' -Repository NAS -RunAsync",
        "Start-BackupJob 'Daily SQL'",
    ):
        for environ in ({}, NO_PLUGINS):
            done = shell(command, environ=environ)
            assert done.returncode == 2, (command, done.stderr)
            assert "user name or password" in done.stderr, done.stderr
            assert "repositories[1].path" in done.stderr and "Traceback" not in done.stderr
            assert MARK not in done.stdout + done.stderr, (command, done.stderr)
    with pytest.raises(InventoryError) as refused:
        load_inventory(chain / "inventory.yaml")
    problems = "\n".join(refused.value.problems)
    assert "repositories[1].path" in problems and "extents[0].path" in problems
    assert MARK not in problems
    assert MARK not in everything_under(chain / ".bcs")


def test_a_windows_unc_path_is_refused_and_an_at_sign_in_a_local_path_is_fine(chain, bcs, tmp_path):
    unc = bcs("Start-BackupCopy", "Daily SQL", "-Path", "\\\\nas01\\backups")
    assert unc.status == 2 and "//server/share" in unc.stderr, unc.stderr
    assert not list(chain.glob("*nas01*"))
    local = tmp_path / "copies@2026"
    assert bcs("Start-BackupCopy", "Daily SQL", "-Path", str(local)).status == 0
    restored = bcs("Restore-Backup", "Daily SQL", str(tmp_path / "restore@home"))
    assert restored.status == 0, restored.stderr
    assert (tmp_path / "restore@home/db.mdf").read_bytes() == b"data"


def test_restore_refuses_a_shared_folder_destination(chain, bcs):
    # As a local path, //server/... is the folder /server/...: it must not be made there.
    server = f"nas-{uuid.uuid4().hex[:12]}"
    try:
        for environ in ({}, NO_PLUGINS):
            result = bcs("Restore-Backup", "Daily SQL", f"//{server}/backups/x", environ=environ)
            assert result.status == 2 and "local folder" in result.stderr, result.stderr
        assert not Path("/", server).exists()
    finally:
        shutil.rmtree(Path("/", server), ignore_errors=True)
