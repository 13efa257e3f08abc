"""Property-based tests: random input never produces a traceback, only a result or a clean error."""

from __future__ import annotations

import io
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmdlets.backupjob import disable_backup_job, get_backup_job
from cmdlets.discovery import get_command
from cmdlets.host.binder import bind_arguments, bind_object
from cmdlets.host.commandline import split_pipeline
from cmdlets.host.errors import BcsError
from cmdlets.host.pipeline import read_objects

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

parameter_like = st.sampled_from(
    [
        "-Name",
        "-name:",
        "-N",
        "-Na",
        "--name",
        "-OutputFormat",
        "-Output",
        "-O",
        "-Verb",
        "-Noun",
        "-ErrorAction",
        "-WhatIf",
        "-WhatIf:$false",
        "-PassThru:",
        "-Confirm",
        "-",
        "--",
        "-?",
        "-5",
        "-Name:a,b",
        "--name=x",
        "-Debug:maybe",
        ",",
        "a,,b",
        "'",
        "Json",
        "list",
        "$true",
    ]
)
tokens = st.lists(st.one_of(parameter_like, st.text(max_size=12)), max_size=8)


@SETTINGS
@given(tokens)
def test_parameter_parser_never_crashes(words):
    for item in (get_backup_job, disable_backup_job, get_command):
        try:
            bound = bind_arguments(item, words)
        except BcsError as exc:
            assert exc.exit_status == 2
            assert exc.message
        else:
            assert isinstance(bound, dict)
            names = {p.python_name for p in item.parameters}
            assert set(bound) <= names


@SETTINGS
@given(st.text(max_size=80))
def test_pipeline_text_parser_never_crashes(text):
    try:
        stages = split_pipeline(text)
    except BcsError as exc:
        assert exc.exit_status == 2
    else:
        assert all(stage for stage in stages)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["Name", "TypeName", "JobName", "x"]), children, max_size=3
        )
    ),
    max_leaves=10,
)


@SETTINGS
@given(
    st.lists(
        st.one_of(st.binary(max_size=40), json_values.map(lambda v: json.dumps(v).encode())),
        max_size=6,
    )
)
def test_json_lines_reader_never_crashes(lines):
    stream = io.BytesIO(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    seen = 0
    try:
        for number, obj in read_objects(stream):
            assert number >= seen  # the elements of an array line share its number
            seen = number
            assert isinstance(obj, (dict, str))
            try:
                bound = bind_object(disable_backup_job, obj, number)
            except BcsError as exc:
                assert exc.exit_status == 2
                assert f"line {number}" in exc.message
            else:
                assert set(bound) == {"name"}
    except BcsError as exc:
        assert exc.exit_status == 2
        assert "line" in exc.message
