"""PowerShell parameter binding, through real cmdlets run in process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any

import pytest

from cmdlets.host.binder import bind_arguments
from cmdlets.host.errors import UsageError
from cmdlets.host.registry import Param, cmdlet


def test_prefix_and_case_insensitive_names(bcs):
    full = bcs("Get-BackupJob", "-Name", "Daily SQL")
    short = bcs("get-backupjob", "-na", "daily sql")
    assert full.status == short.status == 0
    assert [o["Name"] for o in full.objects] == ["Daily SQL"]
    assert short.objects == full.objects


def test_colon_form_and_gnu_form(bcs):
    assert bcs("Get-BackupJob", "-Name:Laptops").objects[0]["Name"] == "Laptops"
    assert bcs("Get-BackupJob", "--name", "Laptops").objects[0]["Name"] == "Laptops"
    assert bcs("Get-BackupJob", "--name=Laptops").objects[0]["Name"] == "Laptops"
    assert bcs("Get-BackupJob", "--output-format", "json", "Laptops").status == 0


def test_positional_parameter(bcs):
    result = bcs("Get-BackupJob", "Weekly Files")
    assert [o["Name"] for o in result.objects] == ["Weekly Files"]


def test_comma_separated_and_repeated_values(bcs):
    listed = bcs("Get-BackupJob", "-Name", "Daily SQL,Laptops")
    repeated = bcs("Get-BackupJob", "-Name", "Daily SQL", "-Name", "Laptops")
    assert [o["Name"] for o in listed.objects] == ["Daily SQL", "Laptops"]
    assert repeated.objects == listed.objects


def test_switch_with_explicit_false(bcs):
    quiet = bcs("Disable-BackupJob", "-Name", "Daily SQL", "-PassThru:$false")
    loud = bcs("Enable-BackupJob", "-Name", "Daily SQL", "-PassThru:true")
    assert quiet.status == 0 and quiet.objects == []
    assert loud.objects[0]["Enabled"] is True
    bad = bcs("Enable-BackupJob", "-Name", "Daily SQL", "-PassThru:maybe")
    assert bad.status == 2 and "switch" in bad.stderr


def test_ambiguous_prefix_lists_candidates(bcs):
    result = bcs("Get-Command", "-N", "x")
    assert result.status == 2
    assert "ambiguous" in result.stderr
    assert "-Name" in result.stderr and "-Noun" in result.stderr


def test_unknown_parameter_suggests_closest(bcs):
    result = bcs("Get-BackupJob", "-Nmae", "x")
    assert result.status == 2
    assert "Nmae" in result.stderr and "did you mean -Name" in result.stderr


def test_unknown_cmdlet_suggests_closest(bcs):
    result = bcs("Get-BakupJob")
    assert result.status == 2
    assert "Get-BackupJob" in result.stderr
    assert result.stderr.startswith("bcs: ")


def test_enumerated_values_are_case_insensitive(bcs):
    result = bcs("Get-BackupJob", "-OutputFormat", "list", "-Name", "Laptops")
    assert result.status == 0 and "Name" in result.stdout and "Laptops" in result.stdout
    bad = bcs("Get-BackupJob", "-OutputFormat", "Tabel")
    assert bad.status == 2
    assert "Table, List, Json" in bad.stderr and "Did you mean 'Table'" in bad.stderr


def test_missing_argument_and_extra_positional(bcs):
    assert bcs("Get-BackupJob", "-Name").status == 2
    result = bcs("Get-Help", "Get-BackupJob", "extra")
    assert result.status == 2 and "positional" in result.stderr


def test_missing_mandatory_parameter(bcs):
    result = bcs("Disable-BackupJob")
    assert result.status == 2
    assert "-Name" in result.stderr


def test_error_line_format_and_json_errors(bcs):
    plain = bcs("Get-BackupJob", "-Name", "Nope")
    assert plain.status == 1
    assert plain.stderr.startswith("Get-BackupJob: no backup job named 'Nope'")
    as_json = bcs("Get-BackupJob", "-Name", "Nope", environ={"BCS_ERROR_FORMAT": "json"})
    import json

    record = json.loads(as_json.stderr.splitlines()[0])
    assert record["ErrorId"] == "ObjectNotFound"
    assert record["Category"] == "ObjectNotFound"
    assert record["TargetObject"] == "Nope"
    assert "Nope" in record["Message"]


def test_error_action(bcs):
    both = bcs("Get-BackupJob", "-Name", "Nope,Laptops")
    assert both.status == 1 and [o["Name"] for o in both.objects] == ["Laptops"]
    stop = bcs("Get-BackupJob", "-Name", "Nope,Laptops", "-ErrorAction", "Stop")
    assert stop.status == 1 and stop.objects == []
    silent = bcs("Get-BackupJob", "-Name", "Nope,Laptops", "-ErrorAction", "silentlycontinue")
    assert silent.status == 0 and silent.stderr == "" and len(silent.objects) == 1


def test_what_if_changes_nothing(bcs):
    result = bcs("Disable-BackupJob", "-Name", "Daily SQL", "-WhatIf")
    assert result.status == 0
    assert 'What if: Performing the operation "Disable backup job" on target "Daily SQL".' in (
        result.stderr
    )
    assert bcs("Get-BackupJob", "Daily SQL").objects[0]["Enabled"] is True


def test_help_flags(bcs):
    result = bcs("Get-BackupJob", "-?")
    assert result.status == 0 and "SYNTAX" in result.stdout and "EXIT STATUS" in result.stdout


# A cmdlet made for the binder alone: every parameter type the host supports.
@cmdlet("Test-Binding")
def _binding(
    ctx: Any,
    name: Annotated[list[str] | None, Param(position=0)] = None,
    count: Annotated[int, Param(position=1)] = 0,
    ratio: float = 1.0,
    timeout: timedelta | None = None,
    action: Annotated[str | None, Param(values=("Retry", "SkipFailed", "Undo"))] = None,
    force: bool = False,
) -> Iterator[Any]:
    yield None


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        (["a,b", "3"], {"name": ["a", "b"], "count": 3}),
        (["-Count", "-5"], {"count": -5}),
        (["-Ratio:0.5", "-F"], {"ratio": 0.5, "force": True}),
        (["-Time", "24h"], {"timeout": timedelta(hours=24)}),
        (["-Time", "01:30"], {"timeout": timedelta(minutes=1, seconds=30)}),
        (["-Act", "skipfailed"], {"action": "SkipFailed"}),
        ([["x y", "z"]], {"name": ["x y", "z"]}),
    ],
)
def test_types_and_positions(tokens, expected):
    bound = bind_arguments(_binding, tokens)
    assert {k: v for k, v in bound.items() if k in expected} == expected


@pytest.mark.parametrize(
    "tokens",
    [["-Count", "many"], ["-Time", "soon"], ["-Action", "Redo"], ["-Ratio"], ["1", "2", "3"]],
)
def test_bad_values_are_usage_errors(tokens):
    with pytest.raises(UsageError):
        bind_arguments(_binding, tokens)
