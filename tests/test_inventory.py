"""The inventory loader: the model, every malformed shape named with file:line and field path,
and the parse cache that keeps yaml and jsonschema out of a warm start."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from cmdlets.backup.inventory import CACHE_FILE, Extent, load_inventory
from cmdlets.host.errors import InventoryError
from cmdlets.host.schemas import load_schema

ROOT = Path(__file__).resolve().parents[1]
MARK = "# <-"  # marks the line a problem must point at

SPEC_EXAMPLE = """\
version: 1
server: backup01
repositories:
  - name: Main
    path: /srv/backups/main
  - name: SOBR-1                 # scale-out: a chain lives on one extent
    extents:
      - {name: Ext-A, path: /srv/sobr/a}
      - {name: Ext-B, path: /srv/sobr/b, maintenance: true}
  - name: NAS
    path: //nas01/backups        # shared folder: needs the bcs-smb plugin
    credential: nas
credentials:
  - name: nas
    username: backup
    passwordEnv: NAS_PASSWORD    # or passwordFile: (mode 0600); never a password inline
jobs:
  - name: Daily SQL
    type: backup-job             # backup-job | agent-policy
    repository: Main
    source: /data/sql
    enabled: true
  - name: Laptops
    type: agent-policy
    repository: sobr-1
    source: /agents/laptops
    enabled: false
"""

# Every malformed inventory starts from this one.
HEAD = """\
version: 1
repositories:
  - name: Main
    path: /srv/main
"""


def write(folder: Path, text: str) -> Path:
    path = folder / "inventory.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.problems
    return caught.value.problems


def test_spec_example_loads_into_the_model(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, SPEC_EXAMPLE))

    assert inventory.server == "backup01"
    assert [(r.name, r.kind) for r in inventory.repositories] == [
        ("Main", "Folder"),
        ("SOBR-1", "ScaleOut"),
        ("NAS", "Share"),
    ]
    main, sobr, nas = inventory.repositories
    assert main.path == "/srv/backups/main" and main.extents == () and main.credential is None
    assert sobr.path is None
    assert sobr.extents == (
        Extent("Ext-A", "/srv/sobr/a", maintenance=False),
        Extent("Ext-B", "/srv/sobr/b", maintenance=True),
    )
    assert (nas.path, nas.credential) == ("//nas01/backups", "nas")
    credential = inventory.credential("NAS")
    assert credential is not None
    assert (credential.username, credential.password_env) == ("backup", "NAS_PASSWORD")
    assert credential.password_file is None
    daily, laptops = inventory.jobs
    assert (daily.name, daily.type, daily.repository, daily.source, daily.enabled) == (
        "Daily SQL",
        "backup-job",
        "Main",
        "/data/sql",
        True,
    )
    # references are matched case-insensitively and stored with the defined spelling
    assert (laptops.type, laptops.repository, laptops.enabled) == ("agent-policy", "SOBR-1", False)


def test_lookups_are_case_insensitive(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, SPEC_EXAMPLE))
    assert inventory.job("daily sql") is inventory.jobs[0]
    assert inventory.repository("sobr-1") is inventory.repositories[1]
    assert inventory.repository("Nope") is None and inventory.job("Nope") is None


def test_relative_paths_are_resolved_against_the_inventory_folder(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    inventory = load_inventory(
        write(
            folder,
            """\
            version: 1
            repositories:
              - {name: Local, path: backups/main}
              - {name: Share, path: "smb://nas01:445/backups/bcs", credential: nas}
              - name: Scale
                extents: [{name: A, path: ../sobr/a}]
            credentials:
              - {name: nas, username: backup, passwordFile: nas.password}
            jobs:
              - {name: Docs, type: backup-job, repository: Local, source: ./data/docs}
            """,
        )
    )
    local, share, scale = inventory.repositories
    assert local.path == str(folder / "backups" / "main")
    assert (share.path, share.kind) == ("smb://nas01:445/backups/bcs", "Share")
    assert scale.extents[0].path == str(tmp_path / "sobr" / "a")
    assert inventory.credentials[0].password_file == str(folder / "nas.password")
    assert inventory.jobs[0].source == str(folder / "data" / "docs")
    assert inventory.jobs[0].enabled is True


MALFORMED = [
    pytest.param(
        HEAD.replace("path: /srv/main", "path: /srv: main  # <-"),
        "(top level)",
        "invalid YAML",
        id="yaml-syntax",
    ),
    pytest.param(
        "version: 1\nrepositories:\n\t- name: Main  # <-\n",
        "(top level)",
        "tabs",
        id="tab-indentation",
    ),
    pytest.param("", "(top level)", "empty", id="empty-file"),
    pytest.param("# only a comment\n", "(top level)", "empty", id="only-comments"),
    pytest.param("- version: 1\n", "(top level)", "expected a mapping", id="top-level-list"),
    pytest.param(
        HEAD.replace("version: 1", "version: 2  # <-"), "version", "version 2", id="wrong-version"
    ),
    pytest.param(
        HEAD.replace("version: 1\n", ""), "version", "'version' is missing", id="no-version"
    ),
    pytest.param(
        HEAD
        + """\
