"""Backup jobs, chains, verification and restore through the real cmdlets."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import start_process as start
from conftest import wait_for
from trees import edit, snapshot

MiB = 1024 * 1024


@pytest.fixture
def repos(workdir: Path) -> Path:
    for sub in ("repo/main", "repo/offsite", "sobr/a", "sobr/b"):
        (workdir / sub).mkdir(parents=True)
    return workdir


def run_job(bcs, name: str, *extra: str) -> dict:
    result = bcs("Start-BackupJob", "-Name", name, *extra)
    assert result.status == 0, result.stderr
    (point,) = result.objects
    return point


def test_every_restore_point_restores_its_tree(repos, bcs, tmp_path):
    src = repos / "data/sql"
    edit(src / "a.txt", b"alpha")
    edit(src / "nested/deep/b.bin", os.urandom(3 * MiB))
    edit(src / "gone.txt", b"to be deleted")
    (src / "empty-dir").mkdir()
    edit(src / "run.sh", b"#!/bin/sh\n", mode=0o755)
    states = [snapshot(src)]
    assert run_job(bcs, "Daily SQL")["Kind"] == "Full"

    edit(src / "a.txt", b"alpha, changed")
    (src / "gone.txt").unlink()
    edit(src / "nested/new/c.txt", b"")
    os.chmod(src / "run.sh", 0o700)
    states.append(snapshot(src))
    assert run_job(bcs, "Daily SQL")["Kind"] == "Increment"

    edit(src / "nested/deep/b.bin", os.urandom(MiB))
    os.symlink("a.txt", src / "link")
    states.append(snapshot(src))
    assert run_job(bcs, "Daily SQL")["Kind"] == "Increment"
    assert run_job(bcs, "Daily SQL", "-Full")["Kind"] == "Full"
    states.append(states[-1])

    (backup,) = bcs("Get-Backup", "-Name", "Daily SQL").objects
    assert backup["RestorePoints"] == 4 and backup["Origin"] == "Job"
    assert backup["Repository"] == "Main" and backup["Path"] == str(repos / "repo/main/Daily SQL")
    for index, expected in enumerate(states):
        out = tmp_path / f"restore-{index}"
        result = bcs("Restore-Backup", "Daily SQL", str(out), "-RestorePoint", str(index))
        assert result.status == 0, result.stderr
        assert snapshot(out) == expected, f"restore point {index}"

    folder = repos / "repo/main/Daily SQL"
    names = sorted(p.name for p in folder.iterdir() if p.name != "Daily SQL.vbm")
    assert (folder / "Daily SQL.vbm").is_file()
    assert all(n.startswith("Daily SQL_") for n in names)
    assert [n.rsplit(".", 1)[1] for n in names] == ["vbk", "vib", "vib", "vbk"]
    meta = json.loads((folder / "Daily SQL.vbm").read_text())
    assert meta["BackupId"] == backup["Id"] and meta["JobName"] == "Daily SQL"


def test_restore_refuses_a_non_empty_destination_unless_forced(repos, bcs, tmp_path):
    edit(repos / "data/sql/a.txt", b"alpha")
    run_job(bcs, "Daily SQL")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused = bcs("Restore-Backup", "-Backup", "Daily SQL", "-Destination", str(out))
    assert refused.status == 1 and "not empty" in refused.stderr
    assert bcs("Restore-Backup", "Daily SQL", str(out), "-Force").status == 0
    assert (out / "a.txt").read_bytes() == b"alpha" and (out / "keep.txt").exists()


@pytest.fixture
def chain(repos, bcs) -> Path:
    src = repos / "data/sql"
    edit(src / "a.bin", os.urandom(200_000))
    run_job(bcs, "Daily SQL")
    edit(src / "b.bin", os.urandom(100_000))
    run_job(bcs, "Daily SQL")
    return repos / "repo/main/Daily SQL"


def test_test_backup_passes_on_a_sound_backup(chain, bcs):
    result = bcs("Test-Backup", "Daily SQL")
    assert result.status == 0
    (test,) = result.objects
    assert test["Result"] == "Success" and test["Files"] == 2 and test["Errors"] == []


@pytest.mark.parametrize(
    "damage", ["flip a byte in the .vib", "truncate the .vbk", "remove the .vib"]
)
def test_test_backup_catches_damage_and_names_the_file(chain, bcs, damage):
    vbk = next(chain.glob("*.vbk"))
    vib = next(chain.glob("*.vib"))
    if damage.startswith("flip"):
        data = bytearray(vib.read_bytes())
        data[len(data) // 2] ^= 0x01
        vib.write_bytes(bytes(data))
        broken = vib
    elif damage.startswith("truncate"):
        with vbk.open("r+b") as f:
            f.truncate(vbk.stat().st_size - 1000)
        broken = vbk
    else:
        vib.unlink()
        broken = vib
    result = bcs("Test-Backup", "-Backup", "Daily SQL")
    assert result.status == 1
    (test,) = result.objects
    assert test["Result"] == "Failed"
    assert any(broken.name in error for error in test["Errors"]), test["Errors"]


def test_disabled_job_is_refused(repos, bcs):
    bcs("Disable-BackupJob", "-Name", "Daily SQL")
    result = bcs("Start-BackupJob", "-Name", "Daily SQL")
    assert result.status == 1
    assert "'Daily SQL' is disabled" in result.stderr
    assert not (repos / "repo/main/Daily SQL").exists()


def test_agent_policy_jobs_write_restore_points_too(repos, bcs):
    bcs("Enable-BackupJob", "Laptops")
    edit(repos / "data/laptops/x", b"x")
    run_job(bcs, "Laptops")
    (backup,) = bcs("Get-Backup", "-Name", "Laptops").objects
    assert backup["JobType"] == "AgentPolicy"


def big_source(workdir: Path) -> None:
    src = workdir / "data/sql"
    for i in range(4):
        with open(src / f"big{i}.bin", "wb") as f:
            for _ in range(64):
                f.write(os.urandom(MiB))


def partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".*") if "partial" in p.name] if folder.exists() else []


def test_one_job_cannot_run_twice_at_once(repos, bcs):
    big_source(repos)
    folder = repos / "repo/main/Daily SQL"
    first = start(repos, "Start-BackupJob", "-Name", "Daily SQL")
    try:
        wait_for(lambda: partial_files(folder), "the first run to write")
        second = bcs("Start-BackupJob", "-Name", "Daily SQL")
        assert second.status == 3
        assert "already running" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert bcs("Test-Backup", "Daily SQL").status == 0


def test_killed_run_leaves_the_previous_chain_valid(repos, bcs):
    edit(repos / "data/sql/small.txt", b"first")
    run_job(bcs, "Daily SQL")
    before = bcs("Get-Backup", "Daily SQL").objects
    big_source(repos)
    folder = repos / "repo/main/Daily SQL"
    victim = start(repos, "Start-BackupJob", "-Name", "Daily SQL")
    wait_for(lambda: partial_files(folder), "the run to write its restore point")
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL

    assert bcs("Get-Backup", "Daily SQL").objects == before
    assert bcs("Test-Backup", "Daily SQL").status == 0
    # The next run cleans up after the dead one and continues the chain.
    assert run_job(bcs, "Daily SQL")["Index"] == 1
    assert partial_files(folder) == []
    assert bcs("Test-Backup", "Daily SQL").status == 0


def test_scale_out_chain_lives_on_one_extent(repos, bcs):
    inventory = repos / "inventory.yaml"
    text = inventory.read_text()
    inventory.write_text(
        text.replace(
            "{name: Ext-A, path: ./sobr/a}", "{name: Ext-A, path: ./sobr/a, maintenance: true}"
        )
    )
    edit(repos / "data/files/f", b"1")
    run_job(bcs, "Weekly Files")
    (backup,) = bcs("Get-Backup", "Weekly Files").objects
    assert backup["Extent"] == "Ext-B" and backup["Repository"] == "SOBR-1"

    # Later points follow the chain, whatever the free space says.
    inventory.write_text(text)
    edit(repos / "data/files/g", b"2")
    run_job(bcs, "Weekly Files")
    assert not (repos / "sobr/a/Weekly Files").exists()
    assert bcs("Get-Backup", "Weekly Files").objects[0]["RestorePoints"] == 2

    inventory.write_text(
        text.replace(
            "{name: Ext-B, path: ./sobr/b}", "{name: Ext-B, path: ./sobr/b, maintenance: true}"
        )
    )
    refused = bcs("Start-BackupJob", "Weekly Files")
    assert refused.status == 1 and "maintenance" in refused.stderr


def test_get_backup_filters(chain, bcs, repos):
    edit(repos / "data/files/f", b"1")
    run_job(bcs, "Weekly Files")
    every = bcs("Get-Backup").objects
    assert {b["Name"] for b in every} == {"Daily SQL", "Weekly Files"}
    assert [b["Name"] for b in bcs("Get-Backup", "-Repository", "sobr-1").objects] == [
        "Weekly Files"
    ]
    assert bcs("Get-Backup", "-Origin", "Copy").objects == []
    daily = next(b for b in every if b["Name"] == "Daily SQL")
    assert bcs("Get-Backup", "-Id", daily["Id"][:8]).objects == [daily]
    assert bcs("Get-Backup", "-Name", "Nope").status == 1
    piped = bcs("Get-RestorePoint", input=[daily])
    assert [p["Index"] for p in piped.objects] == [0, 1]
