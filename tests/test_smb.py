"""The bcs-smb plugin against a real Samba server: copies to a share, read back, faults, Undo.

Each test that needs a server gets its own smbd on 127.0.0.1 at a free high port (see
``sambaserver``), stopped afterwards; without smbd (or root) those tests are skipped with the
reason.
"""

from __future__ import annotations

import json
import os
import random
import stat
import struct
import subprocess
import time
from pathlib import Path

import pytest
import sambaserver
from conftest import write_inventory
from sambaserver import SambaServer
from trees import edit, snapshot

MiB = 1024 * 1024
WRONG = "N0t-the-Passw0rd-91d3"


@pytest.fixture
def samba(tmp_path: Path):
    reason = sambaserver.unavailable()
    if reason:
        pytest.skip(reason)
    server = SambaServer(tmp_path / "samba", tmp_path / "share")
    try:
        server.setup()
        server.start()
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:
        pytest.skip(f"cannot start smbd here: {exc}")
    yield server
    server.stop()


def inventory_for(folder: Path, url: str) -> None:
    write_inventory(
        folder,
        f"""\
        version: 1
        repositories:
          - name: Main
            path: ./repo/main
          - name: NAS
            path: {url}/nas
            credential: nas
        credentials:
          - name: nas
            username: {sambaserver.USER}
            passwordEnv: NAS_PASSWORD
          - name: nas-file
            username: {sambaserver.USER}
            passwordFile: ./nas.password
        jobs:
          - name: Daily SQL
            type: backup-job
            repository: Main
            source: ./data/sql
          - name: Weekly Files
            type: backup-job
            repository: Main
            source: ./data/files
        """,
    )


@pytest.fixture
def chains(workdir: Path, samba: SambaServer, bcs) -> Path:
    """'Daily SQL' (3 points) and 'Weekly Files' (1 point) on Main; the inventory knows NAS."""
    inventory_for(workdir, samba.url)
    (workdir / "repo/main").mkdir(parents=True)
    rng = random.Random(6)
    sql = workdir / "data/sql"
    edit(sql / "db.mdf", rng.randbytes(3 * MiB))
    edit(sql / "log/db.ldf", rng.randbytes(MiB))
    os.symlink("db.mdf", sql / "current")
    for step in range(3):
        if step:
            edit(sql / f"log/tail{step}.ldf", rng.randbytes(300 * 1024))
        assert bcs("Start-BackupJob", "Daily SQL").status == 0
    edit(workdir / "data/files/share.doc", rng.randbytes(MiB))
    assert bcs("Start-BackupJob", "Weekly Files").status == 0
    return workdir


def with_password(samba: SambaServer, password: str | None = None) -> dict[str, str]:
    return {"NAS_PASSWORD": password or samba.password}


