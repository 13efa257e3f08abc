"""Cmdlets of the nouns BackupCopy and CopySession."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

from cmdlets.backup import sessions
from cmdlets.backups import BACKUP_REQUIRED
from cmdlets.host.context import Context
from cmdlets.host.errors import BcsError, BusyError, InvalidOperationError
from cmdlets.host.registry import Param, cmdlet
from cmdlets.store.records import Lock

if TYPE_CHECKING:
    from cmdlets.backup.catalog import Backup

SESSION = "BackupCopy.CopySession"
SESSION_ID = Param(
    position=0,
    by_value={SESSION: "Id", "String": ""},
    by_property=True,
    aliases=("SessionId", "CopySessionId"),
    help="Session id, or a unique prefix of 4 or more characters (or piped sessions).",
    completes="session",
)
SESSION_IDS = dataclasses.replace(SESSION_ID, mandatory=True)


class _Interrupt:
    """Ctrl-C during a synchronous copy asks the copy to stop at the next safe point; the
    session then waits in ActionRequired instead of dying half-way."""

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _work(ctx: Context, session_id: str, lock: Lock, run_async: bool) -> dict[str, Any]:
    """Run the session here (with a progress bar on a terminal) or in a detached worker."""
    from cmdlets.backup import copying

    state = ctx.state
    if run_async:
        from cmdlets.backup.worker import spawn

        assert lock._fd is not None
        pid = spawn(state.root, session_id, lock._fd, ctx.env.environ)
        lock.release()  # the worker holds the same lock through its inherited descriptor
        record = sessions.update(state, session_id, lambda r: r.update(ProcessId=pid))
        sessions.log(state, session_id, ctx.now(), "WorkerStarted", f"detached worker pid {pid}")
        return record
    from cmdlets.host.progress import ProgressBar

    record = sessions.read(state, session_id) or {}
    total, done = sessions.totals(record)
    bar = ProgressBar(
        ctx.env.stderr, total, done, enabled=ctx.env.stderr_is_tty, width=ctx.env.terminal_width
    )
    try:
        with _Interrupt() as interrupt:
            record = copying.run(
                state,
                ctx.inventory,
                session_id,
                ctx.now,
                bar.advance,
                lambda: interrupt.hit,
                ctx.locations,
            )
        if interrupt.hit:
            ctx.status = 130
    finally:
        bar.close()
        lock.release()
    if record["State"] == "ActionRequired":
        ctx.status = max(ctx.status, 1)
        ctx.warn(f"copy session {session_id} needs action: {record.get('Reason')}")
    return record


@cmdlet("Start-BackupCopy", output_type=SESSION, changes_state=True)
def start_backup_copy(
    ctx: Context,
    backup: Annotated[
        Iterator[str] | None,
        dataclasses.replace(
            BACKUP_REQUIRED,
            help="Backups by name, id or id prefix (comma-separated, or piped Backup objects); "
            "all of them go into one session.",
        ),
    ] = None,
    repository: Annotated[
        str | None,
        Param(help="Copy into this repository (or scale-out repository).", completes="repository"),
    ] = None,
    path: Annotated[
        str | None,
        Param(
            help="Copy into this folder (created if missing): a local folder, or a shared folder "
            "//server/share/folder or smb://server[:port]/share/folder (bcs-smb plugin)."
        ),
    ] = None,
    credential: Annotated[
        str | None,
        Param(
            help="Credential of the inventory for a shared folder -Path (default: the one of "
            "the shared-folder repository the path is in)."
        ),
    ] = None,
    name: Annotated[
        list[str] | None,
        Param(help="Folder name of each copy (default: the backup's name); one per backup."),
    ] = None,
    run_async: Annotated[
        bool, Param(help="Return the session at once; a detached worker process copies.")
    ] = False,
) -> Iterator[dict[str, Any]]:
    """Copy backups — whole chains of restore points — to a repository or a folder.

    All backups given, named or piped, go into one copy session. Before anything is touched,
    the session checks that no backup comes from an agent backup policy, that no backup would
    move between extents of its own scale-out repository, that the target is not inside the
    folder of a backup it copies, that no target folder exists and that the target has room
    for all of it. The source jobs are then disabled (held) while their chains are copied, and
    enabled again afterwards if they were enabled before; a job writing a restore point is
    waited for, and its chain copied as the job left it. Of two sessions started at once for
    one target folder, exactly one gets it: the other writes nothing there.

    Files are verified against the checksums of the source's metadata while they are copied.
    A session with a failed backup ends in ActionRequired (exit status 1) with the jobs still
    disabled: finalize it with Resume-CopySession -Action Retry, SkipFailed or Undo.

    Examples:
      Start-BackupCopy -Backup 'Daily SQL' -Repository Offsite
      Get-Backup -Name 'Daily SQL' | Start-BackupCopy -Repository Offsite
      Start-BackupCopy -Backup 'Daily SQL',Mail -Path /mnt/usb/copies -RunAsync
      Start-BackupCopy -Backup 'Daily SQL' -Repository Main -Name 'Daily SQL (copy)'
      Start-BackupCopy -Backup 'Daily SQL' -Path //nas01/backups/copies -Credential nas
    """
    from cmdlets.backup import copying
    from cmdlets.backup.catalog import all_backups, resolve

    inventory, state = ctx.inventory, ctx.state
    catalog = all_backups(inventory, state, locations=ctx.locations)
    chosen: list[Backup] = []
    for spec in backup or []:
        found = resolve(catalog, spec)
        if all(b.id != found.id for b in chosen):
            chosen.append(found)
    target = copying.choose_target(
        inventory, chosen, repository, path, ctx.env.cwd, ctx.locations, credential
    )
    record = copying.plan(
        inventory, chosen, target, name, ctx.inventory_path, ctx.now(), ctx.locations
    )
    what = ", ".join(f"'{b.name}'" for b in chosen)
    if not ctx.should_process(target["Path"], f"Copy backup {what}"):
        return
    session_id = record["Id"]
    # The work lock first: from the moment the record is visible, every command can tell that
    # a live process works on it.
    lock = sessions.claim(state, session_id)
    try:
        sessions.create(state, record)
        sessions.log(
            state,
            session_id,
            ctx.now(),
            "ChecksPassed",
            f"{len(chosen)} backups, {sum(b['BytesTotal'] for b in record['Backups'])} "
            f"bytes to {target['Path']}",
        )
        copying.take_holds(state, inventory, record, ctx.now)
    except BaseException:
        state.delete(sessions.KIND, session_id)
        lock.release()
        raise
    ctx.verbose(f"copy session {session_id} started")
    result = _work(ctx, session_id, lock, run_async)
    yield sessions.session_object(result)


def _sessions(ctx: Context) -> list[dict[str, Any]]:
    settled = [
        sessions.settle_if_orphaned(ctx.state, r, ctx.now())
        for r in sessions.all_sessions(ctx.state)
    ]
    return sorted(settled, key=lambda r: r.get("CreationTime") or "", reverse=True)


@cmdlet("Get-CopySession", output_type=SESSION)
def get_copy_session(
    ctx: Context,
    id: Annotated[list[str] | None, dataclasses.replace(SESSION_ID)] = None,
    state: Annotated[
        str | None, Param(values=sessions.STATES, help="Only sessions in this state.")
    ] = None,
    result: Annotated[
        str | None, Param(values=sessions.RESULTS, help="Only sessions with this result.")
    ] = None,
    last: Annotated[
        timedelta | None, Param(help="Only sessions created within this time (24h, 7d).")
    ] = None,
    log: Annotated[
        bool, Param(help="The session's log instead of the session (with -Id).")
    ] = False,
) -> Iterator[dict[str, Any]]:
    """Get copy sessions, newest first.

    A session whose worker process died is shown as ActionRequired, with the reason. With -Log,
    the events of a session: checks, holds taken and released, each backup and file started,
    copied or failed with its cause, and each action taken.

    Examples:
      Get-CopySession
      Get-CopySession -State ActionRequired
      Get-CopySession -Last 24h -Result Warning
      Get-CopySession -Id 3f2a -Log
    """
    from cmdlets.backup.chain import parse_time

    ids = {sessions.resolve_id(ctx.state, i) for i in id} if id else None
    since = ctx.now() - last if last is not None else None
    for record in _sessions(ctx):
        if ids is not None and record["Id"] not in ids:
            continue
        if state and record.get("State") != state:
            continue
        if result and record.get("Result", "None") != result:
            continue
        if since and record.get("CreationTime") and parse_time(record["CreationTime"]) < since:
            continue
        if log:
            for entry in sessions.read_log(ctx.state, record["Id"]):
                yield {"TypeName": "BackupCopy.SessionLogEntry", "SessionId": record["Id"], **entry}
        else:
            yield sessions.session_object(record)


@cmdlet("Wait-CopySession", output_type=SESSION)
def wait_copy_session(
    ctx: Context,
    id: Annotated[list[str] | None, SESSION_IDS] = None,
    timeout: Annotated[timedelta | None, Param(help="Give up after this long (30s, 10m).")] = None,
) -> Iterator[dict[str, Any]]:
    """Wait until copy sessions leave Working, then write them.

    On timeout the session is written as it is and an error says so (exit status 1).

    Examples:
      Wait-CopySession -Id 3f2a
      Start-BackupCopy 'Daily SQL' -Repository Offsite -RunAsync | Wait-CopySession -Timeout 1h
    """
    deadline = time.monotonic() + timeout.total_seconds() if timeout is not None else None
    for spec in id or []:
        session_id = sessions.resolve_id(ctx.state, spec)
        delay = 0.05
        while True:
            record = sessions.read(ctx.state, session_id) or {}
            record = sessions.settle_if_orphaned(ctx.state, record, ctx.now())
            if record.get("State") not in sessions.ACTIVE:
                break
            if deadline is not None and time.monotonic() >= deadline:
                ctx.write_error(
                    BcsError(
                        f"copy session {session_id} is still {record.get('State')} after {timeout}",
                        target=session_id,
                        error_id="WaitTimeout",
                    )
                )
                break
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        if record.get("State") == "ActionRequired":
            ctx.status = max(ctx.status, 1)
        yield sessions.session_object(record)


@cmdlet("Stop-CopySession", output_type=SESSION, changes_state=True)
def stop_copy_session(
    ctx: Context,
    id: Annotated[list[str] | None, SESSION_IDS] = None,
) -> Iterator[dict[str, Any]]:
    """Ask running copy sessions to stop at the next safe point.

    What was copied so far is kept and made durable; the session goes to ActionRequired, so
    that Retry can continue it later, or SkipFailed / Undo can finalize it.

    Examples:
      Stop-CopySession -Id 3f2a
      Get-CopySession -State Working | Stop-CopySession
    """
    for spec in id or []:
        session_id = sessions.resolve_id(ctx.state, spec)
        if not ctx.should_process(session_id, "Stop copy session"):
            continue
        record = sessions.settle_if_orphaned(
            ctx.state, sessions.read(ctx.state, session_id) or {}, ctx.now()
        )
        if record.get("State") not in sessions.ACTIVE:
            ctx.write_error(
                InvalidOperationError(
                    f"copy session {session_id} is {record.get('State')}, not running",
                    target=session_id,
                    error_id="SessionNotRunning",
                )
            )
            continue

        def request(current: dict[str, Any]) -> None:
            if current.get("State") in sessions.ACTIVE:
                current["StopRequested"] = True
                current["State"] = "Stopping"

        record = sessions.update(ctx.state, session_id, request)
        sessions.log(ctx.state, session_id, ctx.now(), "StopRequested", "stop requested by user")
        yield sessions.session_object(record)


@cmdlet("Resume-CopySession", output_type=SESSION, changes_state=True, destructive=True)
def resume_copy_session(
    ctx: Context,
    id: Annotated[list[str] | None, SESSION_IDS] = None,
    action: Annotated[
        str | None,
        Param(
            mandatory=True,
            values=("Retry", "SkipFailed", "Undo"),
            help="Retry: copy what was not copied yet. SkipFailed: keep what was copied. "
            "Undo: remove everything the session wrote.",
        ),
    ] = None,
    run_async: Annotated[bool, Param(help="Retry in a detached worker process.")] = False,
) -> Iterator[dict[str, Any]]:
    """Finalize copy sessions that wait in ActionRequired.

    Retry holds the jobs again if they are not held, then copies only the files that were not
    copied and verified yet, resuming a partly copied file from its last durable byte.
    SkipFailed keeps the backups that were copied and removes what the session made for the
    failed ones; with none copied, it removes everything and the result is Failed. Undo
    removes everything the session created (files and folders it made, never anything that
    was there before or that another session made). SkipFailed and Undo release the jobs: each
    is enabled again if it was before and no other session holds it.
    Undo asks for confirmation on a terminal; without one it needs -Force or -Confirm:$false.

    Examples:
      Resume-CopySession -Id 3f2a -Action Retry
      Get-CopySession -State ActionRequired | Resume-CopySession -Action SkipFailed
      Resume-CopySession -Id 3f2a -Action Undo -Confirm:$false
    """
    from cmdlets.backup import copying

    assert action is not None
    for spec in id or []:
        session_id = sessions.resolve_id(ctx.state, spec)
        record = sessions.settle_if_orphaned(
            ctx.state, sessions.read(ctx.state, session_id) or {}, ctx.now()
        )
        _must_need_action(record, session_id)
        if action != "Undo":
            _must_not_be_undone(record, session_id)
        if not ctx.should_process(
            session_id, f"{action} copy session", destructive=action == "Undo"
        ):
            continue
        lock = sessions.claim(ctx.state, session_id)
        try:
            record = sessions.read(ctx.state, session_id) or {}
            _must_need_action(record, session_id)
            if action != "Undo":
                _must_not_be_undone(record, session_id)
            if action == "Retry":
                # Before anything changes, as at the start: a session whose process died
                # right after its record was written never held its jobs.
                copying.take_holds(ctx.state, ctx.inventory, record, ctx.now)
            _begin(ctx, session_id, action)
        except BaseException:
            lock.release()
            raise
        if action == "Retry":
            record = _work(ctx, session_id, lock, run_async)
        else:
            with contextlib.ExitStack() as stack:
                stack.callback(lock.release)
                record = copying.finalize(
                    ctx.state, ctx.inventory, session_id, action, ctx.now, ctx.locations
                )
        yield sessions.session_object(record)


def _must_need_action(record: dict[str, Any], session_id: str) -> None:
    if record.get("State") in sessions.ACTIVE:
        # Read after settle_if_orphaned: a process is alive and working on it.
        raise BusyError(
            f"copy session {session_id} is being worked on by pid {record.get('ProcessId')} "
            f"({record.get('State')})",
            target=session_id,
            error_id="SessionBusy",
        )
    if record.get("State") != "ActionRequired":
        raise InvalidOperationError(
            f"copy session {session_id} is {record.get('State')} (result "
            f"{record.get('Result', 'None')}); only a session in ActionRequired can be resumed",
            target=session_id,
            error_id="SessionNotActionRequired",
        )


def _must_not_be_undone(record: dict[str, Any], session_id: str) -> None:
    """Refuse Retry and SkipFailed after an Undo that did not finish: it may have removed
    files of backups the record still says are copied, which Retry would register again and
    SkipFailed would keep, without those files."""
    actions = record.get("Actions") or []
    if actions and actions[-1].get("Action") == "Undo":
        raise InvalidOperationError(
            f"copy session {session_id} was being undone when that stopped; finish it with "
            "Resume-CopySession -Action Undo",
            target=session_id,
            error_id="SessionBeingUndone",
        )


def _begin(ctx: Context, session_id: str, action: str) -> None:
    now = ctx.now()

    def change(record: dict[str, Any]) -> None:
        record.setdefault("Actions", []).append(
            {"Action": action, "Time": now.isoformat(), "Result": None}
        )
        record["ProcessId"] = os.getpid()  # an async worker puts its own pid here
        if action == "Retry":
            record["State"] = "Working"
            record["Reason"] = None
            record["StopRequested"] = False
            for backup in record["Backups"]:
                if backup["Status"] in ("Failed", "Copying"):
                    backup["Status"] = "Pending"
                    backup["Error"] = None

    sessions.update(ctx.state, session_id, change)
    sessions.log(ctx.state, session_id, now, "ActionTaken", f"{action} chosen")
