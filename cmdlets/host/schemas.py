"""Access to the JSON Schema documents in ``schemas/`` (shipped inside the wheel)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent.parent


def schema_dir() -> Path:
    """The installed copy (``cmdlets/schemas``) or, in a source checkout, ``schemas/``."""
    installed = _PACKAGE / "schemas"
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / "schemas"


@functools.cache
def load_schema(name: str) -> dict[str, Any]:
    """Load ``<name>.schema.json``, e.g. ``inventory`` or ``BackupCopy.BackupJob``."""
    path = schema_dir() / f"{name}.schema.json"
    with path.open("rb") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def display_properties(type_name: str) -> list[str] | None:
    """The default table columns a type's schema names (``x-defaultDisplayProperties``)."""
    try:
        schema = load_schema(type_name)
    except FileNotFoundError:
        return None
    props = schema.get("x-defaultDisplayProperties")
    return list(props) if props else None
