"""The pipeline codec: JSON Lines in and out, one object per line, streamed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

from cmdlets.host.errors import InvalidInputError

MAX_LINE = 64 * 1024 * 1024


def read_objects(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, object)`` as lines arrive; blank lines are skipped."""
    number = 0
    while True:
        line = stream.readline(MAX_LINE + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE:
            raise InvalidInputError(f"pipeline input line {number}: longer than {MAX_LINE} bytes")
        if not line.strip():
            continue
        value = decode_line(line, number)
        # A line holding an array (ConvertTo-Json -Compress) supplies its elements.
        yield from (
            ((number, item) for item in value) if isinstance(value, list) else [(number, value)]
        )


def decode_line(line: bytes, number: int) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"pipeline input line {number}: not UTF-8 ({exc.reason} at byte {exc.start})",
            target=f"line {number}",
            error_id="MalformedPipelineInput",
        ) from None
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        column = f", column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidInputError(
            f"pipeline input line {number}{column}: not a JSON object: {detail}",
            target=f"line {number}",
            error_id="MalformedPipelineInput",
        ) from None
    if isinstance(value, list) and all(isinstance(item, (dict, str)) for item in value):
        return value
    if not isinstance(value, (dict, str)):
        raise InvalidInputError(
            f"pipeline input line {number}: expected a JSON object, got {type(value).__name__}",
            target=f"line {number}",
            error_id="MalformedPipelineInput",
        )
    return value


def encode(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