jobs:
  - name: Daily
    type: backup-job
    repository: Main
    source: /data
    enabled: "yes"  # <-
""",
        "jobs[0].enabled",
        "expected true or false",
        id="enabled-as-string",
    ),
    pytest.param(
        HEAD
        + """\
  - name: SOBR
    extents: {name: A, path: /a}  # <-
""",
        "repositories[1].extents",
        "expected a list",
        id="extents-not-a-list",
    ),
    pytest.param(
        HEAD
        + """\
jobs:
  - name: Daily  # <-
    type: backup-job
    source: /data
""",
        "jobs[0].repository",
        "'repository' is missing",
        id="job-without-repository",
    ),
    pytest.param(
        HEAD + "  - name: Empty  # <-\n",
        "repositories[1]",
        "exactly one of path",
        id="repository-without-path-or-extents",
    ),
    pytest.param(
        HEAD
        + """\
  - name: Both  # <-
    path: /srv/both
    extents: [{name: A, path: /a}]
""",
        "repositories[1]",
        "exactly one of path",
        id="repository-with-path-and-extents",
    ),
    pytest.param(
        HEAD + "repos: []  # <-\n", "repos", "did you mean 'repositories'", id="unknown-top-key"
    ),
    pytest.param(
        HEAD.replace("path: /srv/main", "pathh: /srv/main  # <-"),
        "repositories[0].pathh",
        "unknown key 'pathh'",
        id="unknown-nested-key",
    ),
    pytest.param(
        HEAD
        + """\
jobs:
  - name: Daily
    type: agent  # <-
    repository: Main
    source: /data
""",
        "jobs[0].type",
        "use one of: backup-job, agent-policy",
        id="bad-enum",
    ),
    pytest.param(
        HEAD
        + """\
jobs:
  - name: Daily
    type: backup-job
    repository: Mian  # <-
    source: /data
""",
        "jobs[0].repository",
        "'Mian' is not a defined repository (defined: Main)",
        id="job-to-unknown-repository",
    ),
    pytest.param(
        HEAD
        + """\
  - name: NAS
    path: //nas01/backups
    credential: nass  # <-
credentials:
  - {name: nas, username: backup, passwordEnv: NAS_PASSWORD}
""",
        "repositories[1].credential",
        "'nass' is not a defined credential (defined: nas)",
        id="repository-to-unknown-credential",
    ),
    pytest.param(
        HEAD
        + """\
jobs:
  - {name: Daily, type: backup-job, repository: Main, source: /a}
  - {name: DAILY, type: backup-job, repository: Main, source: /b}  # <-
""",
        "jobs[1].name",
        "duplicate job name 'DAILY'",
        id="duplicate-job-names",
    ),
    pytest.param(
        HEAD + "  - {name: main, path: /srv/other}  # <-\n",
        "repositories[1].name",
        "duplicate repository name",
        id="duplicate-repository-names",
    ),
    pytest.param(
        HEAD
        + """\
  - name: SOBR-1
    extents:
      - {name: Ext-A, path: /a}
  - name: SOBR-2
    extents:
      - {name: ext-a, path: /b}  # <-
""",
        "repositories[2].extents[0].name",
        "duplicate extent name",
        id="duplicate-extents-across-sobrs",
    ),
    pytest.param(
        """\
version: 1
repositories:
  - {name: Main, path: /srv/main}
credentials:
  - {name: nas, username: a, passwordEnv: A}
  - {name: NAS, username: b, passwordEnv: B}  # <-