def test_copy_to_a_share_then_test_and_restore_from_the_copy_there(chains, samba, bcs, tmp_path):
    target = f"{samba.url}/copies/deep"
    result = bcs(
        "Start-BackupCopy", "Daily SQL", "-Path", target, "-Credential", "nas",
        environ=with_password(samba),
    )  # fmt: skip
    assert result.status == 0, result.stderr
    (done,) = result.objects
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    assert done["Target"] == {
        "Kind": "Share",
        "Repository": None,
        "Extent": None,
        "Path": target,
        "Credential": "nas",
    }
    # The same format as a local copy, written through the share.
    source = chains / "repo/main/Daily SQL"
    on_share = samba.share / "copies/deep/Daily SQL"
    assert sorted(p.name for p in on_share.iterdir()) == sorted(p.name for p in source.iterdir())
    for point in source.glob("*.vb[ki]"):
        assert (on_share / point.name).read_bytes() == point.read_bytes()

    (registered,) = bcs("Get-Backup", "-Origin", "Copy", environ=with_password(samba)).objects
    assert registered["Path"] == f"{target}/Daily SQL"
    tested = bcs("Test-Backup", registered["Id"], environ=with_password(samba))
    assert tested.status == 0, tested.stderr
    assert tested.objects[0]["Result"] == "Success" and tested.objects[0]["Files"] == 3
    (original,) = bcs("Get-Backup", "Daily SQL", "-Origin", "Job").objects
    for point in ("0", "latest"):
        a, b = tmp_path / f"original-{point}", tmp_path / f"share-{point}"
        assert bcs("Restore-Backup", original["Id"], str(a), "-RestorePoint", point).status == 0
        restored = bcs(
            "Restore-Backup", registered["Id"], str(b), "-RestorePoint", point,
            environ=with_password(samba),
        )  # fmt: skip
        assert restored.status == 0, restored.stderr
        assert snapshot(a) == snapshot(b)
    assert snapshot(tmp_path / "share-latest") == snapshot(chains / "data/sql")

    # Damage on the share is found by Test-Backup, as on a local folder.
    vbk = next(on_share.glob("*.vbk"))
    data = bytearray(vbk.read_bytes())
    data[len(data) // 2] ^= 1
    vbk.write_bytes(bytes(data))
    damaged = bcs("Test-Backup", registered["Id"], environ=with_password(samba))
    assert damaged.status == 1 and "checksum mismatch" in damaged.objects[0]["Errors"][0]


def test_a_share_repository_takes_its_credential_and_a_pipeline_copies_there(chains, samba, shell):
    result = shell(
        "Get-Backup -Origin Job | Start-BackupCopy -Repository NAS", environ=with_password(samba)
    )
    assert result.returncode == 0, result.stderr
    (done,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert done["Target"]["Kind"] == "Share" and done["Target"]["Repository"] == "NAS"
    assert done["Target"]["Credential"] == "nas"
    assert sorted(os.listdir(samba.share / "nas")) == ["Daily SQL", "Weekly Files"]
    tested = shell("Get-Backup -Origin Copy | Test-Backup", environ=with_password(samba))
    assert tested.returncode == 0, tested.stderr
    assert [json.loads(line)["Result"] for line in tested.stdout.splitlines()] == ["Success"] * 2
    plugin = json.loads(shell("Get-Plugin smb").stdout)
    assert plugin["Loaded"] and plugin["Locations"] == ["smb"]


def everything_under(folder: Path) -> bytes:
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            found.append(name.encode())
            found.append(Path(root, name).read_bytes())
    return b"\n".join(found)


def test_a_wrong_password_is_a_clear_error_and_no_password_is_ever_written(chains, samba, shell):
    target = f"{samba.url}/copies"
    wrong = shell(
        f"Start-BackupCopy 'Daily SQL' -Path {target} -Credential nas",
        environ=with_password(samba, WRONG),
    )
    assert wrong.returncode == 1
    assert "logon failure" in wrong.stderr and "wrong user name or password" in wrong.stderr
    assert sambaserver.USER in wrong.stderr and "credential 'nas'" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    assert not (samba.share / "copies").exists()

    # A copy that works, synchronous and in a detached worker, then everything that reads it.
    right = with_password(samba)
    outputs = [wrong.stdout, wrong.stderr]
    statuses = []
    for command in (
        f"Start-BackupCopy 'Daily SQL' -Path {target} -Credential nas -Verbose",
        f"Start-BackupCopy 'Weekly Files' -Path {target} -RunAsync -Credential nas "
        "| Wait-CopySession -Timeout 60s",
        "Get-Backup -Origin Copy | Test-Backup",
        "Get-CopySession | Get-CopySession -Log",
        "Get-Repository NAS -Verbose -Debug",
        f"Start-BackupCopy 'Daily SQL' -Path {target} -Credential nas",  # exists: refused
    ):
        done = shell(command, environ=right)
        statuses.append(done.returncode)
        outputs += [done.stdout, done.stderr]
    assert statuses == [0, 0, 0, 0, 0, 1], outputs
    assert sorted(os.listdir(samba.share / "copies")) == ["Daily SQL", "Weekly Files"]
    written = everything_under(chains / ".bcs") + "\n".join(outputs).encode()
    for secret in (WRONG, samba.password):
        assert secret.encode() not in written
    assert b"Weekly Files" in written  # the search itself sees what was written


def test_a_password_file_must_be_private(chains, samba, bcs):
    password_file = chains / "nas.password"
    password_file.write_text(samba.password + "\n")
    password_file.chmod(0o644)
    target = f"{samba.url}/copies"
    refused = bcs("Start-BackupCopy", "Daily SQL", "-Path", target, "-Credential", "nas-file")
    assert refused.status == 2
    assert "passwordFile" in refused.stderr and "0644" in refused.stderr
    assert "chmod 600" in refused.stderr and samba.password not in refused.stderr
    assert bcs("Get-CopySession").objects == []
    password_file.chmod(0o600)
    accepted = bcs("Start-BackupCopy", "Daily SQL", "-Path", target, "-Credential", "nas-file")
    assert accepted.status == 0, accepted.stderr


def test_a_share_path_without_the_plugin_names_the_plugin(chains, samba, bcs):
    no_plugins = {"BCS_LOAD_PLUGINS": "", **with_password(samba)}
    for target in (["-Path", f"{samba.url}/copies"], ["-Path", "//nas01/backups"]):
        result = bcs("Start-BackupCopy", "Daily SQL", *target, environ=no_plugins)
        assert result.status == 2 and "bcs-smb" in result.stderr, result.stderr
    result = bcs("Start-BackupCopy", "Daily SQL", "-Repository", "NAS", environ=no_plugins)
    assert result.status == 2 and "bcs-smb" in result.stderr and "'NAS'" in result.stderr
    assert os.listdir(samba.share) == []
    misplaced = bcs("Start-BackupCopy", "Daily SQL", "-Path", "copies", "-Credential", "nas")
    assert misplaced.status == 2 and "-Credential" in misplaced.stderr
    unknown = bcs("Start-BackupCopy", "Daily SQL", "-Path", f"{samba.url}/x", "-Credential", "no")
    assert unknown.status == 2 and "no credential named 'no'" in unknown.stderr
    in_url = bcs("Start-BackupCopy", "Daily SQL", "-Path", f"smb://u:{WRONG}@127.0.0.1/s/x")
    assert in_url.status == 2 and "inventory" in in_url.stderr and WRONG not in in_url.stderr


def test_a_right_password_in_the_path_is_refused_before_connecting(chains, samba, bcs):
    # The real account and password: refused all the same, before anything is written.
    host = samba.url.removeprefix("smb://")
    for target in (
        f"smb://{samba.user}:{samba.password}@{host}/copies",
        f"//{samba.user}:{samba.password}@{host}/copies",
    ):
        result = bcs("Start-BackupCopy", "Daily SQL", "-Path", target)
        assert result.status == 2 and "user name or password" in result.stderr, result.stderr
        assert samba.password not in result.stdout + result.stderr
    assert os.listdir(samba.share) == []


def test_a_server_that_refuses_connections_fails_before_anything_starts(chains, samba, bcs):
    samba.stop()
    result = bcs(
        "Start-BackupCopy", "Daily SQL", "-Path", f"{samba.url}/copies", "-Credential", "nas",
        environ=with_password(samba),
    )  # fmt: skip
    assert result.status == 1
    assert "connection refused" in result.stderr and "Traceback" not in result.stderr
    assert bcs("Get-CopySession").objects == []
    assert bcs("Get-BackupJob", "Daily SQL").objects[0]["Enabled"] is True


def read_session(workdir: Path, session_id: str) -> dict:
    with open(workdir / ".bcs/sessions" / f"{session_id}.json") as f:
        return json.load(f)


@pytest.mark.slow
def test_server_stopped_mid_copy_then_retry_copies_only_what_is_missing(workdir, samba, bcs, shell):
    inventory_for(workdir, samba.url)
    (workdir / "repo/main").mkdir(parents=True)
    big = workdir / "data/sql/big.bin"
    big.parent.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as f:
        rng = random.Random(66)
        for _ in range(320):
            f.write(rng.randbytes(MiB))
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    edit(workdir / "data/sql/small.txt", b"an increment")
    assert bcs("Start-BackupJob", "Daily SQL").status == 0

    started = shell(
        f"Start-BackupCopy 'Daily SQL' -Path {samba.url}/copies -Credential nas -RunAsync",
        environ=with_password(samba),
    )
    assert started.returncode == 0, started.stderr
    session_id = json.loads(started.stdout)["Id"]
    # Stop the server once a checkpoint of the big file is durable on the share.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        record = read_session(workdir, session_id)
        (full,) = [f for f in record["Backups"][0]["Files"] if f["File"].endswith(".vbk")]
        if full["Durable"] > 0 or record["State"] not in ("Starting", "Working"):
            break
        time.sleep(0.005)
    durable = record["Backups"][0]["BytesCopied"]
    assert 0 < full["Durable"] < full["Size"], record
    samba.stop()
    partial = [p for p in (samba.share / "copies/Daily SQL").iterdir() if ".partial" in p.name]
    assert partial, "the copy should have been cut in the middle of the big file"

    waited = shell(f"Wait-CopySession {session_id} -Timeout 120s")
    assert waited.returncode == 1
    failed = json.loads(waited.stdout)
    assert failed["State"] == "ActionRequired" and failed["Result"] == "None"
    reason = failed["Reason"]
    assert "127.0.0.1" in reason and ("lost" in reason or "refused" in reason), reason
    assert bcs("Get-BackupJob", "Daily SQL").objects[0]["HeldBy"] == [session_id]
    worker_log = (workdir / ".bcs/sessions" / f"{session_id}.worker.log").read_text()
    assert "Traceback" not in worker_log, worker_log

    # While the server is down, Retry fails again with the cause, and keeps what is durable.
    again = bcs("Resume-CopySession", session_id, "-Action", "Retry", environ=with_password(samba))
    assert again.status == 1 and "connection refused" in again.objects[0]["Reason"]

    samba.start()
    retried = bcs(
        "Resume-CopySession", session_id, "-Action", "Retry", environ=with_password(samba)
    )
    assert retried.status == 0, retried.stderr
    (done,) = retried.objects
    assert (done["State"], done["Result"]) == ("Stopped", "Success")
    total = done["BytesTotal"]
    last = done["Actions"][-1]
    assert last["Action"] == "Retry" and last["Result"] == "Success"
    # Only what was not durable yet went over the wire again.
    assert last["BytesWritten"] <= total - durable + 64 * 1024
    (copy,) = bcs("Get-Backup", "-Origin", "Copy", environ=with_password(samba)).objects
    assert bcs("Test-Backup", copy["Id"], environ=with_password(samba)).status == 0
    assert not [p for p in (samba.share / "copies/Daily SQL").iterdir() if p.name.startswith(".")]
    assert bcs("Get-BackupJob", "Daily SQL").objects[0]["Enabled"] is True


def damage(path: Path) -> bytes:
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[-1] ^= 0xFF
    path.write_bytes(bytes(damaged))
    return original


def on_share(share: Path) -> dict[str, tuple]:
    """What is on the share, without folder mtimes (removing an entry changes its folder's)."""
    return {k: v if v[0] != "dir" else v[:2] for k, v in snapshot(share).items()}


def test_undo_on_a_share_removes_exactly_what_the_session_created(chains, samba, bcs):
    # Things that were on the share before: they must all stay.
    edit(samba.share / "copies/keep.txt", b"not ours")
    edit(samba.share / "copies/older/Daily SQL.vbm", b"{}")
    before = on_share(samba.share)
    # A damaged source makes the session stop in ActionRequired with one backup copied.
    vib = sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1]
    original = damage(vib)
    target = f"{samba.url}/copies/new/deeper"
    result = bcs(
        "Start-BackupCopy", "Weekly Files,Daily SQL", "-Path", target, "-Credential", "nas",
        environ=with_password(samba),
    )  # fmt: skip
    assert result.status == 1
    (failed,) = result.objects
    status = {b["Name"]: b["Status"] for b in failed["Backups"]}
    assert status == {"Weekly Files": "Copied", "Daily SQL": "Failed"}
    assert (samba.share / "copies/new/deeper/Weekly Files/Weekly Files.vbm").is_file()
    assert len(bcs("Get-Backup", "-Origin", "Copy", environ=with_password(samba)).objects) == 1

    undone = bcs(
        "Resume-CopySession", failed["Id"], "-Action", "Undo", "-Force",
        environ=with_password(samba),
    )  # fmt: skip
    assert undone.status == 0, undone.stderr
    (done,) = undone.objects
    assert (done["State"], done["Result"]) == ("Stopped", "Failed")
    assert done["Actions"][-1]["Result"] == "Success", done["Reason"]
    assert on_share(samba.share) == before
    assert bcs("Get-Backup", "-Origin", "Copy", environ=with_password(samba)).objects == []
    assert bcs("Get-BackupJob", "Daily SQL").objects[0]["Enabled"] is True
    vib.write_bytes(original)


def test_skip_failed_on_a_share_keeps_the_copied_backup_and_removes_the_rest(chains, samba, bcs):
    damage(sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1])
    result = bcs(
        "Start-BackupCopy", "Daily SQL,Weekly Files", "-Path", f"{samba.url}/copies",
        "-Credential", "nas", environ=with_password(samba),
    )  # fmt: skip
    assert result.status == 1
    assert any(".partial" not in p.name for p in (samba.share / "copies/Daily SQL").iterdir())
    skipped = bcs(
        "Resume-CopySession", result.objects[0]["Id"], "-Action", "SkipFailed",
        environ=with_password(samba),
    )  # fmt: skip
    assert skipped.status == 0, skipped.stderr
    assert skipped.objects[0]["Result"] == "Warning"
    assert sorted(os.listdir(samba.share / "copies")) == ["Weekly Files"]
    (kept,) = bcs("Get-Backup", "-Origin", "Copy", environ=with_password(samba)).objects
    assert kept["Name"] == "Weekly Files"
    assert bcs("Test-Backup", kept["Id"], environ=with_password(samba)).status == 0


