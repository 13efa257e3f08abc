"""The detached process that works on a copy session started or resumed with -RunAsync.

Started as ``python -m cmdlets.backup.worker STATE_DIR SESSION_ID LOCK_FD``. The parent took
the session's work lock and passed its descriptor down: the lock is this process's from the
first instant, and the kernel releases it when this process ends, however it ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from cmdlets.host.errors import BcsError


def spawn(
    state_dir: Path, session_id: str, lock_fd: int, environ: Mapping[str, str] | None = None
) -> int:
    """Start a worker that inherits the locked descriptor; returns its pid.

    The worker gets ``environ``, the environment of the command that starts it: the same
    plugins load (BCS_LOAD_PLUGINS) and the same passwords are found (a credential's
    passwordEnv), whichever process runs the copy.

    The worker is detached by a double fork: the process started here forks the worker, says
    its pid and exits at once, so the worker is nobody's child (no zombie in a long-lived
    shell) and lives on after the command that started it."""
    log = state_dir / "sessions" / f"{session_id}.worker.log"
    with open(log, "ab", buffering=0) as err:
        os.chmod(log, 0o600)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cmdlets.backup.worker",
                "--detach",
                str(state_dir),
                session_id,
                str(lock_fd),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            pass_fds=(lock_fd,),
            start_new_session=True,  # not killed with the terminal that started it
            env=dict(environ) if environ is not None else None,
            check=False,
        )
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise BcsError(f"could not start the copy worker (see {log})", error_id="WorkerFailed")
    return int(done.stdout)


def main(argv: list[str]) -> int:
    from datetime import UTC, datetime

    from cmdlets.backup import copying, sessions
    from cmdlets.backup.inventory import load_inventory
    from cmdlets.backup.location import Locations
    from cmdlets.host.plugins import load
    from cmdlets.store import StateDir

    state_dir, session_id, lock_fd = Path(argv[0]), argv[1], int(argv[2])
    state = StateDir(state_dir, holder="copy worker")

    def clock() -> datetime:
        return datetime.now(UTC)

    try:
        record = sessions.read(state, session_id)
        if record is None:
            raise BcsError(f"copy session {session_id} has no record")
        inventory = load_inventory(Path(record["Inventory"]), cache_dir=state.directory("cache"))
        # The target may be a shared folder: the plugins reach it, as in the starting command.
        registry, _ = load(os.environ, _warn)
        locations = Locations(registry.locations, inventory.credentials, os.environ)
        copying.run(state, inventory, session_id, clock, locations=locations)
    except BcsError as exc:
        sessions.log(state, session_id, clock(), "WorkerFailed", exc.message)
        sys.stderr.write(f"copy worker: {exc.message}\n")
        return 1
    finally:
        os.close(lock_fd)
    return 0


def _warn(message: str) -> None:
    sys.stderr.write(f"WARNING: {message}\n")


def detach(argv: list[str]) -> int:
    pid = os.fork()
    if pid:
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        os._exit(0)  # the worker goes on alone
    # Let go of the pipe the starter reads the pid from, or it would wait for the whole copy.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return main(argv)


if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(detach(args[1:]) if args[:1] == ["--detach"] else main(args))
