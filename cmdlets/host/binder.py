"""PowerShell parameter binding (SPEC §3): names, prefixes, switches, values, positions.

Turns argument tokens into a dict keyed by Python parameter name, converting each value to
the parameter's type. Pipeline objects bind through :func:`bind_object`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from cmdlets.host.errors import InvalidInputError, UsageError
from cmdlets.host.registry import Cmdlet, Parameter

# -Name, -Name:value, --name, --name=value (GNU style).
_NAME = re.compile(
    r"^(?:-([A-Za-z][A-Za-z0-9_]*)(?::(.*))?|--([A-Za-z][A-Za-z0-9_-]*)(?:[:=](.*))?)$", re.DOTALL
)
_TRUE = {"$true", "true", "1", "yes"}
_FALSE = {"$false", "false", "0", "no"}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def find_parameter(item: Cmdlet, written: str) -> Parameter:
    """The parameter a (possibly abbreviated, any-case) name means, or a UsageError."""
    wanted = written.lower().replace("-", "")
    candidates: dict[str, Parameter] = {}
    for param in item.parameters:
        for name in param.all_names():
            if name.lower() == wanted:
                return param
            if name.lower().startswith(wanted):
                candidates[param.name] = param
    if len(candidates) == 1:
        return next(iter(candidates.values()))
    if candidates:
        listed = ", ".join(f"-{n}" for n in sorted(candidates))
        raise UsageError(
            f"parameter -{written} is ambiguous; possible matches: {listed}",
            target=written,
            error_id="AmbiguousParameter",
        )
    every = [n for p in item.parameters for n in p.all_names()]
    import difflib

    close = difflib.get_close_matches(written, every, n=3, cutoff=0.5) or difflib.get_close_matches(
        written.lower(), [n.lower() for n in every], n=3, cutoff=0.5
    )
    hint = f"; did you mean {', '.join('-' + _proper(every, c) for c in close)}?" if close else ""
    raise UsageError(
        f"a parameter cannot be found that matches parameter name '{written}'{hint} "
        f"(see: Get-Help {item.name})",
        target=written,
        error_id="NamedParameterNotFound",
    )


def _proper(names: list[str], lowered: str) -> str:
    return next((n for n in names if n.lower() == lowered.lower()), lowered)


def is_parameter_token(token: str) -> bool:
    return bool(_NAME.match(token)) and not _looks_numeric(token)


def _looks_numeric(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def bind_arguments(item: Cmdlet, tokens: Sequence[str | list[str]]) -> dict[str, Any]:
    """Bind command-line tokens (a token may already be a list, from the shell's tokenizer)."""
    bound: dict[str, Any] = {}
    positional: list[str | list[str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        match = _NAME.match(token) if isinstance(token, str) else None
        if match is None or (isinstance(token, str) and _looks_numeric(token)):
            positional.append(token)
            continue
        written, inline = (
            (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        )
        param = find_parameter(item, written)
        if param.is_switch:
            bound[param.python_name] = _switch_value(param, inline)
            continue
        if inline is not None and inline != "":
            raw: str | list[str] = inline
        elif i < len(tokens):
            raw = tokens[i]
            i += 1
        else:
            raise UsageError(
                f"missing an argument for parameter -{param.name}; specify a value of type "
                f"{_type_word(param)}",
                target=param.name,
                error_id="MissingArgument",
            )
        _store(bound, param, raw)
    _bind_positional(item, bound, positional)
    return bound


def _switch_value(param: Parameter, inline: str | None) -> bool:
    if inline is None:
        return True
    lowered = inline.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise UsageError(
        f"-{param.name} is a switch; use -{param.name} or -{param.name}:$false, not '{inline}'",
        target=param.name,
    )


def _bind_positional(item: Cmdlet, bound: dict[str, Any], values: list[str | list[str]]) -> None:
    slots = sorted(
        (p for p in item.parameters if p.decl.position is not None and p.python_name not in bound),
        key=lambda p: p.decl.position or 0,
    )
    for value in values:
        if not slots:
            raise UsageError(
                f"a positional parameter cannot be found that accepts argument '{_show(value)}'",
                target=_show(value),
                error_id="PositionalParameterNotFound",
            )
        _store(bound, slots.pop(0), value)


def _show(value: str | list[str]) -> str:
    return value if isinstance(value, str) else ",".join(value)


def _store(bound: dict[str, Any], param: Parameter, raw: str | list[str]) -> None:
    if param.takes_many:
        items = raw if isinstance(raw, list) else _split_list(raw)
        converted = [convert(param, x) for x in items]
        bound.setdefault(param.python_name, []).extend(converted)
    else:
        if isinstance(raw, list):
            if len(raw) != 1:
                raise UsageError(
                    f"-{param.name} takes one value, not {len(raw)}", target=param.name
                )
            raw = raw[0]
        bound[param.python_name] = convert(param, raw)


def _split_list(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip() != ""] or [raw]


def convert(param: Parameter, raw: Any) -> Any:
    """Convert one value to the parameter's type; enumerated values become their canonical case."""
    values = param.decl.values
    if values is not None:
        text = str(raw).strip()
        for allowed in values:
            if allowed.lower() == text.lower():
                return allowed
        import difflib

        close = difflib.get_close_matches(text, list(values), n=1, cutoff=0.4)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UsageError(
            f"cannot validate argument on parameter -{param.name}: '{text}' is not one of "
            f"{', '.join(values)}.{hint}",
            target=param.name,
            error_id="ParameterArgumentValidationError",
        )
    kind = param.kind
    try:
        if kind in ("str", "list", "stream"):
            if isinstance(raw, (dict, list)):
                raise ValueError("expected a single value")
            return raw if isinstance(raw, str) else _scalar_text(raw)
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError
        if kind == "duration":
            return parse_duration(raw)
        if kind == "object":
            if not isinstance(raw, dict):
                raise ValueError
            return raw
    except (ValueError, TypeError, OverflowError):
        pass
    raise UsageError(
        f"cannot convert '{raw}' to {_type_word(param)} for parameter -{param.name}",
        target=param.name,
        error_id="ParameterArgumentTransformationError",
    )


def _scalar_text(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    return str(raw)


def parse_duration(raw: Any) -> timedelta:
    """``90``, ``90s``, ``15m``, ``24h``, ``7d``, ``1w`` or ``hh:mm:ss``."""
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return timedelta(seconds=raw)
    text = str(raw)
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        if len(parts) > 3:
            raise ValueError(text)
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + part
        return timedelta(seconds=seconds)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(text)
    unit = match.group(2).lower() if match.group(2) else None
    return timedelta(seconds=float(match.group(1)) * _UNITS[unit])


def _type_word(param: Parameter) -> str:
    if param.decl.values:
        return "|".join(param.decl.values)
    return {
        "str": "string",
        "list": "string[]",
        "stream": "string[]",
        "int": "integer",
        "float": "number",
        "bool": "switch",
        "duration": "duration (e.g. 30s, 15m, 24h)",
        "object": "object",
    }[param.kind]


def bind_object(item: Cmdlet, obj: Any, line: int) -> dict[str, Any]:
    """Bind one pipeline object: by value (its TypeName), else by property name."""
    params = item.pipeline_parameters()
    type_name = str(obj.get("TypeName") or "") if isinstance(obj, dict) else "String"
    for param in params:
        accepts = param.decl.by_value or {}
        prop = accepts.get(type_name)
        if prop is None and "*" in accepts:
            # "*" accepts any object, with or without a TypeName; bound whole to a stream
            # parameter it is passed as is (Where-Object, Select-Object...).
            prop = accepts["*"]
            if not prop and param.kind == "stream":
                return {param.python_name: [obj]}
        if prop is not None:
            value = obj if not prop else _get_property(obj, prop)
            if value is not None:
                return {param.python_name: _pipeline_value(param, value, line)}
    bound: dict[str, Any] = {}
    if isinstance(obj, dict):
        lowered = {str(k).lower(): v for k, v in obj.items()}
        for param in params:
            if not param.decl.by_property:
                continue
            for name in param.all_names():
                value = lowered.get(name.lower())
                if value is not None:
                    bound[param.python_name] = _pipeline_value(param, value, line)
                    break
    if not bound:
        what = f"object of type {type_name}" if type_name else "object"
        accepted = sorted({n for p in params if p.decl.by_property for n in p.all_names()})
        hint = f" (it needs a property {', '.join(accepted)})" if accepted else ""
        raise InvalidInputError(
            f"pipeline input line {line}: the input {what} cannot be bound to any parameter "
            f"of {item.name}{hint}",
            target=f"line {line}",
            error_id="InputObjectNotBound",
        )
    return bound


def _get_property(obj: Mapping[str, Any], prop: str) -> Any:
    for key, value in obj.items():
        if key.lower() == prop.lower():
            return value
    return None


def _pipeline_value(param: Parameter, value: Any, line: int) -> Any:
    try:
        if param.takes_many and isinstance(value, list):
            return [convert(param, v) for v in value]
        converted = convert(param, value)
        return [converted] if param.takes_many else converted
    except UsageError as exc:
        raise InvalidInputError(f"pipeline input line {line}: {exc.message}") from exc