def test_undo_waits_while_the_share_cannot_be_reached(chains, samba, bcs):
    damage(sorted((chains / "repo/main/Daily SQL").glob("*.vib"))[-1])
    result = bcs(
        "Start-BackupCopy", "Daily SQL", "-Path", f"{samba.url}/copies", "-Credential", "nas",
        environ=with_password(samba),
    )  # fmt: skip
    assert result.status == 1
    session_id = result.objects[0]["Id"]
    samba.stop()
    refused = bcs(
        "Resume-CopySession", session_id, "-Action", "Undo", "-Force",
        environ=with_password(samba),
    )  # fmt: skip
    assert refused.status == 1 and "connection refused" in refused.stderr
    assert bcs("Get-CopySession", session_id).objects[0]["State"] == "ActionRequired"
    samba.start()
    undone = bcs(
        "Resume-CopySession", session_id, "-Action", "Undo", "-Force",
        environ=with_password(samba),
    )  # fmt: skip
    assert undone.status == 0, undone.stderr
    assert os.listdir(samba.share) == []


def permissions(path: Path) -> tuple[int, int, int]:
    """What the owner, the group and others may do with a file on the server (rwx bits each):
    from its POSIX ACL where it has one (Samba keeps an NT DACL there), else from its mode."""
    st = os.stat(path)
    try:
        acl = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        mode = stat.S_IMODE(st.st_mode)
        return mode >> 6 & 7, mode >> 3 & 7, mode & 7
    owner = group = other = 0
    mask = 7
    for offset in range(4, len(acl), 8):
        tag, perm, ident = struct.unpack_from("<HHI", acl, offset)
        if tag == 0x01:  # the owner
            owner = perm
        elif (tag == 0x02 and ident != st.st_uid) or tag in (0x04, 0x08):  # the group class
            group |= perm
        elif tag == 0x10:
            mask = perm
        elif tag == 0x20:
            other = perm
    return owner, group & mask, other


