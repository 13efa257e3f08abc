"""Restoring into, and copying to, a folder that others can write, while they swap folders.

A hostile local user who can write in the destination waits until bcs (running as root) has
made a folder, then replaces it with a symbolic link to a private folder elsewhere. Each test
pauses a real Restore-Backup (or Start-BackupCopy) process at the exact step, swaps the folder
from the test, resumes the process, and checks that nothing outside the destination was
created, removed, changed or chmodded, and that the command failed cleanly (exit 1, one line
that says what happened) or went on safely.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import wait_for
from injection import Fault, start_injected
from trees import edit, snapshot

RESTORE = "cmdlets.backup.restore"


@pytest.fixture
def backup(workdir: Path, bcs) -> Path:
    """'Daily SQL' with one full: a/one.txt, a/two.txt, b/c/three.txt, in that archive order."""
    (workdir / "repo/main").mkdir(parents=True)
    source = workdir / "data/sql"
    edit(source / "a/one.txt", b"one")
    edit(source / "a/two.txt", b"two")
    edit(source / "b/c/three.txt", b"three")
    for folder in ("a", "b", "b/c"):
        (source / folder).chmod(0o755)
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    return workdir


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """Someone else's private folder (0700), with a file, and a folder named like ours."""
    folder = tmp_path / "secret"
    edit(folder / "private.txt", b"private")
    edit(folder / "one.txt/keep.txt", b"keep")  # named like a file of the restore
    edit(folder / "c/keep.txt", b"keep")  # named like a folder of the restore
    os.chmod(folder, 0o700)
    return folder


def state_of(folder: Path) -> tuple:
    """Everything about ``folder`` an attack could change: its own mode and times, and all
    that is in it."""
    st = os.lstat(folder)
    return (st.st_mode, st.st_mtime_ns, st.st_uid, snapshot(folder))


def swap_for_link(folder: Path, to: Path, moved: Path) -> None:
    """What the hostile user does: move the folder away, put a link to ``to`` in its place."""
    os.rename(folder, moved)
    os.symlink(to, folder)


def paused(workdir: Path, fault: Fault, *argv: str) -> subprocess.Popen[str]:
    process = start_injected(workdir, [fault], *argv)
    assert fault.signal_file is not None
    flag = Path(fault.signal_file)
    wait_for(lambda: flag.exists() or process.poll() is not None, f"{argv[0]} to reach the pause")
    if process.poll() is not None:
        out, err = process.communicate()
        pytest.fail(f"{argv[0]} ended before the pause ({process.returncode}): {out}{err}")
    return process


def resume(process: subprocess.Popen[str], fault: Fault) -> tuple[int, str, str]:
    assert fault.signal_file is not None
    Path(fault.signal_file).unlink()
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def assert_refused_cleanly(status: int, err: str) -> None:
    assert status == 1, err
    assert "Traceback" not in err
    assert "a symbolic link or a file took its place" in err, err
    assert len(err.strip().splitlines()) == 1, err


# Where the restore is paused, and which folder of the destination is swapped for a link.
# Every function named here exists in the restore before this fix too, except _make_dir.
SWAPS = {
    # The folders are made, no file is written yet.
    "folders-made": (Fault(f"{RESTORE}:_make_tree", "pause-after"), "b"),
    # One folder is made, the folder inside it is not.
    "one-folder-made": (Fault(f"{RESTORE}:_make_dir", "pause-after", nth=2), "b"),
    # a/one.txt is written; a/two.txt goes into the same folder next.
    "next-file-same-folder": (Fault(f"{RESTORE}:_write_file", "pause-before", nth=2), "a"),
    # a/ is done; b/c/three.txt goes into another folder next.
    "next-file-other-folder": (Fault(f"{RESTORE}:_write_file", "pause-before", nth=3), "b/c"),
    # Every file is written; the folders get their modes and times last.
    "before-folder-modes": (Fault(f"{RESTORE}:_finish_folders", "pause-before"), "b/c"),
}


@pytest.mark.parametrize("step", list(SWAPS))
def test_restore_never_writes_or_chmods_through_a_folder_swapped_for_a_link(
    backup, secret, tmp_path, step
):
    fault, swapped = SWAPS[step]
    fault = Fault(fault.target, fault.how, fault.nth, str(tmp_path / "paused"))
    shared = tmp_path / "shared"  # a folder others can write, like /srv/restore
    shared.mkdir(mode=0o777)
    destination = shared / "out"
    before = state_of(secret)

    process = paused(backup, fault, "Restore-Backup", "Daily SQL", str(destination))
    swap_for_link(destination / swapped, secret, tmp_path / "moved")
    status, out, err = resume(process, fault)

    assert state_of(secret) == before
    assert_refused_cleanly(status, err)
    assert out == ""
    assert str(destination / swapped) in err


