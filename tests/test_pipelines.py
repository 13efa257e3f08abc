"""Objects travelling between real processes as JSON Lines, and between cmdlets in process."""

from __future__ import annotations

import json

import pytest


def jobs_by_name(objects):
    return {o["Name"]: o for o in objects}


def test_get_then_disable_then_enable_through_shell_pipes(shell):
    done = shell("Get-BackupJob | Disable-BackupJob -PassThru")
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert {o["Name"] for o in out} == {"Daily SQL", "Weekly Files", "Laptops"}
    assert all(o["TypeName"] == "BackupCopy.BackupJob" and o["Enabled"] is False for o in out)
    after = shell("Get-BackupJob")
    assert all(not o["Enabled"] for o in map(json.loads, after.stdout.splitlines()))

    back = shell("bcs Get-BackupJob -Name 'Daily SQL,Laptops' | bcs Enable-BackupJob")
    assert back.returncode == 0 and back.stdout == ""
    state = jobs_by_name(map(json.loads, shell("Get-BackupJob").stdout.splitlines()))
    assert state["Daily SQL"]["Enabled"] and state["Laptops"]["Enabled"]
    assert not state["Weekly Files"]["Enabled"]


def test_objects_stream_one_per_line_and_flush(shell):
    result = shell("Get-BackupJob | head -n 1")
    assert result.returncode == 0
    assert json.loads(result.stdout)["TypeName"] == "BackupCopy.BackupJob"
    assert result.stderr == ""


def test_objects_without_typename_bind_by_property_name(bcs):
    result = bcs(
        "Disable-BackupJob", "-PassThru", input=[{"Name": "Laptops"}, {"JobName": "Daily SQL"}]
    )
    assert result.status == 0, result.stderr
    assert [o["Name"] for o in result.objects] == ["Laptops", "Daily SQL"]


def test_typed_objects_bind_by_value(bcs):
    backup = {"TypeName": "BackupCopy.Backup", "Name": "not-a-job", "Job": "Weekly Files"}
    result = bcs("Disable-BackupJob", "-PassThru", input=[backup, "Daily SQL"])
    assert result.status == 0, result.stderr
    assert [o["Name"] for o in result.objects] == ["Weekly Files", "Daily SQL"]


def test_unbindable_object_is_an_error_naming_the_line(bcs):
    result = bcs("Disable-BackupJob", "-PassThru", input=[{"Name": "Laptops"}, {"Colour": "blue"}])
    assert result.status == 2
    assert "line 2" in result.stderr
    assert [o["Name"] for o in result.objects] == ["Laptops"]


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b'{"Name": "Laptops"}\n{"Name": \n', 2),
        (b'{"Name": "Laptops"}\n\n[1, 2]\n', 3),
        (b"\xff\xfe\n", 1),
        (b'{"Name": "Laptops"}\n{"Name": "Daily SQL"}\nnot json\n', 3),
    ],
)
def test_malformed_line_fails_with_its_number(bcs, data, line):
    result = bcs("Disable-BackupJob", "-PassThru", input=data)
    assert result.status == 2
    assert f"line {line}" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_input_between_processes_exits_2(shell):
    result = shell("printf '%s\\n' '{\"Name\":\"Laptops\"}' '{oops' | Disable-BackupJob -PassThru")
    assert result.returncode == 2
    assert "Disable-BackupJob: pipeline input line 2" in result.stderr
    # The first object was processed before the bad line arrived: objects stream.
    assert json.loads(result.stdout.splitlines()[0])["Name"] == "Laptops"


def test_no_stdin_means_no_pipeline(shell):
    # Run from cron or CI with stdin at /dev/null: the cmdlet still does its work.
    result = shell("Get-BackupJob < /dev/null")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3


def test_exit_codes_between_processes(shell):
    assert shell("Get-BackupJob -Name Nope").returncode == 1
    assert shell("Get-BackupJob -Bogus").returncode == 2
    assert shell("bcs No-Such").returncode == 2
    result = shell("Enable-BackupJob 'Daily SQL' -Inventory missing.yaml")
    assert result.returncode == 2 and "missing.yaml" in result.stderr


def test_command_runs_a_pipeline_in_process(shell):
    result = shell(
        "bcs -Command \"Get-BackupJob -Name 'Daily SQL',Laptops | Disable-BackupJob -PassThru\""
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["Name"] for line in result.stdout.splitlines()] == [
        "Daily SQL",
        "Laptops",
    ]


def test_table_on_request_uses_schema_display_properties(bcs):
    result = bcs("Get-BackupJob", "-OutputFormat", "Table")
    header = result.stdout.splitlines()[0].split()
    assert header == ["Name", "Type", "Repository", "Enabled", "HeldBy", "LastResult"]