def bits(mode: int) -> tuple[int, int, int]:
    return mode >> 6 & 7, mode >> 3 & 7, mode & 7


def test_copies_on_a_share_keep_the_modes_of_their_source_files(chains, samba, bcs):
    source = chains / "repo/main/Daily SQL"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in source.iterdir()}
    assert set(modes.values()) == {0o600, 0o644}  # private restore points, a readable .vbm
    result = bcs(
        "Start-BackupCopy", "Daily SQL", "-Path", f"{samba.url}/copies", "-Credential", "nas",
        environ=with_password(samba),
    )  # fmt: skip
    assert result.status == 0, result.stderr
    on_share = samba.share / "copies/Daily SQL"
    assert sorted(os.listdir(on_share)) == sorted(modes)  # no probe is left behind
    for name, mode in modes.items():
        assert permissions(on_share / name) == bits(mode), name
    (copy,) = bcs("Get-Backup", "-Origin", "Copy", environ=with_password(samba)).objects
    assert bcs("Test-Backup", copy["Id"], environ=with_password(samba)).status == 0


# What the server decides, where it does not keep a DACL as a POSIX ACL: on a file system
# without POSIX ACLs (ramfs), the DACL's mode bits; with nt acl support = no, its create mask.
SERVER_CASES = {
    "no-posix-acls": ("", None),
    "nt-acl-support-no": ("    nt acl support = no", 0o644),
}