""",
        "credentials[1].name",
        "duplicate credential name",
        id="duplicate-credential-names",
    ),
    pytest.param(
        HEAD + "    path: /srv/again  # <-\n",
        "repositories[0].path",
        "duplicate key 'path'",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        HEAD.replace("name: Main", 'name: "../x"  # <-'),
        "repositories[0].name",
        "not a safe name",
        id="name-dot-dot-slash",
    ),
    pytest.param(
        HEAD.replace("name: Main", "name: a/b  # <-"),
        "repositories[0].name",
        "not a safe name",
        id="name-with-slash",
    ),
    pytest.param(
        HEAD
        + """\
jobs:
  - name: "Daily\\nSQL"  # <-
    type: backup-job
    repository: Main
    source: /data
""",
        "jobs[0].name",
        "'Daily\\nSQL' is not a safe name",
        id="name-with-newline",
    ),
    pytest.param(
        HEAD.replace("name: Main", 'name: "Ma\\x07in"  # <-'),
        "repositories[0].name",
        "not a safe name",
        id="name-with-control-char",
    ),
    pytest.param(
        HEAD
        + """\
  - name: SOBR
    extents:
      - {name: "..", path: /a}  # <-
""",
        "repositories[1].extents[0].name",
        "not a safe name",
        id="name-dot-dot",
    ),
    pytest.param(
        HEAD.replace("name: Main", 'name: "Main "  # <-'),
        "repositories[0].name",
        "not a safe name",
        id="name-trailing-space",
    ),
    pytest.param(
        HEAD
        + """\
credentials:
  - name: nas
    username: backup
    passwordEnv: NAS_PASSWORD
    password: hunter2  # <-
""",
        "credentials[0].password",
        "passwords are never written inline",
        id="inline-password",
    ),
    pytest.param(
        HEAD
        + """\
credentials:
  - name: nas  # <-
    username: backup
    passwordEnv: NAS_PASSWORD
    passwordFile: /etc/bcs/nas.password
""",
        "credentials[0]",
        "exactly one of passwordEnv or passwordFile",
        id="password-env-and-file",
    ),
    pytest.param(
        HEAD.replace("path: /srv/main", "path: //nas01  # <-"),
        "repositories[0].path",
        "not a valid shared folder path",
        id="share-without-share-name",
    ),
    pytest.param(
        HEAD
        + """\
  - name: SOBR
    extents: []  # <-
""",
        "repositories[1].extents",
        "at least one extent",
        id="no-extents",
    ),
]


@pytest.mark.parametrize(("text", "field", "words"), MALFORMED)
def test_malformed_inventory_names_line_and_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(text, encoding="utf-8")
    marked = [n for n, line in enumerate(text.splitlines(), 1) if MARK in line]
    line = marked[0] if marked else 1

    problems = problems_of(path)

    expected = f"{path}:{line}:"
    assert any(p.startswith(expected) and f": {field}: " in p and words in p for p in problems), (
        f"no problem at {expected} for {field} saying {words!r} in:\n" + "\n".join(problems)
    )
    for problem in problems:
        assert re.fullmatch(rf"{re.escape(str(path))}:\d+:\d+: [^:]+: .+", problem, re.S), problem


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + """\
colour: blue
jobs:
  - name: Daily
    type: agent
    repository: Mian
    source: /data
""",
    )
    problems = problems_of(path)
    assert [p.removeprefix(f"{path}:").split(": ")[:2] for p in problems] == [
        ["5:1", "colour"],
        ["8:5", "jobs[0].type"],
        ["9:5", "jobs[0].repository"],
    ]
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.message == f"{problems[0]} (and 2 more)"


def test_a_password_is_never_echoed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEAD
        + """\
credentials:
  - {name: nas, username: backup, password: "s3cret-Pa55"}
  - {name: x, username: y, passwordEnv: A, password: [s3cret-Pa55]}
