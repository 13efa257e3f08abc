"""One backup that cannot be read never breaks commands about the others; a backup belongs to
the job that writes its folder, not to the name inside its .vbm; a job writes only into its own
folder and cleans up after its own crashes (issue 9: findings 8, 10, 11, 13)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import unicodedata
import uuid
from pathlib import Path

import pytest
from conftest import wait_for
from injection import Fault, run_injected, start_injected
from trees import edit

MiB = 1024 * 1024


@pytest.fixture
def chains(workdir: Path, bcs) -> Path:
    """'Daily SQL' on Main (two points) and 'Weekly Files' on SOBR-1 (one point)."""
    for sub in ("repo/main", "repo/offsite", "sobr/a", "sobr/b"):
        (workdir / sub).mkdir(parents=True)
    edit(workdir / "data/sql/db.mdf", os.urandom(200_000))
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    edit(workdir / "data/sql/log.ldf", os.urandom(50_000))
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    edit(workdir / "data/files/share.doc", os.urandom(100_000))
    assert bcs("Start-BackupJob", "Weekly Files").status == 0
    return workdir


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("WARNING:")]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line and not line.startswith("WARNING:")]


def by_name(objects: list[dict]) -> dict[str, dict]:
    return {f"{o['Name']}/{o['Origin']}": o for o in objects}


def assert_other_backups_work(bcs, tmp_path: Path) -> None:
    """Test-Backup, Get-RestorePoint and Restore-Backup of an unrelated backup succeed, with
    at most one warning line and no error."""
    for argv in (
        ("Test-Backup", "-Backup", "Weekly Files"),
        ("Get-RestorePoint", "-Backup", "Weekly Files"),
        ("Restore-Backup", "-Backup", "Weekly Files", "-Destination", str(tmp_path / "out")),
    ):
        result = bcs(*argv)
        assert result.status == 0, (argv, result.stderr)
        assert len(warnings(result.stderr)) <= 1 and errors(result.stderr) == [], result.stderr
        assert result.objects, argv
    assert (tmp_path / "out/share.doc").is_file()


def test_an_unplugged_copy_is_listed_unreachable_and_the_other_backups_still_work(
    chains, bcs, shell, mount_tmpfs, tmp_path
):
    usb = mount_tmpfs("usb", "size=16m")
    copied = bcs("Start-BackupCopy", "-Backup", "Daily SQL", "-Path", str(usb / "copies"))
    assert copied.status == 0, copied.stderr
    (copy,) = bcs("Get-Backup", "-Origin", "Copy").objects
    subprocess.run(["umount", "-l", str(usb)], check=True)

    listed = bcs("Get-Backup")
    assert listed.status == 0, listed.stderr
    assert errors(listed.stderr) == []
    found = by_name(listed.objects)
    assert set(found) == {"Daily SQL/Job", "Weekly Files/Job", "Daily SQL/Copy"}
    unplugged = found["Daily SQL/Copy"]
    assert unplugged.get("State") == "Unreachable" and unplugged["Id"] == copy["Id"]
    assert str(usb / "copies/Daily SQL") in unplugged["Reason"]
    # Listed from what its registration recorded.
    assert unplugged["RestorePoints"] == 2 and unplugged["Size"] == copy["Size"]
    assert found["Daily SQL/Job"]["State"] == found["Weekly Files/Job"]["State"] == "Available"

    assert_other_backups_work(bcs, tmp_path)
    # Naming the chain its job writes is not ambiguous with the unreachable copy of it.
    assert bcs("Test-Backup", "-Backup", "Daily SQL").status == 0

    # Its restore points are known from its registration; restoring or copying it says why
    # it cannot.
    points = bcs("Get-RestorePoint", "-Backup", copy["Id"])
    assert points.status == 0 and len(points.objects) == 2, points.stderr
    restore = bcs("Restore-Backup", copy["Id"], str(tmp_path / "r"))
    assert restore.status == 1 and "unreachable" in restore.stderr
    assert not (tmp_path / "r").exists()
    again = bcs("Start-BackupCopy", "-Backup", copy["Id"], "-Path", str(tmp_path / "again"))
    assert again.status == 1 and "unreachable" in again.stderr
    assert bcs("Get-CopySession").objects[0]["Id"] == copied.objects[0]["Id"]

    # Between real processes: the warning once, however many backups are piped.
    piped = shell("Get-Backup | Test-Backup -OutputFormat Json")
    results = {o["BackupId"]: o for o in map(json.loads, piped.stdout.splitlines())}
    assert len(results) == 3, piped.stderr
    assert results[copy["Id"]]["Result"] == "Failed"
    assert "does not exist" in results[copy["Id"]]["Errors"][0]
    assert sum(r["Result"] == "Success" for r in results.values()) == 2
    assert len(warnings(piped.stderr)) == 1, piped.stderr
    assert "unreachable" in piped.stderr and errors(piped.stderr) == []


def test_a_damaged_vbm_is_listed_damaged_and_the_other_backups_still_work(
    chains, bcs, shell, tmp_path
):
    broken = chains / "repo/main/Broken"
    broken.mkdir()
    (broken / "Broken.vbm").write_text('{"FormatVersion": 1, "BackupId": ')

    listed = bcs("Get-Backup")
    assert listed.status == 0 and errors(listed.stderr) == [], listed.stderr
    found = by_name(listed.objects)
    assert set(found) == {"Daily SQL/Job", "Weekly Files/Job", "Broken/Job"}
    damaged = found["Broken/Job"]
    assert damaged["State"] == "Damaged" and "not valid JSON" in damaged["Reason"]
    assert damaged["Id"] == str(broken) and damaged["CreationTime"] is None

    assert_other_backups_work(bcs, tmp_path)
    tested = bcs("Test-Backup", "-Backup", "Broken")
    assert tested.status == 1 and tested.objects[0]["Result"] == "Failed"
    assert "Broken.vbm" in tested.objects[0]["Errors"][0]
    for argv in (
        ("Restore-Backup", "Broken", str(tmp_path / "r")),
        ("Start-BackupCopy", "-Backup", "Broken", "-Path", str(tmp_path / "c")),
        ("Get-RestorePoint", "-Backup", "Broken"),
    ):
        refused = bcs(*argv)
        assert refused.status == 1 and "is damaged" in refused.stderr, (argv, refused.stderr)
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()

    piped = shell("Get-Backup | Test-Backup -OutputFormat Json")
    results = [json.loads(line) for line in piped.stdout.splitlines()]
    assert sorted(r["Result"] for r in results) == ["Failed", "Success", "Success"]
    assert len(warnings(piped.stderr)) == 1, piped.stderr
    assert "Broken" in piped.stderr and errors(piped.stderr) == []


def _make_fifo(path: Path, elsewhere: Path) -> None:
    os.mkfifo(path)


def _make_symlink(path: Path, elsewhere: Path) -> None:
    os.symlink(elsewhere, path)


def _make_device(path: Path, elsewhere: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, 0o644 | 0o020000, os.makedev(1, 5))  # like /dev/zero: endless


def _make_huge(path: Path, elsewhere: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(4 * 1024 * MiB)  # sparse: costs no disk


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (_make_fifo, "FIFO"),
        (_make_symlink, "symlink"),
        (_make_device, "character device"),
        (_make_huge, "larger than"),
    ],
    ids=["fifo", "symlink", "device", "huge"],
)
def test_a_vbm_that_is_not_a_small_regular_file_is_damaged_without_hanging(
    chains, shell, make, what
):
    folder = chains / "repo/main/Odd"
    folder.mkdir()
    # A symlink to a sound .vbm: following it would let a folder pass for another backup.
    make(folder / "Odd.vbm", chains / "repo/main/Daily SQL/Daily SQL.vbm")
    # The subprocess timeout is the bound: a reader that opens the FIFO blocks forever. The
    # address-space limit is far below the 4 GiB of the huge file, far above what bcs needs.
    done = shell("ulimit -v 2000000; Get-Backup -OutputFormat Json", timeout=60)
    assert done.returncode == 0, done.stderr
    found = by_name([json.loads(line) for line in done.stdout.splitlines()])
    assert found["Odd/Job"].get("State") == "Damaged", found["Odd/Job"]
    assert what in found["Odd/Job"]["Reason"]
    assert found["Daily SQL/Job"]["State"] == "Available"


def test_a_backup_named_in_nfd_is_found_by_its_nfc_spelling(chains, bcs):
    nfd = unicodedata.normalize("NFD", "Café")
    folder = chains / "repo/main" / nfd
    shutil.copytree(chains / "repo/main/Daily SQL", folder)
    vbm = folder / "Daily SQL.vbm"
    meta = json.loads(vbm.read_text())
    meta["BackupId"] = str(uuid.uuid4())
    vbm.write_text(json.dumps(meta))
    nfc = unicodedata.normalize("NFC", "Café")
    assert nfc != nfd

    assert [b["Id"] for b in bcs("Get-Backup", "-Name", nfc).objects] == [meta["BackupId"]]
    assert [b["Id"] for b in bcs("Get-Backup", "-Name", "CAF*").objects] == [meta["BackupId"]]
    tested = bcs("Test-Backup", "-Backup", nfc)
    assert tested.status == 0 and tested.objects[0]["Result"] == "Success", tested.stderr


# -- finding 11: a backup is its job's by where the job writes -----------------------------------


def test_a_folder_claiming_a_jobs_name_does_not_hold_that_job(chains, bcs, tmp_path):
    stray = chains / "repo/offsite/Stray"
    shutil.copytree(chains / "repo/main/Daily SQL", stray)
    vbm = stray / "Daily SQL.vbm"
    meta = json.loads(vbm.read_text())
    assert meta["JobName"] == "Daily SQL"  # claims the job, but no job writes Offsite/Stray
    meta["BackupId"] = str(uuid.uuid4())
    vbm.write_text(json.dumps(meta))

    flag = tmp_path / "paused"
    copy = start_injected(
        chains,
        [Fault("cmdlets.backup.copying:copy_backup", "pause-before", signal_file=str(flag))],
        "Start-BackupCopy",
        "-Backup",
        "Stray",
        "-Path",
        str(tmp_path / "copies"),
    )
    try:
        wait_for(flag.exists, "the copy of Stray to start copying")
        (daily,) = bcs("Get-BackupJob", "-Name", "Daily SQL").objects
        assert daily["HeldBy"] == [] and daily["Enabled"] is True
        # The job is free to run meanwhile: the copy does not read its chain.
        assert bcs("Start-BackupJob", "Daily SQL").status == 0
    finally:
        flag.unlink(missing_ok=True)
        _, err = copy.communicate(timeout=300)
    assert copy.returncode == 0, err
    (session,) = bcs("Get-CopySession").objects
    log = bcs("Get-CopySession", "-Id", session["Id"], "-Log").objects
    assert not [e for e in log if e.get("Event") == "HoldTaken"]
    # Nor is it listed among the job's backups.
    assert [b["Name"] for b in bcs("Get-Backup", "-Job", "Daily SQL").objects] == ["Daily SQL"]


def test_copying_a_jobs_own_chain_still_holds_the_job(chains, bcs, tmp_path):
    flag = tmp_path / "paused"
    copy = start_injected(
        chains,
        [Fault("cmdlets.backup.copying:copy_backup", "pause-before", signal_file=str(flag))],
        "Start-BackupCopy",
        "-Backup",
        "Weekly Files",
        "-Path",
        str(tmp_path / "copies"),
    )
    try:
        wait_for(flag.exists, "the copy to start copying")
        (weekly,) = bcs("Get-BackupJob", "-Name", "Weekly Files").objects
        assert weekly["Enabled"] is False and len(weekly["HeldBy"]) == 1
    finally:
        flag.unlink(missing_ok=True)
        _, err = copy.communicate(timeout=300)
    assert copy.returncode == 0, err
    assert bcs("Get-BackupJob", "-Name", "Weekly Files").objects[0]["Enabled"] is True


# -- finding 13: the orphan of a killed first run -------------------------------------------------


def test_a_first_run_killed_before_its_vbm_leaves_an_orphan_the_next_run_removes(chains, bcs):
    folder = chains / "repo/offsite/Night"
    inventory = chains / "inventory.yaml"
    inventory.write_text(
        inventory.read_text() + "  - name: Night\n    type: backup-job\n    repository: Offsite\n"
        "    source: ./data/night\n"
    )
    edit(chains / "data/night/n.bin", os.urandom(300_000))
    killed = run_injected(
        chains,
        [Fault("cmdlets.backup.restorepoint:write_metadata", "kill-before")],
        "Start-BackupJob",
        "-Name",
        "Night",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (orphan,) = os.listdir(folder)  # durable under its final name, named by no metadata
    assert orphan.startswith("Night_") and orphan.endswith(".vbk")
    # Not the job's restore points: never touched.
    keep = ["notes.txt", "Other_2026-01-01T000000.vbk", "Night_2026-13-01T000000.vbk"]
    for name in keep:
        (folder / name).write_text("not a restore point of Night")
    os.mkdir(folder / "Night_2020-01-01T000000.vib")  # the pattern, but a folder
    os.symlink(chains / "data/night/n.bin", folder / "Night_2020-01-02T000000.vbk")  # a symlink

    result = bcs("Start-BackupJob", "-Name", "Night")
    assert result.status == 0, result.stderr
    (point,) = result.objects
    assert point["Index"] == 0 and point["Kind"] == "Full"
    assert sorted(os.listdir(folder)) == sorted(
        [
            "Night.vbm",
            point["File"],
            *keep,
            "Night_2020-01-01T000000.vib",
            "Night_2020-01-02T000000.vbk",
        ]
    )
    tested = bcs("Test-Backup", "-Backup", "Night")
    assert tested.status == 0 and tested.objects[0]["Files"] == 1, tested.stderr


# -- finding 10: a job writes only into its own folder -------------------------------------------


def test_a_job_refuses_to_append_to_a_registered_copy_in_its_folder(chains, bcs):
    copied = bcs("Start-BackupCopy", "-Backup", "Daily SQL", "-Repository", "Offsite")
    assert copied.status == 0, copied.stderr
    (copy,) = bcs("Get-Backup", "-Origin", "Copy").objects
    folder = chains / "repo/offsite/Daily SQL"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    # The job now writes to Offsite, where the copy of its old chain lives.
    inventory = chains / "inventory.yaml"
    inventory.write_text(
        inventory.read_text().replace(
            "  - name: Daily SQL\n    type: backup-job\n    repository: Main",
            "  - name: Daily SQL\n    type: backup-job\n    repository: Offsite",
        )
    )
    refused = bcs("Start-BackupJob", "-Name", "Daily SQL")
    assert refused.status == 1, refused.stderr
    assert copy["Id"] in refused.stderr and str(folder) in refused.stderr
    assert "copy" in refused.stderr and "Traceback" not in refused.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert bcs("Test-Backup", "-Backup", copy["Id"]).status == 0


def test_a_job_refuses_a_folder_a_live_copy_session_copies_into(chains, bcs, tmp_path):
    inventory = chains / "inventory.yaml"
    inventory.write_text(
        inventory.read_text() + "  - name: Night\n    type: backup-job\n    repository: Offsite\n"
        "    source: ./data/night\n"
    )
    edit(chains / "data/night/n.bin", os.urandom(10_000))
    folder = chains / "repo/offsite/Night"
    flag = tmp_path / "paused"
    copy = start_injected(
        chains,
        [
            Fault(
                "cmdlets.backup.copying:_write_copy_metadata", "pause-before", signal_file=str(flag)
            )
        ],
        "Start-BackupCopy",
        "-Backup",
        "Daily SQL",
        "-Repository",
        "Offsite",
        "-Name",
        "Night",
    )
    try:
        wait_for(flag.exists, "the copy to have copied its files")
        (session,) = bcs("Get-CopySession").objects
        before = sorted(os.listdir(folder))
        refused = bcs("Start-BackupJob", "-Name", "Night")
        assert refused.status == 1, refused.stderr
        assert session["Id"] in refused.stderr and str(folder) in refused.stderr
        assert sorted(os.listdir(folder)) == before
    finally:
        flag.unlink(missing_ok=True)
        _, err = copy.communicate(timeout=300)
    assert copy.returncode == 0, err
    (registered,) = bcs("Get-Backup", "-Origin", "Copy").objects
    assert registered["Path"] == str(folder)
    assert bcs("Test-Backup", "-Backup", registered["Id"]).status == 0
    # Once registered, the folder is a copy: still not the job's to write.
    again = bcs("Start-BackupJob", "-Name", "Night")
    assert again.status == 1 and registered["Id"] in again.stderr


def test_a_copy_in_a_repository_with_a_damaged_vbm_is_listed_from_its_registration(chains, bcs):
    copied = bcs("Start-BackupCopy", "-Backup", "Daily SQL", "-Repository", "Offsite")
    assert copied.status == 0, copied.stderr
    (copy,) = bcs("Get-Backup", "-Origin", "Copy").objects
    (chains / "repo/offsite/Daily SQL/Daily SQL.vbm").write_text("[")

    listed = bcs("Get-Backup", "-Origin", "Copy")
    assert listed.status == 0 and errors(listed.stderr) == [], listed.stderr
    (damaged,) = listed.objects
    assert (damaged["Id"], damaged["State"]) == (copy["Id"], "Damaged")
    assert damaged["RestorePoints"] == copy["RestorePoints"] == 2
    assert damaged["SourceBackupId"] == copy["SourceBackupId"]
    assert bcs("Test-Backup", "-Backup", "Weekly Files").status == 0
