"""The object utilities: Where-Object, Select-Object, Sort-Object, Format-Table, Format-List,
ConvertTo-Json and ConvertFrom-Json, in process and between processes."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmdlets import objects
from cmdlets.host.context import Context, Environment, Options
from cmdlets.host.formatting import format_objects
from cmdlets.host.invoke import invoke
from cmdlets.host.registry import Cmdlet, Registry

JOBS = [
    {
        "TypeName": "Test.Job",
        "Name": "Daily SQL",
        "Size": 10,
        "Enabled": True,
        "HeldBy": ["abcd-1"],
        "Kind": "Folder",
        "Free": "9",
        "Target": {"Kind": "Repository", "Name": "Offsite"},
    },
    {
        "TypeName": "Test.Job",
        "Name": "Weekly Files",
        "Size": 9,
        "Enabled": False,
        "HeldBy": [],
        "Kind": "ScaleOut",
    },
    {
        "TypeName": "Test.Job",
        "Name": "laptops",
        "Size": 100,
        "Enabled": True,
        "HeldBy": ["abcd-2", "ef01"],
        "Target": {"Kind": "Path", "Name": "/mnt/x"},
    },
]
DAILY, WEEKLY, LAPTOPS = "Daily SQL", "Weekly Files", "laptops"


def names(result):
    return [o["Name"] for o in result.objects]


# --- Where-Object ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["Name", "-eq", "daily sql"], [DAILY]),
        (["name", "-EQ", "LAPTOPS"], [LAPTOPS]),
        (["Name", "-ne", "DAILY SQL"], [WEEKLY, LAPTOPS]),
        (["Size", "-gt", "9"], [DAILY, LAPTOPS]),
        (["Size", "-ge", "10"], [DAILY, LAPTOPS]),
        (["Size", "-lt", "10"], [WEEKLY]),
        (["Size", "-le", "10"], [DAILY, WEEKLY]),
        (["Size", "-eq", "10.0"], [DAILY]),
        (["Name", "-gt", "M"], [WEEKLY]),
        (["Name", "-like", "*s"], [WEEKLY, LAPTOPS]),
        (["Name", "-like", "d?ILY*"], [DAILY]),
        (["Name", "-like", "[dw]*"], [DAILY, WEEKLY]),
        (["Name", "-notlike", "*S"], [DAILY]),
        (["Name", "-match", "^(daily|weekly)"], [DAILY, WEEKLY]),
        (["Name", "-match", "SQL$"], [DAILY]),
        (["Name", "-match", "o"], [LAPTOPS]),
        (["Name", "-notmatch", "o"], [DAILY, WEEKLY]),
        (["Kind", "-in", "folder,SCALEOUT"], [DAILY, WEEKLY]),
        (["Kind", "-notin", "folder"], [WEEKLY, LAPTOPS]),
        (["HeldBy", "-contains", "ABCD-1"], [DAILY]),
        (["HeldBy", "-notcontains", "abcd-1"], [WEEKLY, LAPTOPS]),
        (["HeldBy", "-like", "abcd*"], [DAILY, LAPTOPS]),
        (["HeldBy", "-eq", "ef01"], [LAPTOPS]),
        (["Enabled", "-eq", "true"], [DAILY, LAPTOPS]),
        (["Enabled", "-eq", "$TRUE"], [DAILY, LAPTOPS]),
        (["Enabled", "-eq", "$false"], [WEEKLY]),
        (["Enabled", "-ne", "false"], [DAILY, LAPTOPS]),
        (["Enabled"], [DAILY, LAPTOPS]),
        (["-Not", "Enabled"], [WEEKLY]),
        (["HeldBy"], [DAILY, LAPTOPS]),
        (["-Not", "HeldBy"], [WEEKLY]),
        (["Free", "-eq", "$null"], [WEEKLY, LAPTOPS]),
        (["Free", "-ne", "$null"], [DAILY]),
        (["Missing", "-ne", "x"], [DAILY, WEEKLY, LAPTOPS]),
        (["Missing", "-eq", "x"], []),
        (["Name", "laptops"], [LAPTOPS]),
        (["Target.Kind", "-eq", "path"], [LAPTOPS]),
        (["Target", "-like", "*Offsite*"], [DAILY]),
    ],
)
def test_where_object_operators(bcs, args, expected):
    result = bcs("Where-Object", *args, input=JOBS)
    assert result.status == 0, result.stderr
    assert names(result) == expected


def test_where_object_compares_numbers_numerically_and_text_as_text(bcs):
    # "9" > "10" as text, 9 < 10 as numbers: both sides read as numbers, so numerically.
    assert names(bcs("Where-Object", "Free", "-gt", "10", input=JOBS)) == []
    assert names(bcs("Where-Object", "Free", "-lt", "10", input=JOBS)) == [DAILY]
    words = [{"Name": "b10"}, {"Name": "b9"}]
    assert names(bcs("Where-Object", "Name", "-gt", "b5", input=words)) == ["b9"]
    sizes = [{"Name": "small", "FreeBytes": 1024**3}, {"Name": "big", "FreeBytes": 3 * 1024**3}]
    assert names(bcs("Where-Object", "FreeBytes", "-ge", "2GB", input=sizes)) == ["big"]


def test_where_object_keeps_the_objects_whole(bcs):
    result = bcs("Where-Object", "Name", "-eq", "laptops", input=JOBS)
    assert result.objects == [JOBS[2]]


def test_where_object_on_real_objects_through_a_pipeline(bcs):
    result = bcs("-Command", "Get-BackupJob | Where-Object Enabled -eq $false")
    assert result.status == 0, result.stderr
    assert names(result) == ["Laptops"]
    assert result.objects[0]["TypeName"] == "BackupCopy.BackupJob"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Name", "-eq", "a", "-ne", "b"], "give one operator"),
        (["Name", "-match", "(unclosed"], "not a valid regular expression"),
        (["-eq", "x"], "needs a property"),
        (["-Not", "Name", "-eq", "x"], "-Not takes a property alone"),
        (["Name", "x", "-eq", "y"], "the value is given twice"),
        (["Name", "-eq"], "missing an argument for parameter -Eq"),
    ],
)
def test_where_object_usage_errors(bcs, args, message):
    result = bcs("Where-Object", *args, input=JOBS)
    assert result.status == 2
    assert result.stderr.startswith("Where-Object: ")
    assert message in result.stderr
    assert result.objects == []


# --- streaming ---------------------------------------------------------------------------------


def _context(item: Cmdlet) -> Context:
    env = Environment(io.BytesIO(), io.StringIO(), io.StringIO(), {}, cwd=Path("."))
    return Context(env, Options(), item.name, Registry())


def _endless(pulled: list[int]) -> Iterator[tuple[int, Any]]:
    for number in itertools.count(1):
        pulled.append(number)
        yield number, {"N": number}


def test_where_object_writes_each_object_as_it_passes():
    pulled: list[int] = []
    item = objects.where_object
    out = invoke(item, _context(item), {"property": "N", "gt": "2"}, _endless(pulled))
    assert next(out) == {"N": 3}
    assert pulled == [1, 2, 3]


def test_select_object_first_stops_reading():
    pulled: list[int] = []
    item = objects.select_object
    out = list(invoke(item, _context(item), {"first": 3}, _endless(pulled)))
    assert out == [{"N": 1}, {"N": 2}, {"N": 3}]
    assert pulled == [1, 2, 3]


def test_endless_producer_stops_when_select_object_has_enough(shell):
    result = shell(
        'yes \'{"Name":"x","N":1}\' | Where-Object N -eq 1 | Select-Object -First 3',
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [{"Name": "x", "N": 1}] * 3
    assert result.stderr == ""


# --- Select-Object -----------------------------------------------------------------------------


def test_select_object_property_makes_selected_objects(bcs):
    result = bcs("Select-Object", "-Property", "name,Size,Nothing", input=JOBS[:1])
    assert result.objects == [
        {"TypeName": "Selected.Test.Job", "Name": "Daily SQL", "Size": 10, "Nothing": None}
    ]
    plain = bcs("Select-Object", "Name", input=[{"Name": "a", "Other": 1}])
    assert plain.objects == [{"Name": "a"}]


def test_select_object_property_wildcards(bcs):
    result = bcs("Select-Object", "*e*", input=JOBS[1:2])
    assert list(result.objects[0]) == ["TypeName", "Name", "Size", "Enabled", "HeldBy"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-First", "2"], [DAILY, WEEKLY]),
        (["-First", "0"], []),
        (["-Last", "2"], [WEEKLY, LAPTOPS]),
        (["-Skip", "1"], [WEEKLY, LAPTOPS]),
        (["-Skip", "1", "-First", "1"], [WEEKLY]),
        (["-Skip", "1", "-Last", "1"], [LAPTOPS]),
        (["-First", "10"], [DAILY, WEEKLY, LAPTOPS]),
    ],
)
def test_select_object_picks_by_position(bcs, args, expected):
    result = bcs("Select-Object", *args, input=JOBS)
    assert result.status == 0, result.stderr
    assert names(result) == expected


def test_select_object_expand_property(bcs):
    assert bcs("Select-Object", "-ExpandProperty", "name", input=JOBS).objects == [
        DAILY,
        WEEKLY,
        LAPTOPS,
    ]
    held = bcs("Select-Object", "-ExpandProperty", "HeldBy", input=JOBS)
    assert held.objects == ["abcd-1", "abcd-2", "ef01"]
    target = bcs("Select-Object", "-ExpandProperty", "Target", "-First", "1", input=JOBS)
    assert target.objects == [{"Kind": "Repository", "Name": "Offsite"}]


def test_select_object_expand_missing_property_is_an_error_per_object(bcs):
    result = bcs("Select-Object", "-ExpandProperty", "Free", input=JOBS)
    assert result.objects == ["9"]
    assert result.status == 1
    assert result.stderr.count("property 'Free' cannot be found") == 2


def test_select_object_unique(bcs):
    kinds = [{"Kind": "a"}, {"Kind": "b"}, {"Kind": "a"}, {"Kind": "A"}]
    assert bcs("Select-Object", "-Unique", input=kinds).objects == kinds[:2] + kinds[3:]
    repos = bcs("-Command", "Get-BackupJob | Select-Object Repository -Unique")
    assert [o["Repository"] for o in repos.objects] == ["Main", "SOBR-1"]


def test_select_object_takes_strings(bcs):
    assert bcs("Select-Object", "-Last", "1", input=["a", "b"]).objects == ["b"]


@pytest.mark.parametrize(
    "args",
    [["-First", "-1"], ["-First", "1", "-Last", "1"], ["Name", "-ExpandProperty", "Name"]],
)
def test_select_object_usage_errors(bcs, args):
    result = bcs("Select-Object", *args, input=JOBS)
    assert result.status == 2
    assert result.stderr.startswith("Select-Object: ")


# --- Sort-Object -------------------------------------------------------------------------------


def test_sort_object_numbers_numerically_text_ignoring_case(bcs):
    assert names(bcs("Sort-Object", "Size", input=JOBS)) == [WEEKLY, DAILY, LAPTOPS]
    assert names(bcs("Sort-Object", "Name", input=JOBS)) == [DAILY, LAPTOPS, WEEKLY]
    assert names(bcs("Sort-Object", "Name", "-Descending", input=JOBS)) == [WEEKLY, LAPTOPS, DAILY]


def test_sort_object_several_properties_and_missing_values_first(bcs):
    rows = [
        {"Name": "c", "Group": 2},
        {"Name": "b", "Group": 1},
        {"Name": "a", "Group": 2},
        {"Name": "z"},
    ]
    assert names(bcs("Sort-Object", "Group,Name", input=rows)) == ["z", "b", "a", "c"]


def test_sort_object_is_stable_and_unique_ignores_case(bcs):
    rows = [
        {"Name": "1", "Kind": "folder"},
        {"Name": "2", "Kind": "Share"},
        {"Name": "3", "Kind": "Folder"},
    ]
    assert names(bcs("Sort-Object", "Kind", input=rows)) == ["1", "3", "2"]
    assert names(bcs("Sort-Object", "Kind", "-Unique", input=rows)) == ["1", "2"]


def test_sort_object_without_property(bcs):
    assert bcs("Sort-Object", input=["b", "A", "c"]).objects == ["A", "b", "c"]
    jobs = bcs("-Command", "Get-BackupJob | Sort-Object -Descending")
    assert names(jobs) == ["Weekly Files", "Laptops", "Daily SQL"]


# --- Format-Table, Format-List -----------------------------------------------------------------


def test_format_table_writes_lines_of_text(bcs):
    result = bcs("-Command", "Get-BackupJob | Format-Table Name,enabled")
    assert result.status == 0, result.stderr
    # Text for a person or a file: written as it is, not as JSON strings.
    assert result.stdout.splitlines() == [
        "Name          Enabled",
        "------------  -------",
        "Daily SQL     True",
        "Weekly Files  True",
        "Laptops       False",
    ]


def test_format_table_default_columns_are_the_types_display_properties(bcs):
    lines = bcs("-Command", "Get-BackupJob | Format-Table").stdout.splitlines()
    assert lines[0].split() == ["Name", "Type", "Repository", "Enabled", "HeldBy", "LastResult"]


def test_format_table_through_processes_gives_lines(shell):
    result = shell("Get-BackupJob | Format-Table -Property Name | head -n 3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Name",
        "------------",
        "Daily SQL",
    ]


def test_format_list(bcs):
    lines = bcs("-Command", "Get-BackupJob -Name Laptops | Format-List").stdout.splitlines()
    assert "Name       : Laptops" in lines
    assert "Enabled    : False" in lines
    some = bcs("-Command", "Get-BackupJob | Format-List Name,Enabled").stdout.splitlines()
    assert some[:3] == ["Name    : Daily SQL", "Enabled : True", ""]
    assert len(some) == 8


def test_text_lines_show_one_per_line_on_a_terminal():
    assert format_objects(["a", "b", {"X": 1}, "c"], "Table") == "a\nb\n\nX\n-\n1\n\nc"


# --- ConvertTo-Json, ConvertFrom-Json ---------------------------------------------------------


def test_convert_to_json_one_object_several_and_compressed(bcs):
    one = bcs("ConvertTo-Json", input=JOBS[:1]).stdout
    assert json.loads(one) == JOBS[0]
    assert '\n  "Name": "Daily SQL"' in one
    several = bcs("ConvertTo-Json", "-Compress", input=JOBS).stdout
    assert several.count("\n") == 1 and json.loads(several) == JOBS
    array = bcs("ConvertTo-Json", "-AsArray", input=JOBS[:1]).stdout
    assert json.loads(array) == JOBS[:1]
    assert bcs("ConvertTo-Json", input=[]).stdout == ""


def test_json_round_trip_in_process_and_between_processes(bcs, shell):
    direct = bcs("Get-BackupJob").objects
    in_process = bcs("-Command", "Get-BackupJob | ConvertTo-Json | ConvertFrom-Json")
    assert in_process.status == 0, in_process.stderr
    assert in_process.objects == direct
    # Between processes the document is written as it is: a file holds plain JSON...
    to_file = shell("Get-BackupJob | ConvertTo-Json > jobs.json && cat jobs.json")
    assert to_file.returncode == 0, to_file.stderr
    assert json.loads(to_file.stdout) == direct
    # ...and a compressed array on one line is read back as its elements.
    piped = shell("Get-BackupJob | ConvertTo-Json -Compress | Select-Object -Property Name")
    assert piped.returncode == 0, piped.stderr
    assert [json.loads(line)["Name"] for line in piped.stdout.splitlines()] == [
        o["Name"] for o in direct
    ]


def test_convert_from_json_arguments_and_scalars(bcs):
    given = bcs("ConvertFrom-Json", "-InputObject", '{"a": 1, "b": [1, 2]}')
    assert given.objects == [{"a": 1, "b": [1, 2]}]
    assert bcs("ConvertFrom-Json", '"text"').objects == ["text"]
    assert bcs("ConvertFrom-Json", "[1, 2, 3]").objects == [1, 2, 3]
    quoted = bcs("-Command", """ConvertFrom-Json '{"Name": "it''s", "N": 2}'""")
    assert quoted.objects == [{"Name": "it's", "N": 2}]


def test_convert_from_json_malformed_text_is_an_error_and_reading_goes_on(bcs):
    result = bcs("ConvertFrom-Json", input=['{"a": 1}', "not json", '{"a": ', "[2]"])
    assert result.objects == [{"a": 1}, 2]
    assert result.status == 2
    errors = result.stderr.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("ConvertFrom-Json: the text is not valid JSON: Expecting value")
    assert "line 1, column 1" in errors[0]
    assert "line 1, column 7" in errors[1]


def test_convert_from_json_refuses_objects(bcs):
    result = bcs("ConvertFrom-Json", input=[{"Name": "x"}])
    assert result.status == 2
    assert "cannot be bound" in result.stderr


def test_malformed_pipeline_input_names_the_line(bcs):
    result = bcs("Where-Object", "Name", "-eq", "x", input=b'{"Name": "x"}\n{oops\n')
    assert result.status == 2
    assert result.objects == [{"Name": "x"}]
    assert "line 2" in result.stderr


def test_help_of_every_utility_has_examples(bcs):
    for name in (
        "Where-Object",
        "Select-Object",
        "Sort-Object",
        "Format-Table",
        "Format-List",
        "ConvertTo-Json",
        "ConvertFrom-Json",
    ):
        result = bcs("Get-Help", name, "-Examples")
        assert result.status == 0
        assert "EXAMPLES" in result.stdout
        assert f"| {name}" in result.stdout or f"    {name} " in result.stdout
