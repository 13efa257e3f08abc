"""The inventory: repositories, credentials and jobs, read from a YAML file (SPEC §7).

``schemas/inventory.schema.json`` is the one definition of what is valid; this module adds
what a schema cannot say (cross-references, unique names, duplicate YAML keys) and turns every
finding into ``file:line:column: field.path: message``.

yaml and jsonschema cost tens of milliseconds to import, so they are imported only when a file
has to be parsed; a parse cached in the state directory is read back with json alone.
"""

from __future__ import annotations

import functools
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from cmdlets.host.errors import BcsError, InventoryError
from cmdlets.host.schemas import load_schema, schema_dir
from cmdlets.store.records import read_json, write_json_atomic

if TYPE_CHECKING:
    import yaml
    from jsonschema.exceptions import ValidationError

__all__ = [
    "CACHE_FILE",
    "Credential",
    "Extent",
    "Inventory",
    "Job",
    "Repository",
    "is_share_path",
    "load_inventory",
]

CACHE_FILE = "inventory-cache.json"
_CACHE_FORMAT = 1  # bump whenever the cached document or the way it is built changes
# Aliases let a few lines expand into millions of nodes; a real inventory is far below these.
_MAX_NODES = 100_000
_MAX_DEPTH = 32


def is_share_path(path: str | None) -> bool:
    """True for a shared folder: ``//server/share/...`` or ``smb://server[:port]/share/...``."""
    return path is not None and (path.startswith("//") or path[:6].lower() == "smb://")


@dataclass(frozen=True)
class Extent:
    name: str
    path: str
    maintenance: bool = False


@dataclass(frozen=True)
class Repository:
    name: str
    path: str | None
    extents: tuple[Extent, ...] = ()
    credential: str | None = None

    @property
    def kind(self) -> str:
        """``Folder``, ``ScaleOut`` or ``Share`` (the ``Kind`` of ``BackupCopy.Repository``)."""
        if self.extents:
            return "ScaleOut"
        return "Share" if is_share_path(self.path) else "Folder"


@dataclass(frozen=True)
class Credential:
    """Where a password is found; the password itself is never read here."""

    name: str
    username: str
    password_env: str | None
    password_file: str | None


@dataclass(frozen=True)
class Job:
    name: str
    type: str  # "backup-job" | "agent-policy"
    repository: str
    source: str
    enabled: bool = True


@dataclass(frozen=True)
class Inventory:
    path: Path
    server: str | None
    repositories: tuple[Repository, ...]
    credentials: tuple[Credential, ...]
    jobs: tuple[Job, ...]

    def repository(self, name: str) -> Repository | None:
        return _find(self.repositories, name)

    def job(self, name: str) -> Job | None:
        return _find(self.jobs, name)

    def credential(self, name: str) -> Credential | None:
        return _find(self.credentials, name)


_Named = TypeVar("_Named", Repository, Job, Credential)


def _find(items: Sequence[_Named], name: str) -> _Named | None:
    wanted = name.casefold()
    return next((item for item in items if item.name.casefold() == wanted), None)


