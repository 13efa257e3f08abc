"""Objects formatted for a terminal: tables of default display properties, or lists."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from cmdlets.host.schemas import display_properties

MAX_CELL = 48


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        if "Name" in value:
            return cell(value["Name"])
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value).replace("\n", " ")


def human_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)


def table_cell(column: str, value: Any) -> str:
    """A table shows sizes for people (the JSON output keeps exact byte counts)."""
    sized = column.endswith("Bytes") or column in ("Size", "BytesTotal", "BytesCopied")
    if sized and isinstance(value, int) and not isinstance(value, bool):
        return human_bytes(value)
    return cell(value)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def _columns(objects: list[dict[str, Any]]) -> list[str]:
    type_name = objects[0].get("TypeName")
    props = display_properties(type_name) if isinstance(type_name, str) else None
    if props:
        return props
    seen: dict[str, None] = {}
    for obj in objects:
        for key in obj:
            if key != "TypeName":
                seen.setdefault(key, None)
    return list(seen)[:8]


def format_table(
    objects: list[dict[str, Any]], width: int = 120, columns: list[str] | None = None
) -> str:
    """A table of ``columns`` (by default the type's display properties)."""
    columns = columns or _columns(objects)
    # The last column may run to the edge of the line: log messages and reasons read whole.
    limits = [MAX_CELL] * (len(columns) - 1) + [max(width, MAX_CELL)]
    rows = [
        [_clip(table_cell(c, obj.get(c)), limit) for c, limit in zip(columns, limits, strict=True)]
        for obj in objects
    ]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths).rstrip(),
    ]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(line[:width] if width > 0 else line for line in lines)


def format_list(objects: list[dict[str, Any]]) -> str:
    blocks = []
    for obj in objects:
        keys = [k for k in obj if k != "TypeName"]
        pad = max((len(k) for k in keys), default=0)
        blocks.append("\n".join(f"{k.ljust(pad)} : {cell(obj[k])}" for k in keys))
    return "\n\n".join(blocks)


def format_objects(objects: Iterable[Any], how: str, width: int = 120) -> str:
    """Format everything written, grouping consecutive objects of one type into one table."""
    out: list[str] = []
    group: list[dict[str, Any]] = []
    lines: list[str] = []  # consecutive strings and numbers: one per line, like Format-Table's

    def flush() -> None:
        if group:
            text = format_list(group) if how == "List" else format_table(group, width)
            out.append(text)
            group.clear()
        if lines:
            out.append("\n".join(lines))
            lines.clear()

    for obj in objects:
        if not isinstance(obj, dict):
            if group:
                flush()
            lines.append(str(obj))
            continue
        if lines or (group and obj.get("TypeName") != group[0].get("TypeName")):
            flush()
        group.append(obj)
    flush()
    return "\n\n".join(out)
