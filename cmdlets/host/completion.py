"""Completion of cmdlet names, parameter names and values: one engine for the interactive
shell (Tab) and for bash and zsh (``bcs --completion bash|zsh`` prints a script that calls
``bcs --complete`` back for candidates).

What a value completes to comes from its parameter: the enumerated values it declares, or the
live names named by ``Param.completes`` ("job", "repository", "cmdlet", "property", ...),
looked up in :data:`NAME_SOURCES`. Adding a kind of name is one function decorated with
:func:`name_source`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Callable, Iterable, Sequence

from cmdlets.host.binder import find_parameter, is_parameter_token
from cmdlets.host.commandline import Word, needs_quotes, quote_word, read_words
from cmdlets.host.context import Context, Environment, Options
from cmdlets.host.errors import BcsError, ExitStatus
from cmdlets.host.registry import Cmdlet, Parameter, Registry


@dataclasses.dataclass(frozen=True)
class Candidate:
    """Replace ``line[start:]`` (the word, or list item, being typed) with ``text``."""

    text: str
    start: int
    display: str
    meta: str = ""


@dataclasses.dataclass
class Request:
    """What a name source may look at: the environment, the cmdlet being typed, its words,
    and the pipeline elements before it."""

    env: Environment
    registry: Registry
    cmdlet: Cmdlet
    words: list[Word]
    upstream: list[list[Word]]

    def context(self) -> Context:
        """A context with the -Inventory and -StateDir typed on the line, if any."""
        options = Options()
        for index, word in enumerate(self.words[:-1]):
            if word.quoted or len(word.parts) != 1 or not is_parameter_token(word.parts[0]):
                continue
            try:
                param = find_parameter(self.cmdlet, word.parts[0].lstrip("-"))
            except BcsError:
                continue
            if param.python_name in ("inventory", "state_dir"):
                setattr(options, param.python_name, self.words[index + 1].parts[-1])
        return Context(self.env, options, self.cmdlet.name, self.registry)


NameSource = Callable[[Request], Iterable[str]]
NAME_SOURCES: dict[str, NameSource] = {}


def name_source(kind: str) -> Callable[[NameSource], NameSource]:
    """Register the live names that complete a parameter declared ``Param(completes=kind)``."""

    def register(function: NameSource) -> NameSource:
        NAME_SOURCES[kind] = function
        return function

    return register


@name_source("cmdlet")
def _cmdlet_names(request: Request) -> Iterable[str]:
    return request.registry.names()


@name_source("job")
def _job_names(request: Request) -> Iterable[str]:
    return [job.name for job in request.context().inventory.jobs]


@name_source("repository")
def _repository_names(request: Request) -> Iterable[str]:
    return [repo.name for repo in request.context().inventory.repositories]


@name_source("backup")
def _backup_names(request: Request) -> Iterable[str]:
    from cmdlets.backup.catalog import all_backups

    ctx = request.context()
    return sorted({b.name for b in all_backups(ctx.inventory, ctx.state)})


@name_source("session")
def _session_ids(request: Request) -> Iterable[str]:
    from cmdlets.backup.sessions import KIND

    # Newest first would need every record read; ids are enough to complete a prefix.
    return request.context().state.keys(KIND)


# Cmdlets that write the very objects they read: the properties are those of the stage before.
_PASS_OBJECTS_ON = {"where-object", "sort-object"}


@name_source("property")
def _property_names(request: Request) -> Iterable[str]:
    """The properties of what the pipeline element before writes, from its type's schema."""
    producer = None
    for stage in reversed(request.upstream):
        head = stage[0] if stage else None
        producer = request.registry.get(head.parts[0]) if head and len(head.parts) == 1 else None
        if producer is None or producer.name.lower() not in _PASS_OBJECTS_ON:
            break
    if producer is None or producer.output_type is None:
        return []
    from cmdlets.host.schemas import load_schema

    try:
        properties = load_schema(producer.output_type).get("properties", {})
    except (OSError, ValueError):
        return []
    return [name for name in properties if name != "TypeName"]


def complete(
    line: str, registry: Registry, env: Environment, *, posix: bool = False
) -> list[Candidate]:
    """Candidates for the word at the end of ``line`` (the text before the cursor).

    ``posix`` quotes names for bash and zsh; otherwise as the bcs shell reads them.
    """
    stages = read_words(line, lenient=True)
    words = stages[-1]
    current: Word | None = None
    if words and words[-1].end == len(line) and not line.endswith("|"):
        current = words.pop()
    typed = current.parts[-1] if current else ""
    start = current.part_start if current else len(line)
    if not words:
        if current is not None and len(current.parts) > 1:
            return []
        names = [n for n in registry.names() if n.lower().startswith(typed.lower())]
        return [Candidate(n, start, n, "cmdlet") for n in names]
    head = words[0]
    item = registry.get(head.parts[0]) if len(head.parts) == 1 and not head.quoted else None
    if item is None:
        return []
    if current is not None and _is_parameter_name(current):
        return _parameter_names(item, typed, start)
    target = _value_target(item, words)
    if target is None:
        return []
    request = Request(env, registry, item, [*words, current or Word(len(line))], stages[:-1])
    quote = line[start] if current is not None and current.quoted and line[start] in "'\"" else None
    return _values(target, request, typed, start, quote, posix)


def _is_parameter_name(word: Word) -> bool:
    text = word.parts[0]
    if word.quoted or len(word.parts) != 1 or not text.startswith("-"):
        return False
    return text.strip("-") == "" or is_parameter_token(text)


