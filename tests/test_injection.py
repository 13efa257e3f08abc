"""The fault injector itself: a kill lands exactly where it is asked for."""

from __future__ import annotations

import signal

from injection import Fault, run_injected


def test_a_kill_before_a_function_stops_the_process_there(workdir):
    done = run_injected(
        workdir, [Fault("cmdlets.backup.jobs:job_object", "kill-before")], "Get-BackupJob"
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == ""


def test_a_kill_on_the_second_call_lets_the_first_through(workdir):
    done = run_injected(
        workdir,
        [Fault("cmdlets.backup.jobs:job_object", "kill-after", nth=2)],
        "Get-BackupJob",
        "-OutputFormat",
        "Json",
    )
    assert done.returncode == -signal.SIGKILL
    assert len(done.stdout.splitlines()) == 1