@pytest.mark.parametrize("case", list(SERVER_CASES))
def test_what_the_server_decides_about_the_modes_of_copies(chains, samba, bcs, tmp_path, case):
    options, mask_decides = SERVER_CASES[case]
    share = tmp_path / f"share-{case}"
    share.mkdir()
    if options == "":
        mounted = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(share)], check=False)
        if mounted.returncode != 0:
            pytest.skip("cannot mount a ramfs here")
        # A ramfs says it has no free space: let the server report some (1 GiB).
        dfree = tmp_path / "dfree"
        dfree.write_text("#!/bin/sh\necho 1048576 1048576 1024\n")
        dfree.chmod(0o755)
        options = f"    dfree command = {dfree}"
    server = SambaServer(tmp_path / f"samba-{case}", share, share_options=options)
    try:
        server.setup()
        server.start()
        result = bcs(
            "Start-BackupCopy", "Daily SQL", "-Path", f"{server.url}/copies",
            "-Credential", "nas", environ=with_password(samba),
        )  # fmt: skip
        assert result.status == 0, result.stderr
        on_share = share / "copies/Daily SQL"
        assert {name: permissions(on_share / name) for name in os.listdir(on_share)} == {
            p.name: bits(mask_decides or stat.S_IMODE(p.stat().st_mode))
            for p in (chains / "repo/main/Daily SQL").iterdir()
        }
    finally:
        server.stop()
        if mask_decides is None:
            subprocess.run(["umount", "-l", str(share)], check=False)