""",
    )
    problems = problems_of(path)
    assert problems and not any("s3cret" in p for p in problems)


def test_missing_file_says_how_to_name_one(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(InventoryError) as caught:
        load_inventory(missing)
    assert caught.value.message == (
        f"inventory file not found: {missing} (give -Inventory PATH or set BCS_INVENTORY)"
    )


def test_aliases_cannot_blow_up(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 8)]
    path = write(tmp_path, "\n".join(levels) + "\n")
    assert any("too many" in p for p in problems_of(path))


@pytest.mark.parametrize(
    "name", ["Daily SQL", "SOBR-1", "v1.2", ".hidden", "Ümlaut (x)", "a" * 128]
)
def test_safe_names(name: str) -> None:
    assert not _name_errors(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../x",
        "x..y",
        "a/b",
        "a\\b",
        "a\nb",
        "trailing\n",
        "a\tb",
        "a\x7fb",
        " lead",
        "trail ",
        "a" * 129,
    ],
)
def test_unsafe_names(name: str) -> None:
    assert _name_errors(name)


def _name_errors(name: str) -> list[object]:
    import jsonschema

    schema = load_schema("inventory")
    jsonschema.Draft202012Validator.check_schema(schema)
    document = {"version": 1, "repositories": [{"name": name, "path": "/x"}]}
    return list(jsonschema.Draft202012Validator(schema).iter_errors(document))


# --- cache ---------------------------------------------------------------------------------

PROBE = """\
import json, sys
from pathlib import Path
from cmdlets.backup.inventory import load_inventory
inventory = load_inventory(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({
    "jobs": [job.name for job in inventory.jobs],
    "parsed": "yaml" in sys.modules or "jsonschema" in sys.modules,
}))
"""


def load_in_subprocess(path: Path, cache_dir: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(path), str(cache_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_importing_the_module_imports_neither_yaml_nor_jsonschema() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import cmdlets.backup.inventory"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
    )
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "cmdlets.backup.inventory" in modules
    assert not {m for m in modules if m.split(".")[0] in ("yaml", "jsonschema")}


def test_second_load_comes_from_the_cache(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC_EXAMPLE)
    cache_dir = tmp_path / "state" / ".bcs"

    assert load_in_subprocess(path, cache_dir) == {"jobs": ["Daily SQL", "Laptops"], "parsed": True}
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((cache_dir / CACHE_FILE).stat().st_mode) == 0o600
    assert load_in_subprocess(path, cache_dir) == {
        "jobs": ["Daily SQL", "Laptops"],
        "parsed": False,
    }
    assert load_inventory(path, cache_dir) == load_inventory(path)


def test_cache_is_invalidated_when_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC_EXAMPLE)
    cache_dir = tmp_path / ".bcs"
    load_in_subprocess(path, cache_dir)

    path.write_text(SPEC_EXAMPLE.replace("Laptops", "Desktop"), encoding="utf-8")
    assert load_in_subprocess(path, cache_dir) == {"jobs": ["Daily SQL", "Desktop"], "parsed": True}

    # same size and same mtime: only the content tells the two apart
    before = path.stat()
    path.write_text(SPEC_EXAMPLE.replace("Laptops", "Notepad"), encoding="utf-8")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_in_subprocess(path, cache_dir) == {"jobs": ["Daily SQL", "Notepad"], "parsed": True}


def test_an_invalid_file_is_not_served_from_a_stale_cache(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC_EXAMPLE)
    cache_dir = tmp_path / ".bcs"
    load_inventory(path, cache_dir)
    path.write_text(SPEC_EXAMPLE.replace("repository: Main", "repository: Mian"), "utf-8")
    with pytest.raises(InventoryError, match="'Mian' is not a defined repository"):
        load_inventory(path, cache_dir)


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda text: "{not json", id="not-json"),
        pytest.param(lambda text: "", id="empty"),
        pytest.param(lambda text: "[1, 2]", id="not-an-object"),
        pytest.param(
            lambda text: json.dumps({**json.loads(text), "Inventory": {"jobs": [{"name": 1}]}}),
            id="right-key-broken-body",
        ),
    ],
)
def test_a_damaged_cache_is_ignored(tmp_path: Path, damage: Callable[[str], str]) -> None:
    path = write(tmp_path, SPEC_EXAMPLE)
    cache_dir = tmp_path / ".bcs"
    expected = load_inventory(path, cache_dir)
    cache = cache_dir / CACHE_FILE
    cache.write_text(damage(cache.read_text()), encoding="utf-8")

    assert load_inventory(path, cache_dir) == expected
    assert json.loads(cache.read_text())["Inventory"]["jobs"][0]["name"] == "Daily SQL"


def test_an_unwritable_cache_dir_is_not_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, SPEC_EXAMPLE)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert load_inventory(path, blocker / ".bcs").jobs[0].name == "Daily SQL"