def load_inventory(path: Path, cache_dir: Path | None = None) -> Inventory:
    """Read and validate the inventory at ``path``.

    Raises :class:`InventoryError` listing every problem found. With ``cache_dir``, a valid
    parse is cached there and reused while the file (and the schema) stay the same.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            stat = os.fstat(f.fileno())
            raw = f.read()
    except FileNotFoundError:
        raise InventoryError(
            f"inventory file not found: {path} (give -Inventory PATH or set BCS_INVENTORY)"
        ) from None
    except OSError as exc:
        raise InventoryError(f"cannot read inventory file {path}: {exc.strerror}") from None
    base = path.resolve().parent

    key: dict[str, Any] | None = None
    if cache_dir is not None:
        key = _cache_key(path.resolve(), stat, raw)
        cached = _read_cache(cache_dir / CACHE_FILE, key)
        if cached is not None:
            try:
                return _build(path, base, cached)
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # a damaged cache only costs a parse

    data = _parse(str(path), raw)
    inventory = _build(path, base, data)
    if cache_dir is not None and key is not None:
        _write_cache(cache_dir, key, data)
    return inventory


# --- building the model from validated data -------------------------------------------------


def _build(path: Path, base: Path, data: Mapping[str, Any]) -> Inventory:
    def local(value: str) -> str:
        return value if is_share_path(value) else os.path.normpath(base / value)

    def canonical(names: Mapping[str, str], ref: str | None) -> str | None:
        return None if ref is None else names[ref.casefold()]

    repo_data = data.get("repositories", [])
    cred_data = data.get("credentials", [])
    repo_names = {r["name"].casefold(): r["name"] for r in repo_data}
    cred_names = {c["name"].casefold(): c["name"] for c in cred_data}
    return Inventory(
        path=path,
        server=data.get("server"),
        repositories=tuple(
            Repository(
                name=r["name"],
                path=local(r["path"]) if "path" in r else None,
                extents=tuple(
                    Extent(e["name"], local(e["path"]), bool(e.get("maintenance", False)))
                    for e in r.get("extents", [])
                ),
                credential=canonical(cred_names, r.get("credential")),
            )
            for r in repo_data
        ),
        credentials=tuple(
            Credential(
                name=c["name"],
                username=c["username"],
                password_env=c.get("passwordEnv"),
                password_file=local(c["passwordFile"]) if "passwordFile" in c else None,
            )
            for c in cred_data
        ),
        jobs=tuple(
            Job(
                name=j["name"],
                type=j["type"],
                repository=repo_names[j["repository"].casefold()],
                source=local(j["source"]),
                enabled=bool(j.get("enabled", True)),
            )
            for j in data.get("jobs", [])
        ),
    )


# --- cache ------------------------------------------------------------------------------------


@functools.cache
def _schema_digest() -> str:
    # hashlib costs ~5 ms of start-up to import; the schema's identity is enough here.
    st = (schema_dir() / "inventory.schema.json").stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _cache_key(resolved: Path, stat: os.stat_result, raw: bytes) -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "path": str(resolved),
        "dev": stat.st_dev,
        "ino": stat.st_ino,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        # mtime ticks are coarse: a same-size rewrite within one tick keeps the stat identity.
        # A checksum of the content catches that (a cache key, not a security boundary).
        "crc32": zlib.crc32(raw),
        "schema": _schema_digest(),
    }


def _read_cache(file: Path, key: Mapping[str, Any]) -> Mapping[str, Any] | None:
    try:
        doc = read_json(file)
    except (BcsError, OSError):
        return None
    if isinstance(doc, dict) and doc.get("Key") == key and isinstance(doc.get("Inventory"), dict):
        inventory: Mapping[str, Any] = doc["Inventory"]
        return inventory
    return None


def _write_cache(cache_dir: Path, key: Mapping[str, Any], data: Mapping[str, Any]) -> None:
    try:
        cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json_atomic(cache_dir / CACHE_FILE, {"Key": key, "Inventory": data})
    except (OSError, TypeError, ValueError):
        pass  # the cache only saves time; a read-only state dir must not fail the command


# --- parsing and validation -------------------------------------------------------------------

_FieldPath = tuple[str | int, ...]


class _Problem(NamedTuple):
    line: int
    column: int
    field: _FieldPath
    message: str


class _Located:
    """Where each field of the document is written: mapping members at their key, list items
    at the item, the document at its first node."""

    def __init__(self, root: yaml.Node) -> None:
        self.marks: dict[_FieldPath, tuple[int, int]] = {(): _position(root.start_mark)}
        self.duplicates: list[_Problem] = []
        self._index(root)

    def where(self, field: _FieldPath) -> tuple[int, int]:
        """Line and column of ``field``, or of its nearest ancestor written in the file."""
        while field not in self.marks:
            field = field[:-1]
        return self.marks[field]

    def problem(self, field: _FieldPath, message: str, at: _FieldPath | None = None) -> _Problem:
        return _Problem(*self.where(field if at is None else at), field, message)

    def _index(self, root: yaml.Node) -> None:
        import yaml

        stack: list[tuple[yaml.Node, _FieldPath]] = [(root, ())]
        count = 0
        while stack:
            node, at = stack.pop()
            count += 1
            if count > _MAX_NODES or len(at) > _MAX_DEPTH:
                raise _TooComplexError(
                    _Problem(
                        *_position(node.start_mark),
                        at,
                        "too deeply nested or too many aliased nodes to be an inventory",
                    )
                )
            if isinstance(node, yaml.MappingNode):
                members: dict[tuple[str, str], tuple[yaml.Node, yaml.Node]] = {}
                for key, value in node.value:
                    if key.tag == "tag:yaml.org,2002:merge":
                        continue  # merged members are indexed where their anchor is written
                    ident = (key.tag, str(key.value) if isinstance(key, yaml.ScalarNode) else "?")
                    if ident in members:
                        first = _position(members[ident][0].start_mark)[0]
                        self.duplicates.append(
                            _Problem(
                                *_position(key.start_mark),
                                (*at, ident[1]),
                                f"duplicate key {ident[1]!r} (first written on line "
                                f"{first}; YAML would silently keep only the last)",
                            )
                        )
                    members[ident] = (key, value)  # the constructor keeps the last one too
                for (_, name), (key, value) in members.items():
                    self.marks[(*at, name)] = _position(key.start_mark)
                    stack.append((value, (*at, name)))
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    self.marks[(*at, index)] = _position(item.start_mark)
                    stack.append((item, (*at, index)))


class _TooComplexError(Exception):
    def __init__(self, problem: _Problem) -> None:
        self.problem = problem


def _position(mark: Any) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _parse(display: str, raw: bytes) -> dict[str, Any]:
    """The validated document, or InventoryError with every problem."""
    data, problems = _check(raw)
    if problems or not isinstance(data, dict):
        problems = problems or [_Problem(1, 1, (), "the inventory is not a mapping")]
        lines = list(
            dict.fromkeys(
                f"{display}:{p.line}:{p.column}: {_show_field(p.field)}: {p.message}"
                for p in sorted(problems, key=lambda p: (p.line, p.column))
            )
        )
        summary = lines[0] if len(lines) == 1 else f"{lines[0]} (and {len(lines) - 1} more)"
        raise InventoryError(summary, lines)
    return data


def _check(raw: bytes) -> tuple[Any, list[_Problem]]:
    import jsonschema
    import yaml

    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        return None, [_Problem(line, column, (), "the file is not UTF-8 text")]

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        root = yaml.compose(text, Loader=loader)
        if root is None:
            return None, [_Problem(1, 1, (), "the inventory is empty; it starts with 'version: 1'")]
        located = _Located(root)
        data = yaml.constructor.SafeConstructor().construct_document(root)
    except yaml.YAMLError as exc:
        return None, [_yaml_problem(exc, text)]
    except _TooComplexError as abort:
        return None, [abort.problem]

    errors = list(jsonschema.Draft202012Validator(load_schema("inventory")).iter_errors(data))
    # A value of the wrong type fails every other keyword too; its type is the one to report.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    problems = list(located.duplicates)
    for error in errors:
        if error.validator == "type" or tuple(error.absolute_path) not in mistyped:
            problems.extend(_explain(error, located))
    if isinstance(data, dict):
        problems.extend(_check_references(data, located))
    return data, problems


def _yaml_problem(exc: yaml.YAMLError, text: str) -> _Problem:
    import yaml

    lines = text.splitlines()
    if isinstance(exc, yaml.MarkedYAMLError):
        line, column = _position(exc.problem_mark or exc.context_mark)
        # The mark's snippet is left out on purpose: the line may hold a secret.
        message = exc.problem or "malformed YAML"
        if exc.context:
            message += f" ({exc.context})"
        if line <= len(lines) and lines[line - 1][column - 1 : column] == "\t":
            message += "; YAML is indented with spaces, never tabs"
    else:  # a ReaderError: a character YAML does not allow anywhere
        position = getattr(exc, "position", 0)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        message = f"character #x{getattr(exc, 'character', 0):04x} is not allowed in YAML"
    return _Problem(line, column, (), f"invalid YAML: {message}")


_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "null": "nothing",
}


def _explain(error: ValidationError, located: _Located) -> Iterator[_Problem]:
    """Turn one jsonschema error into problems a person can act on."""
    at: _FieldPath = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    kind = error.validator
    wanted: Any = error.validator_value

    if kind == "additionalProperties" and isinstance(value, dict):
        import difflib

        known = schema.get("properties", {})
        # a property whose schema is "not" is listed only to reject it with its own message
        allowed = [k for k, s in known.items() if not (isinstance(s, dict) and "not" in s)]
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
                yield located.problem((*at, str(key)), f"unknown key {_show(key)} ({hint})")
        return
    if kind == "required" and isinstance(value, dict):
        for key in wanted:
            if key not in value:
                yield located.problem((*at, key), f"required key {key!r} is missing", at=at)
        return

    custom = schema.get("x-messages", {}).get(str(kind))
    if custom:
        message = str(custom).format(value=_show(value))
    elif kind == "type":
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        message = (
            f"expected {' or '.join(_TYPE_WORDS.get(n, n) for n in names)}, got {_kind_of(value)}"
        )
        if "string" in names and (isinstance(value, bool | int | float) or _is_date(value)):
            message += "; put the value in quotes"
    elif kind == "enum":
        message = f"{_show(value)} is not allowed; use one of: {', '.join(map(str, wanted))}"
    elif kind == "const":
        message = f"{_show(value)} is not allowed; use {wanted!r}"
    elif kind == "minLength":
        message = "must not be empty"
    elif kind == "minItems":
        message = f"needs at least {wanted} item(s)"
    else:
        message = error.message
    yield located.problem(at, message)


def _check_references(data: Mapping[str, Any], located: _Located) -> Iterator[_Problem]:
    """What the schema cannot say: names are unique and references point at something."""

    def entries(section: str) -> list[tuple[int, dict[str, Any]]]:
        items = data.get(section)
        if not isinstance(items, list):
            return []
        return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]

    def unique(what: str, named: Sequence[tuple[_FieldPath, Any]]) -> Iterator[_Problem]:
        first: dict[str, _FieldPath] = {}
        for at, name in named:
            if not isinstance(name, str):
                continue
            if name.casefold() in first:
                earlier = first[name.casefold()]
                yield located.problem(
                    at,
                    f"duplicate {what} name {name!r} (names are case-insensitive; "
                    f"already used by {_show_field(earlier)} on line "
                    f"{located.where(earlier)[0]})",
                )
            else:
                first[name.casefold()] = at

    def reference(
        what: str, at: _FieldPath, ref: Any, defined: Sequence[tuple[_FieldPath, Any]]
    ) -> Iterator[_Problem]:
        names: dict[str, str] = {}
        for _, name in defined:
            if isinstance(name, str):
                names.setdefault(name.casefold(), name)
        if isinstance(ref, str) and ref.casefold() not in names:
            shown = [n if n.isprintable() else repr(n) for n in names.values()]
            listed = f"defined: {', '.join(shown)}" if names else f"no {what} is defined"
            yield located.problem(at, f"{ref!r} is not a defined {what} ({listed})")

    repositories = entries("repositories")
    credentials = entries("credentials")
    jobs = entries("jobs")
    repo_names = [(("repositories", i, "name"), r.get("name")) for i, r in repositories]
    cred_names = [(("credentials", i, "name"), c.get("name")) for i, c in credentials]
    extent_names = [
        (("repositories", i, "extents", j, "name"), e.get("name"))
        for i, r in repositories
        if isinstance(r.get("extents"), list)
        for j, e in enumerate(r["extents"])
        if isinstance(e, dict)
    ]
    yield from unique("repository", repo_names)
    yield from unique("extent", extent_names)
    yield from unique("credential", cred_names)
    yield from unique("job", [(("jobs", i, "name"), j.get("name")) for i, j in jobs])
    for i, r in repositories:
        at = ("repositories", i, "credential")
        yield from reference("credential", at, r.get("credential"), cred_names)
    for i, j in jobs:
        yield from reference(
            "repository", ("jobs", i, "repository"), j.get("repository"), repo_names
        )


def _show_field(field: _FieldPath) -> str:
    text = ""
    for part in field:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(top level)"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _is_date(value: Any) -> bool:
    import datetime

    return isinstance(value, datetime.date)


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if _is_date(value):
        return f"the date {value}"
    return f"a {type(value).__name__}"
