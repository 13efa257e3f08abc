"""Every object a cmdlet writes matches the schema of its TypeName in schemas/."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from trees import edit

from cmdlets.builtin import CMDLETS
from cmdlets.host.schemas import load_schema, schema_dir

SCHEMAS = sorted(p.name.removesuffix(".schema.json") for p in schema_dir().glob("*.schema.json"))


@pytest.mark.parametrize("name", SCHEMAS)
def test_schemas_are_valid_draft_2020_12(name):
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    if name != "inventory":
        assert schema["properties"]["TypeName"] == {"const": name}
        assert set(schema["x-defaultDisplayProperties"]) <= set(schema["properties"])


def test_every_output_type_has_a_schema():
    for item in CMDLETS:
        if item.output_type:
            assert item.output_type in SCHEMAS, item.name


def test_schemas_ship_inside_the_package():
    # The wheel maps schemas/ to cmdlets/schemas; a source checkout reads schemas/ directly.
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"schemas" = "cmdlets/schemas"' in pyproject
    assert (schema_dir() / "inventory.schema.json").is_file()


def test_every_object_written_matches_its_schema(workdir, bcs):
    for sub in ("repo/main", "repo/offsite", "sobr/a", "sobr/b"):
        (workdir / sub).mkdir(parents=True)
    edit(workdir / "data/sql/a.bin", b"a" * 5000)
    edit(workdir / "data/files/b.bin", b"b" * 7000)
    runs = [
        ["Start-BackupJob", "Daily SQL,Weekly Files"],
        ["Start-BackupJob", "Daily SQL"],
        ["Start-BackupCopy", "Daily SQL", "-Repository", "Offsite"],
        ["Test-Inventory"],
        ["Get-Repository"],
        ["Get-BackupJob"],
        ["Get-Backup"],
        ["Get-RestorePoint", "Daily SQL"],
        ["Test-Backup", "Weekly Files"],
        ["Get-CopySession"],
        ["Get-Command"],
        ["Get-Plugin"],
    ]
    seen: set[str] = set()
    for argv in runs:
        result = bcs(*argv)
        assert result.status == 0, (argv, result.stderr)
        for obj in result.objects:
            jsonschema.validate(obj, load_schema(obj["TypeName"]))
            seen.add(obj["TypeName"])
    session = bcs("Get-CopySession").objects[0]["Id"]
    for entry in bcs("Get-CopySession", "-Id", session, "-Log").objects:
        jsonschema.validate(entry, load_schema("BackupCopy.SessionLogEntry"))
    error = bcs("Get-BackupJob", "Nope", environ={"BCS_ERROR_FORMAT": "json"}).stderr
    jsonschema.validate(json.loads(error), load_schema("BackupCopy.ErrorRecord"))
    assert {
        "BackupCopy.Repository",
        "BackupCopy.BackupJob",
        "BackupCopy.Backup",
        "BackupCopy.RestorePoint",
        "BackupCopy.BackupTest",
        "BackupCopy.CopySession",
        "BackupCopy.Command",
        "BackupCopy.Plugin",
        "BackupCopy.InventoryTest",
    } <= seen