def _parameter_names(item: Cmdlet, typed: str, start: int) -> list[Candidate]:
    wanted = typed.lstrip("-").lower()
    return [
        Candidate(f"-{p.name}", start, f"-{p.name}", p.decl.help)
        for p in item.parameters
        if p.name.lower().startswith(wanted)
    ]


def _value_target(item: Cmdlet, words: list[Word]) -> Parameter | None:
    """The parameter the next word is a value of: the one named just before, else the next
    free positional slot."""
    named: set[str] = set()
    positional = 0
    expecting: Parameter | None = None
    for word in words[1:]:
        if expecting is not None:
            expecting = None
            continue
        text = word.parts[0]
        if word.quoted or len(word.parts) != 1 or not is_parameter_token(text):
            positional += 1
            continue
        name, *inline = re.split("[:=]", text.lstrip("-"), maxsplit=1)  # -Name:x, --name=x
        try:
            param = find_parameter(item, name)
        except BcsError:
            return None
        named.add(param.python_name)
        if not param.is_switch and not inline:
            expecting = param
    if expecting is not None:
        return expecting
    slots = sorted(
        (p for p in item.parameters if p.decl.position is not None and p.python_name not in named),
        key=lambda p: p.decl.position or 0,
    )
    return slots[positional] if positional < len(slots) else None


def _values(
    param: Parameter,
    request: Request,
    typed: str,
    start: int,
    quote: str | None,
    posix: bool,
) -> list[Candidate]:
    if param.decl.values is not None:
        names: Iterable[str] = param.decl.values
        meta = param.name
    elif param.decl.completes in NAME_SOURCES:
        try:
            names = NAME_SOURCES[param.decl.completes](request)
        except BcsError:
            return []  # no inventory here, or an invalid one: nothing to offer
        meta = param.decl.completes
    else:
        return []
    seen: set[str] = set()
    found = []
    for name in names:
        if name in seen or not name.lower().startswith(typed.lower()):
            continue
        seen.add(name)
        found.append(Candidate(_written(name, quote, posix), start, name, meta))
    return found


def _written(name: str, quote: str | None, posix: bool) -> str:
    if posix:
        return shlex.quote(name)
    if quote is None and not needs_quotes(name):
        return name
    return quote_word(name, quote or "'")


# --- bash and zsh ----------------------------------------------------------------------------

BASH = """\
# bcs completion for bash. Install: echo 'eval "$(bcs --completion bash)"' >> ~/.bashrc
_bcs_complete() {
    local IFS=$'\\n'
    COMPREPLY=($(bcs --complete "${COMP_WORDS[COMP_CWORD]}" "${COMP_LINE:0:COMP_POINT}" \\
        2>/dev/null))
}
complete -o default -F _bcs_complete %(commands)s
"""

ZSH = """\
# bcs completion for zsh. Install: echo 'eval "$(bcs --completion zsh)"' >> ~/.zshrc
# (after compinit).
_bcs_complete() {
    local -a candidates
    candidates=(${(f)"$(bcs --complete "$PREFIX" "${BUFFER[1,CURSOR]}" 2>/dev/null)"})
    # Inside an open quote zsh shows the line without it and closes it itself: unquote.
    [[ -n ${compstate[quote]} ]] && candidates=(${(Q)candidates})
    compadd -Q -U -- $candidates
}
compdef _bcs_complete %(commands)s
"""


def shell_script(shell: str, registry: Registry) -> str:
    commands = " ".join(["bcs", *registry.names()])
    template = {"bash": BASH, "zsh": ZSH}[shell]
    return template % {"commands": commands}


def complete_words(word: str, line: str, registry: Registry, env: Environment) -> list[str]:
    """Candidates for bash and zsh. The shell replaces its current ``word`` (the end of
    ``line``, the command line up to the cursor) with each; the word may start later than
    the one bcs completes when the shell broke it at a quote."""
    program, space, rest = line.lstrip().partition(" ")
    name = os.path.basename(program)
    if name.lower() == "bcs":
        text = rest
        if text.lstrip().lower().startswith(("-c ", "-command", "--command")):
            return []  # a whole pipeline inside one argument: not completed
    else:
        text = name + space + rest
    offset = len(line) - len(text)
    word_start = len(line) - len(word) if word and line.endswith(word) else len(line)
    out = []
    for candidate in complete(text, registry, env, posix=True):
        begin = candidate.start + offset
        if begin <= word_start:
            typed_before = line[begin:word_start]
            if candidate.text.startswith(typed_before):
                out.append(candidate.text[len(typed_before) :])
        else:
            out.append(line[word_start:begin] + candidate.text)
    return out


def completion_main(flag: str, args: Sequence[str], env: Environment, registry: Registry) -> int:
    """``bcs --completion bash|zsh`` prints the script; ``bcs --complete WORD LINE`` prints the
    candidates, one a line."""
    if flag == "--completion":
        if len(args) != 1 or args[0] not in ("bash", "zsh"):
            env.stderr.write("bcs: usage: bcs --completion bash|zsh\n")
            return ExitStatus.USAGE
        env.stdout.write(shell_script(args[0], registry))
        return ExitStatus.SUCCESS
    if len(args) != 2:
        env.stderr.write("bcs: usage: bcs --complete WORD LINE\n")
        return ExitStatus.USAGE
    for text in complete_words(args[0], args[1], registry, env):
        env.stdout.write(text + "\n")
    return ExitStatus.SUCCESS
