"""A real Samba server on the loopback interface, for the tests and the benchmark of bcs-smb.

:class:`SambaServer` writes a private ``smb.conf`` (every directory Samba uses lies under one
work folder), gives a local Unix account a Samba password, and runs ``smbd`` in the foreground
at a free high port on 127.0.0.1, so that it never touches the machine's own Samba setup. It
needs root (smbd switches to the account's identity, and the account may have to be created)
and the Debian package ``samba``; :func:`unavailable` says why it cannot run, for a skip.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

USER = "bcs-smbtest"
PASSWORD = "Sm8-t3st-pässword"
SHARE = "backups"


def unavailable() -> str | None:
    """Why no test server can run here, or None if it can."""
    if os.geteuid() != 0:
        return "running smbd and adding its test account need root"
    for tool in ("smbd", "smbpasswd"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (Debian package samba; .ci/run installs it)"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_user(name: str = USER) -> None:
    """Create the local account the share is reached as (no home, no login shell)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )


class SambaServer:
    """One smbd serving ``share`` (a folder) as ``//127.0.0.1/backups`` at ``port``."""

    def __init__(
        self, work: Path, share: Path, password: str = PASSWORD, share_options: str = ""
    ) -> None:
        self.work = work
        self.share = share
        self.password = password
        self.share_options = share_options  # more lines for the share's section of smb.conf
        self.user = USER
        self.port = free_port()
        self.conf = work / "smb.conf"
        self.log = work / "smbd.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The share as bcs names it (a UNC path has no room for a port: smb:// carries it)."""
        return f"smb://127.0.0.1:{self.port}/{SHARE}"

    def setup(self) -> None:
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        self.share.mkdir(parents=True, exist_ok=True)
        w = self.work
        # "force user = root": the share lies below pytest's 0700 temporary folders, which the
        # test account could not enter; the password is still checked for that account.
        self.conf.write_text(
            f"""[global]
    server role = standalone server
    workgroup = BCSTEST
    netbios name = BCSTEST
    smb ports = {self.port}
    interfaces = 127.0.0.1
    bind interfaces only = yes
    disable netbios = yes
    server min protocol = SMB2
    private dir = {w}/private
    lock directory = {w}/lock
    state directory = {w}/state
    cache directory = {w}/cache
    pid directory = {w}/pid
    ncalrpc dir = {w}/ncalrpc
    log file = {self.log}
    log level = 1
    passdb backend = tdbsam:{w}/private/passdb.tdb
    load printers = no
    printing = bsd
    printcap name = /dev/null
    disable spoolss = yes
    map to guest = never
    strict sync = yes

[{SHARE}]
    path = {self.share}
    read only = no
    valid users = {self.user}
    force user = root
    create mask = 0644
    directory mask = 0755
{self.share_options}
"""
        )
        ensure_user(self.user)
        subprocess.run(
            [_tool("smbpasswd"), "-c", str(self.conf), "-a", "-s", self.user],
            input=f"{self.password}\n{self.password}\n".encode(),
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 20) -> None:
        """Start smbd and wait until its port accepts connections."""
        log = open(self.log.with_suffix(".out"), "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [_tool("smbd"), "--foreground", "--no-process-group", "-s", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # smbd's children (one per client) join this group: stop() ends them all.
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"smbd exited with {self.process.returncode}: {self.output()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"smbd did not listen on port {self.port}: {self.output()}")

    def stop(self) -> None:
        """Stop smbd and every child serving a client: terminate, then kill."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # Children serving clients may outlive the parent for a moment.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def output(self) -> str:
        parts = []
        for path in (self.log.with_suffix(".out"), self.log):
            with contextlib.suppress(OSError):
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)
