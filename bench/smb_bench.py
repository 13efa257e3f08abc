"""Copying a chain to a shared folder on a loopback Samba server, against the same copy to a
local folder and against Samba's own ``smbclient`` putting the same files.

The server is the one the tests use (``tests/sambaserver.py``): a private smbd on 127.0.0.1
at a free port, with signing as negotiated by default (SMB 3.1.1). Each run copies into a new
folder; times are wall-clock, from the command's start to its exit, which for bcs includes
its start-up, the checks, the SMB FLUSH of every file and the registration.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MiB = 1024 * 1024
FULL_MIB = 192
INCREMENTS = 4
INCREMENT_MIB = 16
JOB = "Bench SMB"


def _chain(work: Path, env: dict[str, str]) -> int:
    """A full and a few increments of random data; returns the bytes of the chain."""
    source = work / "source"
    source.mkdir(parents=True)
    rng = random.Random(445)
    with open(source / "big.bin", "wb") as f:
        for _ in range(FULL_MIB):
            f.write(rng.randbytes(MiB))
    _run(["Start-BackupJob", JOB], work, env)
    for step in range(INCREMENTS):
        (source / f"inc{step}.bin").write_bytes(rng.randbytes(INCREMENT_MIB * MiB))
        _run(["Start-BackupJob", JOB], work, env)
    chain = work / "repo" / JOB
    return sum(p.stat().st_size for p in chain.iterdir() if p.is_file())


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def _smbclient_put(server: object, folder: Path, run: int, auth: Path) -> float:
    """``mput`` of every file of ``folder`` (the working folder of smbclient)."""
    from sambaserver import SHARE

    port = server.port  # type: ignore[attr-defined]
    commands = f"prompt off; mkdir put-{run}; cd put-{run}; mput *"
    started = time.perf_counter()
    subprocess.run(
        ["smbclient", f"//127.0.0.1/{SHARE}", "-p", str(port), "-A", str(auth), "-c", commands],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    return time.perf_counter() - started


def bench_smb(work: Path, repeat: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "bench"))
    import sambaserver
    from tables import print_table

    title = (
        f"Copying a chain ({FULL_MIB} MiB full + {INCREMENTS} x {INCREMENT_MIB} MiB increments) "
        "to a share on a loopback Samba server"
    )
    reason = sambaserver.unavailable()
    if reason is None and shutil.which("smbclient") is None:
        reason = "smbclient is not installed (Debian package smbclient)"
    try:
        import bcs_smb  # noqa: F401 - only whether the plugin is installed
    except ImportError:
        reason = reason or "the bcs-smb plugin is not installed (make installs it)"
    if reason:
        print(f"\n{title}: skipped, {reason}")
        return

    folder = work / "smb"
    folder.mkdir()
    server = sambaserver.SambaServer(folder / "samba", folder / "share")
    server.setup()
    server.start()
    try:
        (folder / "inventory.yaml").write_text(
            "version: 1\n"
            "repositories:\n  - name: Main\n    path: ./repo\n"
            "credentials:\n"
            f"  - {{name: nas, username: {sambaserver.USER}, passwordEnv: BENCH_SMB_PASSWORD}}\n"
            "jobs:\n"
            f"  - {{name: {JOB}, type: backup-job, repository: Main, source: ./source}}\n"
        )
        (folder / "repo").mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("BCS_")}
        env["BENCH_SMB_PASSWORD"] = server.password
        size = _chain(folder, env)
        auth = folder / "smbclient.auth"
        auth.write_text(f"username = {server.user}\npassword = {server.password}\n")
        auth.chmod(0o600)
        runs = max(3, repeat // 7)
        to_share, to_local, put = [], [], []
        for run in range(runs):
            target = f"{server.url}/bcs-{run}"
            to_share.append(
                _run(["Start-BackupCopy", JOB, "-Path", target, "-Credential", "nas"], folder, env)
            )
            to_local.append(_run(["Start-BackupCopy", JOB, "-Path", f"local/{run}"], folder, env))
            # Local copies are synced by bcs; flush the rest of the page cache between runs.
            os.sync()
            put.append(_smbclient_put(server, folder / "repo" / JOB, run, auth))
            sizes = {p.name: p.stat().st_size for p in (server.share / f"put-{run}").iterdir()}
            if sum(sizes.values()) != size:
                raise RuntimeError(f"smbclient put {sizes}, not the {size} bytes of the chain")
            shutil.rmtree(server.share / f"bcs-{run}")
            shutil.rmtree(server.share / f"put-{run}")
            shutil.rmtree(folder / "local" / str(run))
            for records in ("sessions", "copies"):
                shutil.rmtree(folder / ".bcs" / records, ignore_errors=True)
    finally:
        server.stop()

    def row(what: str, samples: list[float], base: float) -> list[str]:
        seconds = statistics.median(samples)
        return [what, f"{seconds:.2f}", f"{size / MiB / seconds:.0f}", f"{seconds / base:.2f}"]

    share = statistics.median(to_share)
    print_table(
        f"{title} (median of {runs} runs; ratio: time against Start-BackupCopy to the share)",
        ["what", "seconds", "MiB/s", "ratio"],
        [
            row("Start-BackupCopy -Path smb://127.0.0.1:PORT/...", to_share, share),
            row("Start-BackupCopy -Path <local folder>", to_local, share),
            row("smbclient mput of the same files (no verify, no flush)", put, share),
        ],
    )
