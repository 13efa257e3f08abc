"""Copy sessions end to end: Start-BackupCopy, checks, holds, failure, Retry/SkipFailed/Undo."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
from conftest import start_process as start
from conftest import wait_for
from trees import edit, snapshot

MiB = 1024 * 1024


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def job(bcs, name: str) -> dict:
    (found,) = bcs("Get-BackupJob", "-Name", name).objects
    return found


def session(bcs, session_id: str) -> dict:
    (found,) = bcs("Get-CopySession", "-Id", session_id).objects
    return found


@pytest.fixture
def backups(workdir: Path, bcs) -> Path:
    """Two chains: 'Daily SQL' on Main (3 points) and 'Weekly Files' on SOBR-1."""
    for sub in ("repo/main", "repo/offsite", "sobr/a", "sobr/b"):
        (workdir / sub).mkdir(parents=True)
    rng = random.Random(1)
    sql = workdir / "data/sql"
    edit(sql / "db.mdf", rng.randbytes(3 * MiB))
    edit(sql / "log/db.ldf", rng.randbytes(MiB))
    for step in range(3):
        if step:
            edit(sql / f"log/tail{step}.ldf", rng.randbytes(512 * 1024))
        assert bcs("Start-BackupJob", "Daily SQL").status == 0
    edit(workdir / "data/files/share.doc", rng.randbytes(2 * MiB))
    assert bcs("Start-BackupJob", "Weekly Files").status == 0
    return workdir


def test_copy_to_a_repository_is_verified_registered_and_restorable(backups, bcs, tmp_path):
    result = bcs("Start-BackupCopy", "-Backup", "Daily SQL", "-Repository", "Offsite")
    assert result.status == 0, result.stderr
    (done,) = result.objects
    assert done["TypeName"] == "BackupCopy.CopySession"
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    assert done["Backups"][0]["Status"] == "Copied"
    assert done["BytesCopied"] == done["BytesTotal"] > 0 and done["Progress"] == 100.0

    source = backups / "repo/main/Daily SQL"
    copy = backups / "repo/offsite/Daily SQL"
    src_files, copy_files = files_of(source), files_of(copy)
    vbm = "Daily SQL.vbm"
    assert {k: v for k, v in copy_files.items() if k != vbm} == {
        k: v for k, v in src_files.items() if k != vbm
    }
    src_meta, copy_meta = json.loads(src_files[vbm]), json.loads(copy_files[vbm])
    assert copy_meta.pop("BackupId") != src_meta.pop("BackupId")
    assert copy_meta == src_meta

    (original,) = bcs("Get-Backup", "-Name", "Daily SQL", "-Origin", "Job").objects
    (registered,) = bcs("Get-Backup", "-Origin", "Copy").objects
    assert registered["SourceBackupId"] == original["Id"]
    assert registered["CopySessionId"] == done["Id"]
    assert registered["Repository"] == "Offsite" and registered["Path"] == str(copy)
    assert bcs("Test-Backup", "-Backup", registered["Id"]).status == 0

    for point in ("0", "latest"):
        a, b = tmp_path / f"from-original-{point}", tmp_path / f"from-copy-{point}"
        assert bcs("Restore-Backup", original["Id"], str(a), "-RestorePoint", point).status == 0
        assert bcs("Restore-Backup", registered["Id"], str(b), "-RestorePoint", point).status == 0
        assert snapshot(a) == snapshot(b)

    assert job(bcs, "Daily SQL")["Enabled"] is True and job(bcs, "Daily SQL")["HeldBy"] == []
    events = [e["Event"] for e in bcs("Get-CopySession", "-Id", done["Id"][:8], "-Log").objects]
    for expected in (
        "ChecksPassed",
        "HoldTaken",
        "BackupStarted",
        "FileCopied",
        "BackupCopied",
        "HoldReleased",
        "SessionFinished",
    ):
        assert expected in events, events
    assert not [p for p in copy.iterdir() if p.name.startswith(".")]


def test_copy_to_a_new_folder_and_by_pipeline_in_one_session(backups, shell):
    result = shell("Get-Backup | Start-BackupCopy -Path copies/usb")
    assert result.returncode == 0, result.stderr
    (done,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(b["Name"] for b in done["Backups"]) == ["Daily SQL", "Weekly Files"]
    assert done["Target"]["Kind"] == "Folder"
    for name in ("Daily SQL", "Weekly Files"):
        assert (backups / "copies/usb" / name / f"{name}.vbm").is_file()
    listed = shell("Get-Backup -Origin Copy").stdout.splitlines()
    assert len(listed) == 2


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["Laptops", "-Repository", "Offsite"], 1, "agent backup policy"),
        (["Weekly Files", "-Repository", "SOBR-1"], 1, "same scale-out repository"),
        (["Weekly Files", "-Path", "sobr/b/elsewhere"], 1, "same scale-out repository"),
        (["Daily SQL", "-Repository", "Main"], 1, "already exists"),
        (["Daily SQL", "-Repository", "Nowhere"], 1, "no repository named 'Nowhere'"),
        (["Daily SQL", "-Path", "copies", "-Name", "../escape"], 2, "-Name"),
        (["Daily SQL", "-Path", "copies", "-Name", "a/b"], 2, "-Name"),
        (["Daily SQL", "-Path", "//nas/share"], 2, "bcs-smb"),
        (["Daily SQL"], 2, "-Repository"),
        (["Daily SQL", "-Repository", "Offsite", "-Path", "x"], 2, "either"),
        (["No Such", "-Repository", "Offsite"], 1, "no backup named"),
    ],
)
def test_checks_fail_before_anything_is_touched(backups, bcs, argv, status, message):
    if argv[0] == "Laptops":
        bcs("Enable-BackupJob", "Laptops")
        edit(backups / "data/laptops/x", b"x")
        assert bcs("Start-BackupJob", "Laptops").status == 0
    if "sobr/b/elsewhere" in argv:
        # Make sure the chain is on Ext-B, whichever extent had more room.
        home = "a" if (backups / "sobr/a/Weekly Files").exists() else "b"
        argv = [a.replace("sobr/b", f"sobr/{home}") for a in argv]
    before = snapshot(backups)
    # Without plugins, as without bcs-smb installed: a shared folder names the plugin it needs.
    result = bcs("Start-BackupCopy", "-Backup", *argv, environ={"BCS_LOAD_PLUGINS": ""})
    assert result.status == status, result.stderr
    assert message in result.stderr
    assert snapshot(backups) == before
    assert bcs("Get-CopySession").objects == []


def test_not_enough_space_is_checked_up_front(backups, bcs, small_tmpfs):
    result = bcs("Start-BackupCopy", "Daily SQL", "-Path", str(small_tmpfs))
    assert result.status == 1 and "not enough free space" in result.stderr
    assert os.listdir(small_tmpfs) == []


def corrupt(path: Path) -> bytes:
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 3] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


def test_corrupt_backup_fails_alone_then_retry_copies_only_what_is_missing(backups, bcs):
    bcs("Disable-BackupJob", "Weekly Files")  # it must stay disabled after the session
    vbk = next((backups / "repo/main/Daily SQL").glob("*.vbk"))
    original = corrupt(vbk)
    result = bcs("Start-BackupCopy", "-Backup", "Daily SQL,Weekly Files", "-Path", "copies")
    assert result.status == 1
    (failed,) = result.objects
    assert failed["State"] == "ActionRequired" and failed["Result"] == "None"
    status = {b["Name"]: b for b in failed["Backups"]}
    assert status["Weekly Files"]["Status"] == "Copied"
    assert status["Daily SQL"]["Status"] == "Failed"
    assert "checksum" in status["Daily SQL"]["Error"] and vbk.name in status["Daily SQL"]["Error"]
    assert "Daily SQL" in failed["Reason"]
    # Corrupt data never lands under its final name; the good files of the chain did.
    assert not (backups / "copies/Daily SQL" / vbk.name).exists()
    assert not (backups / "copies/Daily SQL/Daily SQL.vbm").exists()
    # The jobs stay disabled until the session is finalized.
    assert job(bcs, "Daily SQL")["Enabled"] is False
    assert job(bcs, "Daily SQL")["HeldBy"] == [failed["Id"]]
    refused = bcs("Enable-BackupJob", "Daily SQL")
    assert refused.status == 1 and failed["Id"] in refused.stderr
    assert bcs("Start-BackupJob", "Daily SQL").status == 1
    assert bcs("Get-CopySession", "-State", "ActionRequired").objects[0]["Id"] == failed["Id"]

    vbk.write_bytes(original)  # the administrator repairs the source
    retried = bcs("Resume-CopySession", "-Id", failed["Id"][:6], "-Action", "retry")
    assert retried.status == 0, retried.stderr
    (done,) = retried.objects
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    (action,) = done["Actions"]
    assert action["Action"] == "Retry" and action["Result"] == "Success"
    daily_bytes = status["Daily SQL"]["BytesTotal"]
    # Retry wrote the failed file and the metadata, not the backup that was already copied.
    assert vbk.stat().st_size <= action["BytesWritten"] < daily_bytes + 64 * 1024
    assert bcs("Test-Backup", "-Backup", "Daily SQL").objects  # the original is fine
    for copy in bcs("Get-Backup", "-Origin", "Copy").objects:
        assert bcs("Test-Backup", copy["Id"]).status == 0
    assert job(bcs, "Daily SQL")["Enabled"] is True
    assert job(bcs, "Weekly Files")["Enabled"] is False
    assert job(bcs, "Weekly Files")["HeldBy"] == []


def failed_session(backups, bcs, target: str = "copies") -> tuple[dict, Path, bytes]:
    vib = sorted((backups / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    result = bcs("Start-BackupCopy", "Daily SQL,Weekly Files", "-Path", target)
    assert result.status == 1
    return result.objects[0], vib, original


def test_skip_failed_keeps_the_good_copies(backups, bcs):
    failed, _, _ = failed_session(backups, bcs)
    result = bcs("Resume-CopySession", failed["Id"], "-Action", "SkipFailed")
    assert result.status == 0, result.stderr
    (done,) = result.objects
    assert (done["State"], done["Result"]) == ("Stopped", "Warning")
    status = {b["Name"]: b["Status"] for b in done["Backups"]}
    assert status == {"Daily SQL": "Skipped", "Weekly Files": "Copied"}
    assert not (backups / "copies/Daily SQL").exists()
    assert (backups / "copies/Weekly Files/Weekly Files.vbm").is_file()
    assert [b["Name"] for b in bcs("Get-Backup", "-Origin", "Copy").objects] == ["Weekly Files"]
    assert job(bcs, "Daily SQL")["Enabled"] and job(bcs, "Weekly Files")["Enabled"]


def test_undo_removes_exactly_what_the_session_created(backups, bcs):
    target = backups / "copies"
    target.mkdir()
    edit(target / "keep.txt", b"was here before")
    (target / "old-folder").mkdir()
    before = snapshot(target)
    failed, _, _ = failed_session(backups, bcs)
    # Someone drops a file into a folder the session created: Undo must not take it.
    edit(target / "Daily SQL/notes.txt", b"mine")
    refused = bcs("Resume-CopySession", failed["Id"], "-Action", "Undo")
    assert refused.status == 2 and "-Force" in refused.stderr
    assert bcs("Resume-CopySession", failed["Id"], "-Action", "Undo", "-WhatIf").status == 0
    assert session(bcs, failed["Id"])["State"] == "ActionRequired"

    result = bcs("Resume-CopySession", failed["Id"], "-Action", "Undo", "-Confirm:$false")
    assert result.status == 0, result.stderr
    (done,) = result.objects
    assert (done["State"], done["Result"]) == ("Stopped", "Failed")
    assert {b["Status"] for b in done["Backups"]} == {"Undone"}
    assert "Daily SQL" in done["Reason"]  # the folder that was not empty is named
    after = snapshot(target)
    assert after.pop("Daily SQL/notes.txt")[3] == b"mine"
    assert after.pop("Daily SQL")[0] == "dir"
    assert {k: v for k, v in after.items()} == before
    assert bcs("Get-Backup", "-Origin", "Copy").objects == []
    assert job(bcs, "Daily SQL")["Enabled"] and job(bcs, "Weekly Files")["Enabled"]
    again = bcs("Resume-CopySession", failed["Id"], "-Action", "Retry")
    assert again.status == 1 and "only a session in ActionRequired" in again.stderr


def test_undo_removes_the_folders_it_made_for_path(backups, bcs):
    failed, _, _ = failed_session(backups, bcs, target="deep/new/copies")
    assert bcs("Resume-CopySession", failed["Id"], "-Action", "Undo", "-Force").status == 0
    assert not (backups / "deep").exists()


def test_holds_of_several_sessions(backups, bcs):
    first, vib, original = failed_session(backups, bcs, target="one")
    second = bcs("Start-BackupCopy", "Daily SQL", "-Path", "two")
    assert second.status == 1
    second_id = second.objects[0]["Id"]
    assert sorted(job(bcs, "Daily SQL")["HeldBy"]) == sorted([first["Id"], second_id])
    vib.write_bytes(original)
    assert bcs("Resume-CopySession", first["Id"], "-Action", "Retry").status == 0
    assert job(bcs, "Daily SQL")["Enabled"] is False  # still held by the second session
    assert job(bcs, "Daily SQL")["HeldBy"] == [second_id]
    assert bcs("Resume-CopySession", second_id, "-Action", "SkipFailed").status == 0
    assert job(bcs, "Daily SQL")["Enabled"] is True


def test_what_if_starts_nothing(backups, bcs):
    result = bcs("Start-BackupCopy", "Daily SQL", "-Repository", "Offsite", "-WhatIf")
    assert result.status == 0 and "What if:" in result.stderr
    assert not (backups / "repo/offsite/Daily SQL").exists()
    assert bcs("Get-CopySession").objects == []
    assert job(bcs, "Daily SQL")["HeldBy"] == []


@pytest.fixture
def big_chain(workdir: Path, bcs) -> Path:
    """A chain of several larger files, so that a copy takes long enough to interrupt."""
    (workdir / "repo/main").mkdir(parents=True)
    sql = workdir / "data/sql"
    rng = random.Random(2)
    edit(sql / "db.mdf", rng.randbytes(24 * MiB))
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    for i in range(5):
        edit(sql / f"log{i}.ldf", rng.randbytes(6 * MiB))
        assert bcs("Start-BackupJob", "Daily SQL").status == 0
    return workdir


def test_async_copy_stop_and_retry(big_chain, bcs):
    started = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies", "-RunAsync")
    assert started.status == 0
    (working,) = started.objects
    assert working["State"] in ("Working", "Starting") and working["ProcessId"]
    assert job(bcs, "Daily SQL")["HeldBy"] == [working["Id"]]
    stopped = bcs("Stop-CopySession", working["Id"])
    if stopped.status == 0:
        waited = bcs("Wait-CopySession", working["Id"], "-Timeout", "120s")
        (after,) = waited.objects
        if after["State"] == "ActionRequired":
            assert after["Reason"] == "stopped by request"
            assert job(bcs, "Daily SQL")["Enabled"] is False
            assert bcs("Resume-CopySession", working["Id"], "-Action", "Retry").status == 0
    else:  # it finished before the stop arrived
        assert "not running" in stopped.stderr
    (done,) = bcs("Wait-CopySession", working["Id"]).objects
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    assert job(bcs, "Daily SQL")["Enabled"] is True


def test_two_processes_resuming_one_session(big_chain, bcs, workdir):
    vbk = next((workdir / "repo/main/Daily SQL").glob("*.vbk"))
    original = corrupt(vbk)
    (failed,) = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies").objects
    vbk.write_bytes(original)
    first = start(workdir, "Resume-CopySession", failed["Id"], "-Action", "Retry")
    try:
        wait_for(lambda: session(bcs, failed["Id"])["State"] == "Working", "the first resume")
        second = bcs("Resume-CopySession", failed["Id"], "-Action", "Retry")
        assert second.status == 3, second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert session(bcs, failed["Id"])["Result"] == "Success"


def test_crash_campaign(big_chain, bcs, workdir, tmp_path):
    """SIGKILL the async worker at random moments; Retry always finishes a verified copy."""
    rng = random.Random(3)
    source = workdir / "repo/main/Daily SQL"
    interrupted = 0
    for run in range(10):
        folder = f"copy{run}"
        started = bcs(
            "Start-BackupCopy", "Daily SQL", "-Path", "copies", "-Name", folder, "-RunAsync"
        )
        assert started.status == 0, started.stderr
        (working,) = started.objects
        # Once the worker has begun writing, at a random moment: before its first file is
        # whole, between files, in the metadata, or after the end.
        copy = workdir / "copies" / folder
        wait_for(
            lambda c=copy, w=working: (
                (c.exists() and any(c.iterdir())) or session(bcs, w["Id"])["State"] == "Stopped"
            ),
            "the worker to begin",
        )
        time.sleep(rng.uniform(0.0, 0.3))
        with contextlib.suppress(ProcessLookupError):  # it may have finished already
            os.kill(working["ProcessId"], signal.SIGKILL)
        (seen,) = bcs("Wait-CopySession", working["Id"], "-Timeout", "60s").objects
        if seen["State"] == "ActionRequired":
            interrupted += 1
            assert "interrupted" in seen["Reason"] or "ended" in seen["Reason"]
            assert job(bcs, "Daily SQL")["Enabled"] is False
            retried = bcs("Resume-CopySession", working["Id"], "-Action", "Retry")
            assert retried.status == 0, retried.stderr
        (done,) = bcs("Get-CopySession", working["Id"]).objects
        assert (done["State"], done["Result"]) == ("Stopped", "Success"), done
        assert bcs("Test-Backup", done["Backups"][0]["CopyId"]).status == 0
        expected = {k: v for k, v in files_of(source).items() if not k.endswith(".vbm")}
        got = {k: v for k, v in files_of(copy).items() if not k.endswith(".vbm")}
        assert got == expected
        assert not [p.name for p in copy.iterdir() if p.name.startswith(".")]
        assert job(bcs, "Daily SQL")["Enabled"] is True
        assert job(bcs, "Daily SQL")["HeldBy"] == []
    assert interrupted > 0, "no worker was killed mid-copy: the campaign tested nothing"


def test_target_full_mid_copy_then_undo_leaves_it_as_it_was(backups, bcs, mount_tmpfs):
    # Room for the bytes (the up-front check passes) but only one more file: the filesystem
    # runs out of inodes, which the kernel reports as ENOSPC like a full disk, at a point
    # that does not depend on timing.
    target = mount_tmpfs("full", "size=64m,nr_inodes=4")
    edit(target / "existing.txt", b"keep me")
    before = snapshot(target)
    result = bcs("Start-BackupCopy", "Daily SQL", "-Path", str(target))
    assert result.status == 1, result.stderr
    (failed,) = result.objects
    assert failed["State"] == "ActionRequired"
    assert "no space left" in failed["Reason"].lower()
    assert job(bcs, "Daily SQL")["Enabled"] is False
    assert bcs("Resume-CopySession", failed["Id"], "-Action", "Undo", "-Force").status == 0
    assert snapshot(target) == before
    assert job(bcs, "Daily SQL")["Enabled"] is True


def test_planted_symlink_is_never_followed(backups, bcs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = backups / "copies"
    target.mkdir()
    os.symlink(outside, target / "Daily SQL")
    result = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert result.status == 1 and "already exists" in result.stderr
    assert os.listdir(outside) == []


def test_an_unknown_session_and_a_short_prefix(backups, bcs):
    assert bcs("Get-CopySession", "-Id", "abc").status == 1
    assert bcs("Resume-CopySession", "-Id", "0000dead", "-Action", "Retry").status == 1


def test_backup_names_and_session_ids_complete(backups, bcs):
    names = bcs("--complete", "Da", "Start-BackupCopy -Backup Da").stdout.splitlines()
    assert names == ["'Daily SQL'"]
    failed, _, _ = failed_session(backups, bcs)
    line = f"Resume-CopySession -Id {failed['Id'][:3]}"
    assert bcs("--complete", failed["Id"][:3], line).stdout.splitlines() == [failed["Id"]]


def test_get_copy_session_filters(backups, bcs):
    ok = bcs("Start-BackupCopy", "Weekly Files", "-Path", "one").objects[0]
    failed, _, _ = failed_session(backups, bcs, target="two")
    every = bcs("Get-CopySession").objects
    assert [s["Id"] for s in every] == [failed["Id"], ok["Id"]]  # newest first
    assert [s["Id"] for s in bcs("Get-CopySession", "-State", "actionrequired").objects] == [
        failed["Id"]
    ]
    assert [s["Id"] for s in bcs("Get-CopySession", "-Result", "Success").objects] == [ok["Id"]]
    assert len(bcs("Get-CopySession", "-Last", "24h").objects) == 2
    assert bcs("Get-CopySession", "-Last", "0s").objects == []
    assert bcs("Get-CopySession", "-State", "Sleeping").status == 2


def test_a_finished_session_holds_nothing_even_if_its_process_died_before_releasing(backups, bcs):
    """A worker killed between marking its session finished and releasing the holds leaves
    hold entries behind; they hold nothing, and the job is as it was before the copy."""
    failed, vib, original = failed_session(backups, bcs)
    vib.write_bytes(original)
    bcs("Disable-BackupJob", "Weekly Files")  # the administrator decided while it was held
    record_path = backups / ".bcs" / "sessions" / f"{failed['Id']}.json"
    record = json.loads(record_path.read_text())
    record.update(State="Stopped", Result="Success")  # as the dying worker left it
    record_path.write_text(json.dumps(record))
    daily, weekly = job(bcs, "Daily SQL"), job(bcs, "Weekly Files")
    assert daily["HeldBy"] == [] and daily["Enabled"] is True
    assert weekly["HeldBy"] == [] and weekly["Enabled"] is False
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