def test_force_removal_never_removes_through_a_folder_swapped_for_a_link(
    backup, secret, tmp_path
):
    # The destination holds a folder where the restore point has the file a/one.txt: -Force
    # removes that folder. Meanwhile a/ becomes a link to a folder with its own one.txt/.
    destination = tmp_path / "out"
    edit(destination / "a/one.txt/old.txt", b"in the way")
    edit(destination / "mine.txt", b"not in the restore point")
    before = state_of(secret)
    # _remove runs for b and b/c (made anew: nothing in the way), then for a/one.txt.
    fault = Fault(f"{RESTORE}:_remove", "pause-before", nth=3, signal_file=str(tmp_path / "p"))

    process = paused(backup, fault, "Restore-Backup", "Daily SQL", str(destination), "-Force")
    swap_for_link(destination / "a", secret, tmp_path / "moved")
    status, _, err = resume(process, fault)

    assert state_of(secret) == before
    assert_refused_cleanly(status, err)
    # What -Force removed and wrote went into the destination's own folder, wherever it went.
    assert (tmp_path / "moved/one.txt").read_bytes() == b"one"
    assert (destination / "mine.txt").read_bytes() == b"not in the restore point"


def test_setuid_and_setgid_bits_are_not_restored(workdir, bcs, tmp_path):
    (workdir / "repo/main").mkdir(parents=True)
    source = workdir / "data/sql"
    edit(source / "bin/tool", b"#!/bin/sh\n", mode=0o4755)
    edit(source / "bin/group-tool", b"#!/bin/sh\n", mode=0o2751)
    edit(source / "plain", b"x", mode=0o640)
    (source / "team").mkdir()
    (source / "team").chmod(0o3775)  # setgid and sticky
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    out = tmp_path / "out"
    restored = bcs("Restore-Backup", "Daily SQL", str(out))
    assert restored.status == 0, restored.stderr
    modes = {rel: entry[1] for rel, entry in snapshot(out).items()}
    assert modes == {
        "bin": 0o755,
        "bin/tool": 0o755,
        "bin/group-tool": 0o751,
        "plain": 0o640,
        "team": 0o1775,  # the sticky bit only keeps others from removing files
    }


def test_an_empty_destination_is_refused(backup, bcs):
    before = sorted(os.listdir(backup))
    for argv in (["-Destination", ""], [""], ["-Destination:"]):
        result = bcs("Restore-Backup", "Daily SQL", *argv)
        assert result.status == 2, (argv, result.stderr)
        assert "-Destination" in result.stderr and "Traceback" not in result.stderr
    assert sorted(os.listdir(backup)) == before


# -- the copy engine's target: LocalLocation walks with descriptors ------------------------------


@pytest.fixture
def two_points(backup, bcs) -> Path:
    edit(backup / "data/sql/a/one.txt", b"one, changed")
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    return backup


# open_write: the .vbk, the .vib, then the .vbm, each written under a temporary name.
@pytest.mark.parametrize("nth", [1, 2, 3])
def test_a_copy_never_writes_through_its_backup_folder_swapped_for_a_link(
    two_points, secret, bcs, tmp_path, nth
):
    target = tmp_path / "copies"
    target.mkdir(mode=0o777)
    before = state_of(secret)
    fault = Fault(
        "cmdlets.backup.location:LocalLocation.open_write",
        "pause-before",
        nth=nth,
        signal_file=str(tmp_path / "paused"),
    )
    process = paused(two_points, fault, "Start-BackupCopy", "Daily SQL", "-Path", str(target))
    swap_for_link(target / "Daily SQL", secret, tmp_path / "moved")
    status, _, err = resume(process, fault)

    assert state_of(secret) == before
    assert status == 1 and "Traceback" not in err, err
    (session,) = bcs("Get-CopySession").objects
    assert session["State"] == "ActionRequired"
    assert "symbolic link" in (session["Reason"] or "") + err, (session, err)

    # Undo removes what the session recorded creating: through the link, it must not.
    undone = bcs("Resume-CopySession", session["Id"], "-Action", "Undo", "-Force")
    assert "Traceback" not in undone.stderr
    assert state_of(secret) == before
