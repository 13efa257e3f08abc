"""Copy sessions that race, crash or meet hostile folders: what Undo removes, holds, plans.

Each test drives real processes at exact points (``injection``): two sessions released at
once after their checks, a session held after its checks while another copies, processes
killed right after a step, a backup job paused while it writes a restore point, a parent
folder of the target swapped for a link while the session makes it, a session's folder
removed by hand and made again by another session.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import start_process, wait_for
from injection import Fault, run_injected, start_injected
from test_smb import inventory_for, with_password
from trees import edit, snapshot

KiB = 1024


def record_of(workdir: Path, session_id: str) -> dict:
    return json.loads((workdir / ".bcs/sessions" / f"{session_id}.json").read_text())


def only(objects: list[dict]) -> dict:
    (found,) = objects
    return found


def job(bcs, name: str) -> dict:
    return only(bcs("Get-BackupJob", "-Name", name).objects)


def session(bcs, session_id: str) -> dict:
    return only(bcs("Get-CopySession", "-Id", session_id).objects)


def copies(bcs) -> list[dict]:
    listed = bcs("Get-Backup", "-Origin", "Copy")
    assert listed.status == 0, listed.stderr
    return listed.objects


def outside_state(root: Path) -> dict[str, tuple]:
    """What is under ``root`` but the state directory, without folder mtimes (making and
    removing an entry changes its folder's)."""
    return {
        k: v if v[0] != "dir" else v[:2]
        for k, v in snapshot(root).items()
        if not k.startswith(".bcs")
    }


def corrupt(path: Path) -> bytes:
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


@pytest.fixture
def chains(workdir: Path, bcs) -> Path:
    """Small chains: 'Daily SQL' on Main (3 points) and 'Weekly Files' on SOBR-1 (1 point)."""
    for sub in ("repo/main", "repo/offsite", "sobr/a", "sobr/b"):
        (workdir / sub).mkdir(parents=True)
    rng = random.Random(9)
    sql = workdir / "data/sql"
    edit(sql / "db.mdf", rng.randbytes(96 * KiB))
    for step in range(3):
        if step:
            edit(sql / f"log{step}.ldf", rng.randbytes(32 * KiB))
        assert bcs("Start-BackupJob", "Daily SQL").status == 0
    edit(workdir / "data/files/share.doc", rng.randbytes(64 * KiB))
    assert bcs("Start-BackupJob", "Weekly Files").status == 0
    return workdir


def finish(process) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def released(flag: Path) -> None:
    wait_for(flag.exists, f"the pause at {flag.name}")
    flag.unlink()


# -- 1. two sessions, one folder ---------------------------------------------------------------


def test_racing_copies_to_one_folder_leave_the_winner_intact_after_the_loser_is_undone(
    chains, bcs, tmp_path
):
    """Twenty pairs of real processes, both past their checks, released at the same instant;
    every other time, the folder they copy into has to be made too (they race for it first)."""
    for run in range(20):
        target = f"race/{run}"
        if run % 2 == 0:
            (chains / target).mkdir(parents=True)
        flags = [tmp_path / f"plan-{run}-{side}" for side in "ab"]
        racers = [
            start_injected(
                chains,
                [Fault("cmdlets.backup.copying:plan", "pause-after", signal_file=str(flag))],
                "Start-BackupCopy",
                "Daily SQL",
                "-Path",
                target,
            )
            for flag in flags
        ]
        for flag in flags:
            wait_for(flag.exists, "both sessions past their checks")
        for flag in flags:
            flag.unlink()
        outcomes = [finish(racer) for racer in racers]
        statuses = sorted(status for status, _, _ in outcomes)
        assert statuses == [0, 1], outcomes
        winner = next(json.loads(out) for status, out, _ in outcomes if status == 0)
        assert (winner["State"], winner["Result"]) == ("Stopped", "Success")
        folder = chains / target / "Daily SQL"
        kept = snapshot(folder)
        # Both were past the up-front check: the loser lost the folder itself.
        loser = next(json.loads(out) for status, out, _ in outcomes if status == 1)
        assert loser["State"] == "ActionRequired"
        undone = bcs("Resume-CopySession", loser["Id"], "-Action", "Undo", "-Force")
        assert undone.status == 0, undone.stderr
        assert snapshot(folder) == kept
        assert "made by someone else" in loser["Reason"], loser["Reason"]
        mine = [e["Rel"] for e in record_of(chains, loser["Id"])["Created"]]
        assert mine == [], mine  # it recorded nothing in the winner's folder
        for folder in (chains / "race", chains / target):  # no claim folder left behind
            assert not [p for p in folder.iterdir() if p.name.startswith(".")]
        copy_id = winner["Backups"][0]["CopyId"]
        assert bcs("Test-Backup", copy_id).status == 0
    assert len(copies(bcs)) == 20
    assert job(bcs, "Daily SQL")["HeldBy"] == [] and job(bcs, "Daily SQL")["Enabled"]


def test_a_session_held_after_its_checks_never_writes_into_the_folder_another_one_copied(
    chains, bcs, tmp_path
):
    flag = tmp_path / "after-plan"
    late = start_injected(
        chains,
        [Fault("cmdlets.backup.copying:plan", "pause-after", signal_file=str(flag))],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "copies",
    )
    wait_for(flag.exists, "the first session past its checks")
    first = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert first.status == 0, first.stderr
    folder = chains / "copies/Daily SQL"
    kept = snapshot(folder)
    flag.unlink()
    status, out, err = finish(late)
    assert status == 1, err
    lost = json.loads(out)
    assert lost["State"] == "ActionRequired"
    assert snapshot(folder) == kept  # not one partial file of the late session in it

    undone = bcs("Resume-CopySession", lost["Id"], "-Action", "Undo", "-Force")
    assert undone.status == 0, undone.stderr
    assert snapshot(folder) == kept
    assert bcs("Test-Backup", first.objects[0]["Backups"][0]["CopyId"]).status == 0
    assert [c["CopySessionId"] for c in copies(bcs)] == [first.objects[0]["Id"]]
    assert undone.objects[0]["Actions"][-1]["Result"] == "Success"
    assert sorted(os.listdir(chains / "copies")) == ["Daily SQL"]  # its claim folder went
    assert "made by someone else" in lost["Reason"], lost["Reason"]
    assert record_of(chains, lost["Id"])["Created"] == []


def test_an_undo_killed_after_removing_its_folder_and_run_again_keeps_a_newer_copy_there(
    chains, bcs
):
    (chains / "copies").mkdir()
    vib = sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    failed = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert failed.status == 1
    failed_id = failed.objects[0]["Id"]
    killed = run_injected(
        chains,
        [Fault("cmdlets.backup.location:LocalLocation.remove_dir", "kill-after", nth=1)],
        "Resume-CopySession",
        failed_id,
        "-Action",
        "Undo",
        "-Force",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (chains / "copies/Daily SQL").exists()  # killed right after its folder went

    # The folder name is free again: another session copies there.
    vib.write_bytes(original)
    newer = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert newer.status == 0, newer.stderr
    folder = chains / "copies/Daily SQL"
    kept = snapshot(folder)

    again = bcs("Resume-CopySession", failed_id, "-Action", "Undo", "-Force")
    assert again.status == 0, again.stderr
    assert snapshot(folder) == kept
    assert bcs("Test-Backup", newer.objects[0]["Backups"][0]["CopyId"]).status == 0
    assert [c["CopySessionId"] for c in copies(bcs)] == [newer.objects[0]["Id"]]


def test_after_an_undo_killed_half_way_only_undo_may_finish_the_session(chains, bcs):
    """Undo removed files of a backup that the record still says is copied: Retry would
    register that copy again without them, SkipFailed would keep it."""
    before = outside_state(chains)
    vib = sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    failed = bcs("Start-BackupCopy", "Weekly Files,Daily SQL", "-Path", "copies")
    assert failed.status == 1
    failed_id = failed.objects[0]["Id"]
    vib.write_bytes(original)
    os.utime(vib, ns=(before[str(vib.relative_to(chains))][2],) * 2)
    killed = run_injected(
        chains,
        [Fault("cmdlets.backup.location:LocalLocation.remove_file", "kill-after", nth=3)],
        "Resume-CopySession",
        failed_id,
        "-Action",
        "Undo",
        "-Force",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    for action in ("Retry", "SkipFailed"):
        refused = bcs("Resume-CopySession", failed_id, "-Action", action)
        assert refused.status == 1 and "-Action Undo" in refused.stderr, refused.stderr
    assert copies(bcs) == []
    undone = bcs("Resume-CopySession", failed_id, "-Action", "Undo", "-Force")
    assert undone.status == 0, undone.stderr
    assert outside_state(chains) == before
    assert copies(bcs) == []


@pytest.mark.parametrize("target", ["copies", "deep/copies"])
@pytest.mark.parametrize("step", ["make_dir", "rename"])
@pytest.mark.parametrize("then", ["Retry", "Undo"])
def test_a_claim_killed_half_way_is_finished_by_retry_or_removed_by_undo(
    chains, bcs, target, step, then
):
    """Killed right after the claim folder is made, or right after it is renamed into place
    (of the backup's folder in an existing target, or of the first folder made for it)."""
    if target == "copies":
        (chains / "copies").mkdir()
    before = outside_state(chains)
    killed = run_injected(
        chains,
        [Fault(f"cmdlets.backup.location:LocalLocation.{step}", "kill-after", nth=1)],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        target,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = only(bcs("Get-CopySession").objects)
    assert interrupted["State"] == "ActionRequired"
    done = bcs("Resume-CopySession", interrupted["Id"], "-Action", then, "-Force")
    assert done.status == 0, done.stderr
    assert done.objects[0]["Actions"][-1]["Result"] == "Success", done.objects[0]["Reason"]
    after = outside_state(chains)
    if then == "Undo":
        assert after == before
        return
    assert not [k for k in after if k.rsplit("/", 1)[-1].startswith(".")], sorted(after)
    (copy,) = copies(bcs)
    assert bcs("Test-Backup", copy["Id"]).status == 0


# -- 2. folders made on the way to the target --------------------------------------------------


@pytest.mark.parametrize(
    "moment",
    [
        "just after the session made it",  # make_root goes on below it
        "once the whole target is made",  # the copy writes below it
    ],
)
def test_a_parent_folder_swapped_for_a_link_is_never_followed(chains, bcs, tmp_path, moment):
    """The session makes deep/new/copies. At a pause after each event it logs, someone moves
    the folder 'deep' it made away and puts a link to it in its place: nothing may be made
    through the link."""
    deep = chains / "deep"
    moved = tmp_path / "elsewhere"  # where the link leads: a folder the session never chose

    def time_to_swap() -> bool:
        if moment.startswith("just"):
            return deep.is_dir() and not (deep / "new").exists()
        return (deep / "new/copies").is_dir()

    flag = tmp_path / "logged"
    process = start_injected(
        chains,
        [Fault("cmdlets.backup.sessions:log", "pause-after", signal_file=str(flag))],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "deep/new/copies",
    )
    at_swap = None
    while process.poll() is None:
        if not flag.exists():
            continue
        if at_swap is None and not deep.is_symlink() and time_to_swap():
            os.rename(deep, moved)
            os.symlink(moved, deep)
            at_swap = snapshot(moved)
        flag.unlink()
    status, out, err = finish(process)
    assert at_swap is not None, "the moment to swap never came"
    assert snapshot(moved) == at_swap, "something was made through the link"
    assert status == 1, err
    failed = json.loads(out)
    assert failed["State"] == "ActionRequired"
    assert "symbolic link" in failed["Reason"], failed["Reason"]

    undone = bcs("Resume-CopySession", failed["Id"], "-Action", "Undo", "-Force")
    assert undone.status == 0, undone.stderr
    assert snapshot(moved) == at_swap
    assert deep.is_symlink()  # not the session's: left alone


# -- 5. holds and the work lock ----------------------------------------------------------------


def test_a_starting_session_is_never_taken_for_an_interrupted_one(chains, bcs, tmp_path):
    flag = tmp_path / "created"
    starter = start_injected(
        chains,
        [Fault("cmdlets.backup.sessions:create", "pause-after", signal_file=str(flag))],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "copies",
    )
    wait_for(flag.exists, "the session record written")
    for _ in range(10):
        seen = only(bcs("Get-CopySession").objects)
        assert seen["State"] == "Starting", seen
        assert not bcs("Get-CopySession", "-State", "ActionRequired").objects
    flag.unlink()
    status, out, err = finish(starter)
    assert status == 0, err
    assert json.loads(out)["Result"] == "Success"


def test_a_session_killed_right_after_its_record_was_written_holds_its_job_on_retry(
    chains, bcs, tmp_path
):
    killed = run_injected(
        chains,
        [Fault("cmdlets.backup.sessions:create", "kill-after")],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "copies",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = only(bcs("Get-CopySession").objects)
    assert interrupted["State"] == "ActionRequired" and "interrupted" in interrupted["Reason"]
    assert job(bcs, "Daily SQL")["HeldBy"] == []  # it died before it held anything
    # Not held, so the job could write meanwhile: Retry copies the grown chain.
    edit(chains / "data/sql/late.ldf", b"written while nobody held the job")
    assert bcs("Start-BackupJob", "Daily SQL").status == 0

    flag = tmp_path / "copying"
    retry = start_injected(
        chains,
        [Fault("cmdlets.backup.copying:copy_backup", "pause-before", signal_file=str(flag))],
        "Resume-CopySession",
        interrupted["Id"],
        "-Action",
        "Retry",
    )
    wait_for(flag.exists, "Retry about to copy")
    held = job(bcs, "Daily SQL")
    assert held["HeldBy"] == [interrupted["Id"]] and held["Enabled"] is False
    assert bcs("Start-BackupJob", "Daily SQL").status == 1
    flag.unlink()
    status, out, err = finish(retry)
    assert status == 0, err
    done = json.loads(out)
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    (copy,) = copies(bcs)
    assert copy["RestorePoints"] == 4
    assert bcs("Test-Backup", copy["Id"]).status == 0
    after = job(bcs, "Daily SQL")
    assert after["HeldBy"] == [] and after["Enabled"] is True


# -- 6. a copy started while its job writes ----------------------------------------------------


def test_a_copy_started_while_its_job_writes_copies_the_chain_the_job_leaves(
    chains, bcs, tmp_path
):
    flag = tmp_path / "writing"
    edit(chains / "data/sql/tonight.ldf", b"the fourth restore point")
    backup_job = start_injected(
        chains,
        [
            Fault(
                "cmdlets.backup.restorepoint:write_restore_point",
                "pause-before",
                signal_file=str(flag),
            )
        ],
        "Start-BackupJob",
        "Daily SQL",
    )
    wait_for(flag.exists, "the job writing its restore point")
    copy = start_process(chains, "Start-BackupCopy", "Daily SQL", "-Path", "copies")
    # The copy has made its plan (3 points) and waits for the job to hold it.
    wait_for(lambda: bcs("Get-CopySession").objects, "the copy session")
    flag.unlink()
    assert finish(backup_job)[0] == 0
    status, out, err = finish(copy)
    assert status == 0, err
    done = json.loads(out)
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    (copied,) = copies(bcs)
    assert copied["RestorePoints"] == 4
    assert bcs("Test-Backup", copied["Id"]).status == 0
    events = bcs("Get-CopySession", "-Id", done["Id"], "-Log").objects
    assert any(e["Event"] == "ChainGrown" for e in events)


def test_a_chain_rewritten_before_the_hold_fails_with_what_changed(chains, bcs, tmp_path):
    flag = tmp_path / "planned"
    copy = start_injected(
        chains,
        [Fault("cmdlets.backup.copying:plan", "pause-after", signal_file=str(flag))],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "copies",
    )
    wait_for(flag.exists, "the copy past its checks")
    # The last restore point is rewritten under the same name (by hand: no job does that).
    vbm = chains / "repo/main/Daily SQL/Daily SQL.vbm"
    meta = json.loads(vbm.read_text())
    last = meta["RestorePoints"][-1]
    last["Sha256"] = "0" * 64
    vbm.write_text(json.dumps(meta))
    flag.unlink()
    status, out, err = finish(copy)
    assert status == 1, err
    reason = json.loads(out)["Reason"]
    assert f"restore point {last['File']} was rewritten" in reason, reason
    assert "was not held" not in reason


def test_a_source_vbm_swapped_for_a_fifo_before_the_copy_reads_it_fails_that_backup(
    chains, bcs, tmp_path
):
    """The source folder is not the session's: a FIFO put in place of its .vbm right before the
    copy's own .vbm is made from it must fail the backup, not block the copy forever."""
    flag = tmp_path / "files-copied"
    copy = start_injected(
        chains,
        [
            Fault(
                "cmdlets.backup.copying:_write_copy_metadata",
                "pause-before",
                signal_file=str(flag),
            )
        ],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "copies",
    )
    wait_for(flag.exists, "the copy's files copied")
    vbm = chains / "repo/main/Daily SQL/Daily SQL.vbm"
    vbm.unlink()
    os.mkfifo(vbm)
    flag.unlink()
    status, out, err = finish(copy)  # bounded: a blocked reader would hit its timeout
    assert status == 1, err
    found = json.loads(out)
    assert found["State"] == "ActionRequired"
    assert "Daily SQL.vbm" in found["Reason"], found["Reason"]
    assert not (chains / "copies/Daily SQL/Daily SQL.vbm").exists()


# -- 7. registrations of copies that do not stay -----------------------------------------------


def test_undo_after_a_kill_right_after_registering_forgets_the_copy(chains, bcs):
    killed = run_injected(
        chains,
        [Fault("cmdlets.backup.copying:_register", "kill-after")],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "copies",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = only(bcs("Get-CopySession").objects)
    assert interrupted["State"] == "ActionRequired"
    undone = bcs("Resume-CopySession", interrupted["Id"], "-Action", "Undo", "-Force")
    assert undone.status == 0, undone.stderr
    assert not (chains / "copies").exists()
    assert copies(bcs) == []
    listed = bcs("Get-Backup")
    assert listed.status == 0 and listed.stderr == "", listed.stderr
    assert [b["Name"] for b in listed.objects] == ["Daily SQL", "Weekly Files"]


def test_skip_failed_after_a_kill_right_after_registering_forgets_that_copy(chains, bcs):
    killed = run_injected(
        chains,
        [Fault("cmdlets.backup.copying:_register", "kill-after", nth=2)],
        "Start-BackupCopy",
        "Daily SQL,Weekly Files",
        "-Path",
        "copies",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = only(bcs("Get-CopySession").objects)
    status = {b["Name"]: b["Status"] for b in interrupted["Backups"]}
    assert status == {"Daily SQL": "Copied", "Weekly Files": "Failed"}
    skipped = bcs("Resume-CopySession", interrupted["Id"], "-Action", "SkipFailed")
    assert skipped.status == 0, skipped.stderr
    assert skipped.objects[0]["Result"] == "Warning"
    assert sorted(os.listdir(chains / "copies")) == ["Daily SQL"]
    (kept,) = copies(bcs)
    assert kept["Name"] == "Daily SQL" and bcs("Test-Backup", kept["Id"]).status == 0
    assert bcs("Get-Backup").status == 0


# -- 12. SkipFailed with nothing copied --------------------------------------------------------


def test_skip_failed_with_every_backup_failed_is_a_failure_that_leaves_nothing(chains, bcs):
    for folder in ("repo/main/Daily SQL", "sobr/a/Weekly Files", "sobr/b/Weekly Files"):
        for point in sorted((chains / folder).glob("*.vb[ki]"))[-1:]:
            corrupt(point)
    before = outside_state(chains)
    failed = bcs("Start-BackupCopy", "Daily SQL,Weekly Files", "-Path", "deep/copies")
    assert failed.status == 1
    assert {b["Status"] for b in failed.objects[0]["Backups"]} == {"Failed"}
    skipped = bcs("Resume-CopySession", failed.objects[0]["Id"], "-Action", "SkipFailed")
    assert skipped.status == 0, skipped.stderr
    (done,) = skipped.objects
    assert (done["State"], done["Result"]) == ("Stopped", "Failed")
    assert {b["Status"] for b in done["Backups"]} == {"Skipped"}
    assert not (chains / "deep").exists()
    after = outside_state(chains)
    assert after == before
    assert job(bcs, "Daily SQL")["Enabled"] and job(bcs, "Weekly Files")["Enabled"]


# -- 10. targets inside the chain itself, and empty paths ---------------------------------------


@pytest.mark.parametrize(
    "path",
    ["repo/main/Daily SQL", "repo/main/Daily SQL/copies", "link-to-chain/sub"],
)
def test_a_target_inside_the_chain_being_copied_is_refused(chains, bcs, path):
    os.symlink(chains / "repo/main/Daily SQL", chains / "link-to-chain")
    before = snapshot(chains)
    refused = bcs("Start-BackupCopy", "Daily SQL", "-Path", path, "-Name", "Other")
    assert refused.status == 1, refused.stderr
    assert "inside the folder of backup 'Daily SQL'" in refused.stderr
    assert snapshot(chains) == before
    assert bcs("Get-CopySession").objects == []


def test_an_empty_path_is_refused(chains, bcs):
    before = snapshot(chains)
    refused = bcs("Start-BackupCopy", "Daily SQL", "-Path", "")
    assert refused.status == 2, refused.stderr
    assert "-Path is empty" in refused.stderr
    assert snapshot(chains) == before


# -- 1. the same on a shared folder ------------------------------------------------------------


@pytest.fixture
def samba(tmp_path: Path):
    import sambaserver

    reason = sambaserver.unavailable()
    if reason:
        pytest.skip(reason)
    server = sambaserver.SambaServer(tmp_path / "samba", tmp_path / "share")
    try:
        server.setup()
        server.start()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        pytest.skip(f"cannot start smbd here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def share_chain(workdir: Path, samba, bcs) -> Path:
    """'Daily SQL' (2 points) on Main; the inventory knows the test server's credential."""
    inventory_for(workdir, samba.url)
    (workdir / "repo/main").mkdir(parents=True)
    rng = random.Random(10)
    edit(workdir / "data/sql/db.mdf", rng.randbytes(96 * KiB))
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    edit(workdir / "data/sql/log.ldf", rng.randbytes(32 * KiB))
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    return workdir


def test_on_a_share_a_session_held_after_its_checks_never_writes_into_another_ones_folder(
    share_chain, samba, bcs, tmp_path
):
    password = with_password(samba)
    target = ["Daily SQL", "-Path", f"{samba.url}/copies", "-Credential", "nas"]
    flag = tmp_path / "after-plan"
    late = start_injected(
        share_chain,
        [Fault("cmdlets.backup.copying:plan", "pause-after", signal_file=str(flag))],
        "Start-BackupCopy",
        *target,
        environ=password,
    )
    wait_for(flag.exists, "the first session past its checks")
    first = bcs("Start-BackupCopy", *target, environ=password)
    assert first.status == 0, first.stderr
    folder = samba.share / "copies/Daily SQL"
    kept = snapshot(folder)
    flag.unlink()
    status, out, err = finish(late)
    assert status == 1, err
    lost = json.loads(out)
    assert snapshot(folder) == kept
    undone = bcs("Resume-CopySession", lost["Id"], "-Action", "Undo", "-Force", environ=password)
    assert undone.status == 0, undone.stderr
    assert snapshot(folder) == kept
    assert sorted(os.listdir(samba.share / "copies")) == ["Daily SQL"]
    copy_id = first.objects[0]["Backups"][0]["CopyId"]
    assert bcs("Test-Backup", copy_id, environ=password).status == 0
    assert "made by someone else" in lost["Reason"], lost["Reason"]


# -- 1. a session's folder removed by hand, and made again by another session ------------------


def folder_state(folder: Path) -> tuple:
    """Everything in ``folder`` and the folder's own times: any entry made or removed in it
    (a partial file made and cleaned up again) changes its mtime."""
    st = os.stat(folder)
    return snapshot(folder), st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def run_process(workdir: Path, *argv: str) -> tuple[int, str, str]:
    return finish(start_process(workdir, *argv))


def resume(workdir: Path, session_id: str, action: str) -> tuple[int, dict, str]:
    force = ["-Force"] if action == "Undo" else []
    status, out, err = run_process(
        workdir, "Resume-CopySession", session_id, "-Action", action, *force
    )
    return status, json.loads(out) if out.strip() else {}, err


def failed_then_replaced(chains: Path, shell, bcs) -> tuple[str, str]:
    """Session A copies 'Daily SQL' to copies/ and fails (its last restore point is damaged
    at the source, so that file fails its verification after the others were copied). The
    administrator removes A's folder by hand; session B copies the same backup there and
    succeeds: B's files have the very names A recorded as its own. A's id, B's copy id."""
    vib = sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    status, out, err = run_process(chains, "Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert status == 1, err
    first = json.loads(out)
    assert first["State"] == "ActionRequired"
    created = [e["Rel"] for e in record_of(chains, first["Id"])["Created"]]
    assert f"Daily SQL/{vib.name}" in created  # A recorded the name B's file will have
    vib.write_bytes(original)
    removed = shell("rm -rf 'copies/Daily SQL'")
    assert removed.returncode == 0, removed.stderr
    status, out, err = run_process(chains, "Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert status == 0, err
    second = json.loads(out)
    assert (second["State"], second["Result"]) == ("Stopped", "Success")
    names = {e["Rel"] for e in record_of(chains, second["Id"])["Created"] if e["Kind"] == "File"}
    assert set(created) & names  # the same names: only the folder's identity tells them apart
    return first["Id"], second["Backups"][0]["CopyId"]


@pytest.mark.parametrize("action", ["Undo", "SkipFailed", "Retry"])
def test_a_folder_removed_by_hand_and_made_again_by_another_session_is_not_the_first_ones(
    chains, bcs, shell, action
):
    failed_id, copy_id = failed_then_replaced(chains, shell, bcs)
    folder = chains / "copies/Daily SQL"
    kept = folder_state(folder)
    shown = f"{chains}/copies/Daily SQL is no longer the folder this session made"

    status, done, err = resume(chains, failed_id, action)
    assert folder_state(folder) == kept, f"{action} touched the other session's folder"
    if action == "Retry":
        assert status == 1, err
        assert done["State"] == "ActionRequired"
        assert shown in done["Backups"][0]["Error"], done["Backups"][0]["Error"]
        events = bcs("Get-CopySession", "-Id", failed_id, "-Log").objects
        retried = events[max(i for i, e in enumerate(events) if e["Event"] == "ActionTaken") :]
        assert not [e for e in retried if e["Event"] in ("FileCopied", "FileFailed")], retried
        # Then finalized: Undo leaves it alone too.
        status, done, err = resume(chains, failed_id, "Undo")
        assert folder_state(folder) == kept
    assert status == 0, err
    assert (done["State"], done["Result"]) == ("Stopped", "Failed")
    assert f"left in place: {shown}" in done["Reason"], done["Reason"]
    events = bcs("Get-CopySession", "-Id", failed_id, "-Log").objects
    assert any(shown in e["Message"] for e in events), events
    assert [c["Id"] for c in copies(bcs)] == [copy_id]
    assert bcs("Test-Backup", copy_id).status == 0
    assert sorted(os.listdir(chains / "copies")) == ["Daily SQL"]
    assert job(bcs, "Daily SQL")["HeldBy"] == [] and job(bcs, "Daily SQL")["Enabled"]


def test_a_claim_killed_after_its_rename_never_adopts_a_folder_made_again_by_another_session(
    chains, bcs, shell
):
    """Killed right after the claim folder was renamed into place: Retry would adopt the folder
    of that name as the one its claim made, but it was removed by hand and made again."""
    (chains / "copies").mkdir()
    killed = run_injected(
        chains,
        [Fault("cmdlets.backup.location:LocalLocation.rename", "kill-after", nth=1)],
        "Start-BackupCopy",
        "Daily SQL",
        "-Path",
        "copies",
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    interrupted = only(bcs("Get-CopySession").objects)
    assert shell("rm -rf 'copies/Daily SQL'").returncode == 0
    status, out, err = run_process(chains, "Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert status == 0, err
    copy_id = json.loads(out)["Backups"][0]["CopyId"]
    folder = chains / "copies/Daily SQL"
    kept = folder_state(folder)

    status, retried, err = resume(chains, interrupted["Id"], "Retry")
    assert status == 1, err
    assert folder_state(folder) == kept
    assert "made by someone else" in retried["Reason"], retried["Reason"]
    status, undone, err = resume(chains, interrupted["Id"], "Undo")
    assert status == 0, err
    assert (undone["State"], undone["Result"]) == ("Stopped", "Failed")
    assert folder_state(folder) == kept
    assert bcs("Test-Backup", copy_id).status == 0
    assert sorted(os.listdir(chains / "copies")) == ["Daily SQL"]


@pytest.mark.parametrize("action", ["Undo", "Retry"])
def test_folders_made_on_the_way_and_made_again_by_another_session_are_left_alone(
    chains, bcs, shell, action
):
    """Session A made deep/copies/Daily SQL and failed; 'deep' is removed by hand and session
    B makes the same three folders again: none of them is A's any more."""
    vib = sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    status, out, err = run_process(chains, "Start-BackupCopy", "Daily SQL", "-Path", "deep/copies")
    assert status == 1, err
    failed_id = json.loads(out)["Id"]
    vib.write_bytes(original)
    assert shell("rm -rf deep").returncode == 0
    status, out, err = run_process(chains, "Start-BackupCopy", "Daily SQL", "-Path", "deep/copies")
    assert status == 0, err
    copy_id = json.loads(out)["Backups"][0]["CopyId"]
    kept = {p: folder_state(chains / p) for p in ("deep", "deep/copies", "deep/copies/Daily SQL")}

    status, done, err = resume(chains, failed_id, action)
    assert {p: folder_state(chains / p) for p in kept} == kept
    if action == "Retry":
        assert status == 1, err
        error = done["Backups"][0]["Error"]
        assert f"{chains}/deep is no longer the folder this session made" in error, error
        status, done, err = resume(chains, failed_id, "Undo")
        assert {p: folder_state(chains / p) for p in kept} == kept
    assert status == 0, err
    for folder in ("deep/copies/Daily SQL", "deep/copies", "deep"):
        note = f"left in place: {chains}/{folder} is no longer the folder this session made"
        assert note in done["Reason"], done["Reason"]
    assert bcs("Test-Backup", copy_id).status == 0


def test_retry_after_the_folder_was_removed_by_hand_copies_every_file_again(chains, bcs, shell):
    """Nobody made the folder again: Retry claims it anew, and the files it had copied into
    the folder that is gone are copied again (not taken as copied: the copy would lack them)."""
    vib = sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    status, out, err = run_process(chains, "Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert status == 1, err
    failed_id = json.loads(out)["Id"]
    vib.write_bytes(original)
    assert shell("rm -rf 'copies/Daily SQL'").returncode == 0
    status, done, err = resume(chains, failed_id, "Retry")
    assert status == 0, err
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    (copy,) = copies(bcs)
    assert copy["RestorePoints"] == 3
    assert bcs("Test-Backup", copy["Id"]).status == 0
    undone = bcs("Get-CopySession", "-Id", failed_id, "-Log").objects
    assert any(e["Event"] == "FolderGone" for e in undone)


def test_a_session_recorded_before_folder_identities_is_retried_as_before(chains, bcs):
    vib = sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    failed = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies")
    assert failed.status == 1
    failed_id = failed.objects[0]["Id"]
    vib.write_bytes(original)
    path = chains / ".bcs/sessions" / f"{failed_id}.json"
    record = json.loads(path.read_text())
    record.pop("Identities", None)  # as a session recorded before identities were
    path.write_text(json.dumps(record))
    retried = bcs("Resume-CopySession", failed_id, "-Action", "Retry")
    assert retried.status == 0, retried.stderr
    (copy,) = copies(bcs)
    assert bcs("Test-Backup", copy["Id"]).status == 0
    assert "Identities" not in record_of(chains, failed_id)


@pytest.mark.parametrize("action", ["Undo", "Retry"])
def test_on_a_share_a_folder_removed_by_hand_and_made_again_is_not_the_first_sessions(
    share_chain, samba, bcs, action
):
    password = with_password(samba)
    target = ["Daily SQL", "-Path", f"{samba.url}/copies", "-Credential", "nas"]
    vib = sorted((share_chain / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = corrupt(vib)
    failed = bcs("Start-BackupCopy", *target, environ=password)
    assert failed.status == 1, failed.stderr
    failed_id = failed.objects[0]["Id"]
    vib.write_bytes(original)
    folder = samba.share / "copies/Daily SQL"
    subprocess.run(["rm", "-rf", str(folder)], check=True)  # by hand, on the server
    second = start_injected(share_chain, [], "Start-BackupCopy", *target, environ=password)
    status, out, err = finish(second)
    assert status == 0, err
    copy_id = json.loads(out)["Backups"][0]["CopyId"]
    kept = folder_state(folder)
    shown = f"{samba.url}/copies/Daily SQL is no longer the folder this session made"

    resumed = start_injected(
        share_chain,
        [],
        "Resume-CopySession",
        failed_id,
        "-Action",
        action,
        *(["-Force"] if action == "Undo" else []),
        environ=password,
    )
    status, out, err = finish(resumed)
    done = json.loads(out)
    assert folder_state(folder) == kept, f"{action} touched the other session's folder"
    if action == "Retry":
        assert status == 1, err
        assert shown in done["Backups"][0]["Error"], done["Backups"][0]["Error"]
        undone = bcs("Resume-CopySession", failed_id, "-Action", "Undo", "-Force", environ=password)
        status, err, done = undone.status, undone.stderr, undone.objects[0]
        assert folder_state(folder) == kept
    assert status == 0, err
    assert f"left in place: {shown}" in done["Reason"], done["Reason"]
    assert bcs("Test-Backup", copy_id, environ=password).status == 0
    assert sorted(os.listdir(samba.share / "copies")) == ["Daily SQL"]
