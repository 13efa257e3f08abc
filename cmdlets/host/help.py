"""Help text, built from a cmdlet's docstring and its parameter declarations."""

from __future__ import annotations

import re

from cmdlets.host.registry import Cmdlet, Parameter

EXIT_STATUS = """\
EXIT STATUS
    0    success
    1    the operation failed (an error was written, or a copy session needs action)
    2    usage or invalid input (parameters, inventory, pipeline JSON)
    3    busy: a lock could not be taken in time, or another process works on the object
    130  interrupted"""


def split_doc(item: Cmdlet) -> tuple[str, str, str]:
    """(synopsis, description, examples) from the docstring; examples follow ``Examples:``."""
    text = item.help_text
    synopsis, _, rest = text.partition("\n")
    description, *examples = re.split(r"^Examples:\s*$", rest, maxsplit=1, flags=re.M)
    return synopsis.strip(), description.strip(), "".join(examples).strip("\n")


def syntax(item: Cmdlet) -> str:
    pieces = [item.name]
    for param in item.own_parameters():
        word = f"-{param.name}" if param.is_switch else f"-{param.name} <{_type(param)}>"
        if param.decl.position is not None and not param.is_switch:
            word = f"[-{param.name}] <{_type(param)}>"
        pieces.append(word if param.decl.mandatory else f"[{word}]")
    pieces.append("[<CommonParameters>]")
    return " ".join(pieces)


def _type(param: Parameter) -> str:
    if param.decl.values:
        return "|".join(param.decl.values)
    if param.kind == "stream" and "*" in (param.decl.by_value or {}):
        return "object[]"  # whole pipeline objects of any type (Where-Object...)
    return {
        "str": "string",
        "list": "string[]",
        "stream": "string[]",
        "int": "int",
        "float": "double",
        "bool": "switch",
        "duration": "duration",
        "object": "object",
    }[param.kind]


def parameter_lines(item: Cmdlet, common: bool) -> list[str]:
    lines = []
    for param in item.parameters:
        if param.common != common:
            continue
        lines.append(f"    -{param.name} <{_type(param)}>")
        if param.decl.help:
            lines.append(f"        {param.decl.help}")
        facts = []
        if param.decl.mandatory:
            facts.append("required")
        if param.decl.position is not None:
            facts.append(f"position {param.decl.position}")
        if param.decl.by_value:
            facts.append("pipeline input by value (" + ", ".join(param.decl.by_value) + ")")
        if param.decl.by_property:
            facts.append("pipeline input by property name")
        if param.decl.aliases:
            facts.append("aliases " + ", ".join(param.decl.aliases))
        if facts:
            lines.append(f"        ({'; '.join(facts)})")
    return lines


def render_help(item: Cmdlet, *, examples_only: bool = False, full: bool = False) -> str:
    synopsis, description, examples = split_doc(item)
    if examples_only:
        return f"NAME\n    {item.name}\n\nEXAMPLES\n{_indent(examples)}"
    out = [f"NAME\n    {item.name}", f"SYNOPSIS\n    {synopsis}", f"SYNTAX\n    {syntax(item)}"]
    if description:
        out.append(f"DESCRIPTION\n{_indent(description)}")
    own = parameter_lines(item, common=False)
    if own:
        out.append("PARAMETERS\n" + "\n".join(own))
    if full:
        out.append("COMMON PARAMETERS\n" + "\n".join(parameter_lines(item, common=True)))
        if item.output_type:
            out.append(f"OUTPUTS\n    {item.output_type}")
    if examples:
        out.append(f"EXAMPLES\n{_indent(examples)}")
    out.append(EXIT_STATUS)
    return "\n\n".join(out)


def _indent(text: str) -> str:
    import textwrap

    return textwrap.indent(textwrap.dedent(text).strip("\n"), "    ")
