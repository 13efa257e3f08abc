"""The interactive shell on a real pseudo-terminal (pexpect), completion in the shell, in bash
and in zsh, and the same pipeline giving the same objects in the shell, with ``bcs -Command``
and through a Unix pipe of separate processes.

Synchronisation is on text only: the prompt, or what a command prints. prompt_toolkit redraws
only what changed, so a completion is recognised by text it writes whole (the tests type
lower case where the completion writes capitals).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
from pathlib import Path

import pexpect
import pytest
from conftest import BIN, clean_environ

from cmdlets.host.commandline import split_pipeline
from cmdlets.host.completion import complete, complete_words
from cmdlets.host.context import Environment
from cmdlets.host.runner import load_registry

PROMPT = "bcs>"
END_OF_LINE_EDITING = "\x1b[?2004l"
TIMEOUT = 60
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[=>]|\x1b\][^\x07]*\x07")


def terminal_environ(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = clean_environ(extra)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["TERM"] = "xterm-256color"
    # pexpect is no terminal emulator: it never answers prompt_toolkit's cursor position
    # requests, which would otherwise print a warning after a while.
    env["PROMPT_TOOLKIT_NO_CPR"] = "1"
    return env


def start(workdir: Path, extra: dict[str, str] | None = None) -> pexpect.spawn:
    child = pexpect.spawn(
        str(BIN / "bcs"),
        cwd=str(workdir),
        env=terminal_environ(extra),
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(50, 200),
    )
    child.expect_exact(PROMPT)
    return child


def next_prompt(child: pexpect.spawn) -> str:
    """Wait for the prompt that follows the line just accepted (or dropped) and return what
    was printed before it. prompt_toolkit redraws the accepted line, prompt included, and then
    turns bracketed paste off: only a prompt after that is the next one."""
    child.expect_exact(END_OF_LINE_EDITING)
    child.expect_exact(PROMPT)
    return ANSI.sub("", child.before)


def run(child: pexpect.spawn, line: str) -> str:
    """Type ``line``, wait for the next prompt, return what was printed in between."""
    child.send(line + "\r")
    return next_prompt(child)


def leave(child: pexpect.spawn) -> int:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus)


def json_lines(text: str) -> list[object]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


# --- the interactive shell -------------------------------------------------------------------


def test_prompt_then_a_pipeline_prints_a_table(workdir):
    child = start(workdir)
    out = run(child, "Get-BackupJob | Where-Object Enabled -eq true")
    assert re.search(r"Name\s+Type\s+Repository\s+Enabled", out)
    assert re.search(r"Daily SQL\s+BackupJob\s+Main\s+True", out)
    assert "Weekly Files" in out and "Laptops" not in out
    out = run(child, "Get-BackupJob | Format-Table Name,Enabled")
    assert re.search(r"Name\s+Enabled\r\n-+\s+-+\r\nDaily SQL\s+True\r\n", out)
    assert leave(child) == 0


def test_get_help_and_get_command_work_inside(workdir):
    child = start(workdir)
    out = run(child, "Get-Help Where-Object -Examples")
    assert "Get-BackupJob | Where-Object Enabled -eq true" in out
    out = run(child, "Get-Command -Noun Object")
    for name in ("Where-Object", "Select-Object", "Sort-Object"):
        assert name in out
    assert leave(child) == 0


def test_tab_completes_cmdlet_parameter_value_and_a_quoted_job_name(workdir):
    child = start(workdir)
    child.send("get-backupj\t")
    child.expect_exact("Get-BackupJob")
    child.send(" -outputf\t")
    child.expect_exact("OutputFormat")
    child.send(" j\t")
    child.expect_exact("Json")
    child.send(" -name da\t")
    child.expect_exact("'Daily SQL'")
    out = run(child, "")
    assert [o["Name"] for o in json_lines(out)] == ["Daily SQL"]
    assert leave(child) == 0


def test_tab_offers_every_enumerated_value_and_property_names(workdir):
    child = start(workdir)
    child.send("Get-BackupJob -OutputFormat \t")
    for value in ("Table", "List", "Json"):
        child.expect_exact(value)
    child.sendcontrol("c")
    next_prompt(child)
    child.send("Get-BackupJob | Sort-Object hel\t")
    child.expect_exact("HeldBy")
    child.sendcontrol("c")
    next_prompt(child)
    assert leave(child) == 0


def test_an_error_prints_one_line_and_the_prompt_comes_back(workdir):
    child = start(workdir)
    out = run(child, "Get-BakupJob")
    assert "bcs: the term 'Get-BakupJob' is not recognized" in out
    assert "did you mean Get-BackupJob" in out
    out = run(child, "Get-BackupJob -Name Nope")
    assert "Get-BackupJob: no backup job named 'Nope'" in out
    out = run(child, "Get-BackupJob -Name 'Daily SQL")
    assert "missing closing '" in out
    out = run(child, "Get-BackupJob -Name Laptops")
    assert "Laptops" in out and "AgentPolicy" in out
    assert leave(child) == 0


def test_history_survives_a_restart_is_private_and_searchable(workdir):
    child = start(workdir)
    run(child, "Get-Command -Noun BackupJob")
    run(child, "Get-Repository")
    assert leave(child) == 0
    history = workdir / ".bcs" / "history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert "Get-Command -Noun BackupJob" in history.read_text()

    child = start(workdir)
    child.send("\x1b[A")  # Up: the last line, Get-Repository
    child.expect_exact("Get-Repository")
    out = run(child, "")
    assert "Offsite" in out
    child.sendcontrol("r")
    child.send("noun")
    child.expect_exact("Get-Command -")
    child.send("\r")
    assert "Enable-BackupJob" in next_prompt(child)
    assert leave(child) == 0


def test_ctrl_c_at_the_prompt_drops_the_line_and_ctrl_d_leaves_with_0(workdir):
    child = start(workdir)
    child.send("Get-BackupJob -Name Nope")
    child.sendcontrol("c")
    next_prompt(child)
    out = run(child, "Get-Repository -Name Main")
    assert "Main" in out and "Nope" not in out
    assert leave(child) == 0


def test_exit_leaves_with_0_or_the_status_given(workdir):
    child = start(workdir)
    run(child, "Get-BackupJob -Name Nope")  # a failed command does not change the status
    child.send("exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    child = start(workdir)
    child.send("exit 3\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3


def test_ctrl_c_interrupts_a_running_pipeline(workdir):
    # Enough jobs that their JSON fills the terminal's buffer: the command is still writing
    # (blocked until the test reads) when Ctrl-C arrives.
    lines = ["version: 1", "repositories:", "  - {name: Main, path: ./repo}", "jobs:"]
    for i in range(3000):
        lines.append(f"  - {{name: Job {i:05d}, type: backup-job, repository: Main, source: ./s}}")
    (workdir / "many.yaml").write_text("\n".join(lines) + "\n")
    child = start(workdir)
    child.send("Get-BackupJob -Inventory many.yaml -OutputFormat Json\r")
    child.expect_exact('"Name":"Job 00000"')
    child.sendintr()
    child.expect_exact("Get-BackupJob: interrupted")
    child.expect_exact(PROMPT)  # no line was being edited: the next prompt is the first
    out = run(child, "Get-Repository -Name Main -OutputFormat Json")
    assert [o["Name"] for o in json_lines(out)] == ["Main"]
    assert leave(child) == 0


PIPELINE = "Get-BackupJob | Where-Object Enabled -eq true | Select-Object -Property Name"


def test_same_objects_in_the_shell_with_command_and_through_processes(workdir, bcs, shell):
    expected = [
        {"TypeName": "Selected.BackupCopy.BackupJob", "Name": "Daily SQL"},
        {"TypeName": "Selected.BackupCopy.BackupJob", "Name": "Weekly Files"},
    ]
    processes = shell(PIPELINE)
    assert processes.returncode == 0, processes.stderr
    assert [json.loads(line) for line in processes.stdout.splitlines()] == expected

    command = shell(f"bcs -Command '{PIPELINE}'")
    assert command.returncode == 0, command.stderr
    assert [json.loads(line) for line in command.stdout.splitlines()] == expected
    assert bcs("-Command", PIPELINE).objects == expected

    child = start(workdir)
    assert json_lines(run(child, PIPELINE + " -OutputFormat Json")) == expected
    assert leave(child) == 0


# --- the completion engine, in process --------------------------------------------------------


@pytest.fixture
def completions(workdir):
    env = Environment(io.BytesIO(), io.StringIO(), io.StringIO(), clean_environ(), cwd=workdir)
    registry = load_registry(env)

    def texts(line: str, *, posix: bool = False) -> list[str]:
        found = complete(line, registry, env, posix=posix)
        return [line[: c.start] + c.text for c in found]

    texts.env = env
    texts.registry = registry
    return texts


def test_cmdlet_names_complete_ignoring_case(completions):
    assert completions("get-backupj") == ["Get-BackupJob"]
    assert "Where-Object" in completions("")
    assert completions("Get-BackupJob | sel") == ["Get-BackupJob | Select-Object"]
    assert completions("Nothing-Like") == []


def test_parameter_names_complete_after_a_dash(completions):
    found = completions("Get-BackupJob -")
    assert "Get-BackupJob -Name" in found and "Get-BackupJob -OutputFormat" in found
    assert completions("get-backupjob -outp") == ["get-backupjob -OutputFormat"]
    assert completions("Where-Object Size -") != []
    assert completions("Where-Object Size -not") == [
        "Where-Object Size -NotLike",
        "Where-Object Size -NotMatch",
        "Where-Object Size -NotIn",
        "Where-Object Size -NotContains",
        "Where-Object Size -Not",
    ]


def test_enumerated_values(completions):
    assert completions("Get-BackupJob -OutputFormat ") == [
        "Get-BackupJob -OutputFormat Table",
        "Get-BackupJob -OutputFormat List",
        "Get-BackupJob -OutputFormat Json",
    ]
    assert completions("Get-BackupJob -ErrorAction s") == [
        "Get-BackupJob -ErrorAction Stop",
        "Get-BackupJob -ErrorAction SilentlyContinue",
    ]


def test_job_and_repository_names_quoted_when_needed(completions):
    assert completions("Get-BackupJob -Name da") == ["Get-BackupJob -Name 'Daily SQL'"]
    assert completions("Get-BackupJob w") == ["Get-BackupJob 'Weekly Files'"]
    assert completions("Get-BackupJob -Name 'Da") == ["Get-BackupJob -Name 'Daily SQL'"]
    assert completions('Get-BackupJob -Name "we') == ['Get-BackupJob -Name "Weekly Files"']
    assert completions("Get-BackupJob -Name Laptops,'Daily SQL',we") == [
        "Get-BackupJob -Name Laptops,'Daily SQL','Weekly Files'"
    ]
    assert completions("Get-Repository -Name ") == [
        "Get-Repository -Name Main",
        "Get-Repository -Name Offsite",
        "Get-Repository -Name SOBR-1",
    ]
    assert completions("Get-BackupJob -Name da", posix=True) == ["Get-BackupJob -Name 'Daily SQL'"]


def test_names_come_from_the_inventory_given_on_the_line(completions, workdir):
    other = workdir / "other"
    other.mkdir()
    (other / "inv.yaml").write_text(
        "version: 1\nrepositories:\n  - {name: Far, path: ./r}\n"
        "jobs:\n  - {name: Elsewhere, type: backup-job, repository: Far, source: ./s}\n"
    )
    assert completions("Get-BackupJob -Inventory other/inv.yaml -Name ") == [
        "Get-BackupJob -Inventory other/inv.yaml -Name Elsewhere"
    ]
    assert completions("Get-BackupJob -Inventory missing.yaml -Name ") == []


def test_cmdlet_and_property_names(completions):
    assert completions("Get-Help get-backupj") == ["Get-Help Get-BackupJob"]
    assert completions("Get-BackupJob | Where-Object ena") == [
        "Get-BackupJob | Where-Object Enabled"
    ]
    assert completions("Get-BackupJob | Select-Object -Property Name,rep") == [
        "Get-BackupJob | Select-Object -Property Name,Repository"
    ]
    assert completions("Where-Object ena") == []  # nothing upstream to know the type from
    assert completions("Get-Repository | Where-Object Kind -eq Folder | Sort-Object fr") == [
        "Get-Repository | Where-Object Kind -eq Folder | Sort-Object FreeBytes"
    ]
    assert completions("Get-BackupJob --output-format=Json -Name:x --name w") == [
        "Get-BackupJob --output-format=Json -Name:x --name 'Weekly Files'"
    ]


def test_nothing_to_offer(completions):
    assert completions("Get-BackupJob -Nothing ") == []
    assert completions("Where-Object Name -eq ") == []
    assert completions("Get-BackupJob -Name Daily -Verbose x y z ") == []


def test_the_shell_completer_replaces_the_word_being_typed(completions):
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from cmdlets.host.interactive import ShellCompleter

    completer = ShellCompleter(completions.env, completions.registry)
    event = CompleteEvent(completion_requested=True)
    found = list(completer.get_completions(Document("Get-BackupJob -Name da"), event))
    assert [(c.text, c.start_position, c.display_meta_text) for c in found] == [
        ("'Daily SQL'", -2, "job")
    ]


def test_name_sources_are_pluggable_by_kind():
    from cmdlets.host.completion import NAME_SOURCES

    assert {"job", "repository", "cmdlet", "property"} <= set(NAME_SOURCES)


def test_quotes_inside_single_quotes_double_as_in_powershell():
    assert split_pipeline("Get-BackupJob -Name 'it''s' | X ''") == [
        ["Get-BackupJob", "-Name", ["it's"]],
        ["X", [""]],
    ]


# --- bash and zsh ----------------------------------------------------------------------------


def test_completion_scripts_and_the_callback(workdir, shell):
    script = shell("bcs --completion bash")
    assert script.returncode == 0
    assert "complete -o default -F _bcs_complete bcs " in script.stdout
    assert " Where-Object" in script.stdout and " Get-BackupJob" in script.stdout
    assert "compdef _bcs_complete bcs " in shell("bcs --completion zsh").stdout
    assert shell("bcs --completion fish").returncode == 2
    called = shell("bcs --complete Da 'Get-BackupJob -Name Da'")
    assert called.stdout == "'Daily SQL'\n"
    called = shell("bcs --complete get-backupj 'bcs get-backupj'")
    assert called.stdout.splitlines() == ["Get-BackupJob"]


def test_callback_when_the_shell_breaks_words_differently(completions):
    env, registry = completions.env, completions.registry
    assert complete_words("'Da", "Get-BackupJob -Name 'Da", registry, env) == ["'Daily SQL'"]
    assert complete_words("Da", "Get-BackupJob -Name 'Da", registry, env) == ["Daily SQL'"]
    assert complete_words("", "/x/bin/Get-BackupJob -Name ", registry, env) == [
        "'Daily SQL'",
        "'Weekly Files'",
        "Laptops",
    ]
    assert complete_words("x", "bcs -Command 'Get-BackupJob | x", registry, env) == []


def interactive_unix_shell(argv: list[str], workdir: Path, setup: str) -> pexpect.spawn:
    env = terminal_environ({"PS1": "READY$ ", "PROMPT": "READY$ ", "ZDOTDIR": str(workdir)})
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        cwd=str(workdir),
        env=env,
        encoding="utf-8",
        timeout=TIMEOUT,
        dimensions=(50, 200),
    )
    child.sendline(setup)
    child.sendline("echo SET''UP")
    child.expect_exact("SETUP")
    child.expect_exact("READY")
    return child


def check_unix_shell_completion(child: pexpect.spawn) -> None:
    # Each completed line is run: the JSON it prints shows what the completion wrote.
    child.send("Get-BackupJob -OutputFormat Json -Name Da\t")
    child.expect_exact("'Daily SQL'")
    child.send("\r")
    child.expect_exact('"Name":"Daily SQL"')
    child.expect_exact("READY")
    child.send("bcs get-backupj\t -OutputFormat Json -Name 'We\t\r")
    child.expect_exact('"Name":"Weekly Files"')
    child.expect_exact("READY")
    child.send("Get-BackupJob -outputf\t Json -na\t Laptops\r")
    child.expect_exact('"Name":"Laptops"')
    child.expect_exact("READY")
    child.sendline("exit")
    child.expect(pexpect.EOF)


def test_bash_completion(workdir):
    child = interactive_unix_shell(
        ["bash", "--norc", "--noprofile", "-i"], workdir, 'eval "$(bcs --completion bash)"'
    )
    check_unix_shell_completion(child)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion(workdir):
    (workdir / ".zshrc").write_text("autoload -Uz compinit && compinit -u\n")
    child = interactive_unix_shell(
        ["zsh", "-i"], workdir, "PS1='READY$ '; eval \"$(bcs --completion zsh)\""
    )
    check_unix_shell_completion(child)


def test_ctrl_c_during_a_copy_leaves_the_session_in_action_required(workdir, bcs):
    """A long synchronous copy shows its progress bar; Ctrl-C stops it at a safe point, the
    session waits in ActionRequired with the job held, and the prompt comes back."""
    (workdir / "repo/main").mkdir(parents=True)
    with open(workdir / "data/sql/big.bin", "wb") as f:
        for _ in range(400):
            f.write(os.urandom(1 << 20))
    assert bcs("Start-BackupJob", "Daily SQL").status == 0
    child = start(workdir)
    # A slow target would make this deterministic; a large file and the progress bar as the
    # signal that copying has begun do the same without faking anything.
    child.send("Start-BackupCopy 'Daily SQL' -Path copies\r")
    child.expect(r"ETA")
    child.sendcontrol("c")
    child.expect_exact(PROMPT)  # the line was accepted before the copy began
    printed = ANSI.sub("", child.before)
    assert "Traceback" not in printed
    assert "ActionRequired" in printed or "needs action" in printed
    (session,) = bcs("Get-CopySession").objects
    if session["State"] == "Stopped":
        pytest.skip("the copy finished before Ctrl-C arrived")
    assert session["State"] == "ActionRequired"
    assert session["Reason"] == "stopped by request"
    (job,) = bcs("Get-BackupJob", "Daily SQL").objects
    assert job["HeldBy"] == [session["Id"]]
    assert leave(child) == 0
