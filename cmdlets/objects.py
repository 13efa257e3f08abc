"""Object utilities for pipelines and the shell: Where-Object, Select-Object, Sort-Object,
Format-Table, Format-List, ConvertTo-Json, ConvertFrom-Json.

They take whole pipeline objects of any type, from the cmdlet before them in the shell or as
JSON Lines from another process, and they stream where the operation allows it: Where-Object
and Select-Object write each object as soon as it is decided, and Select-Object -First stops
reading once it has enough. Comparisons follow PowerShell: case-insensitive, numeric when both
sides are numbers.
"""

from __future__ import annotations

import collections
import fnmatch
import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Annotated, Any

from cmdlets.host.context import Context
from cmdlets.host.errors import InvalidInputError, NotFoundError, UsageError
from cmdlets.host.output import HostText
from cmdlets.host.registry import Param, cmdlet

INPUT_OBJECT = Param(by_value={"*": ""}, help="The objects to work on (piped).")
PROPERTIES = Param(
    position=0, help="Property names (comma-separated; wildcards allowed).", completes="property"
)


# --- reading properties and comparing values -------------------------------------------------


def get_property(obj: Any, name: str) -> Any:
    """The value of property ``name`` (any case; ``Target.Repository`` reaches inside), or
    None when the object has no such property."""
    if not isinstance(obj, dict):
        return None
    for key, value in obj.items():
        if key.lower() == name.lower():
            return value
    head, dot, rest = name.partition(".")
    if dot and rest:
        return get_property(get_property(obj, head), rest)
    return None


def _has_wildcards(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE | re.DOTALL)


def _property_names(obj: Any, patterns: list[str]) -> list[str]:
    """The property names that ``patterns`` select on ``obj``, spelt as the object spells them
    (a name the object lacks is kept as written: the property is then empty)."""
    keys = [k for k in obj if k != "TypeName"] if isinstance(obj, dict) else []
    names: dict[str, None] = {}
    for pattern in patterns:
        if _has_wildcards(pattern):
            matcher = _wildcard(pattern)
            names.update((k, None) for k in keys if matcher.match(k))
            continue
        names[next((k for k in keys if k.lower() == pattern.lower()), pattern)] = None
    return list(names)


def _project(obj: Any, patterns: list[str]) -> dict[str, Any]:
    return {name: get_property(obj, name) for name in _property_names(obj, patterns)}


# Patterns, compiled (and cached by re) on first use: every cmdlet's start-up imports this module.
_NUMBER = r"^\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$"
_INTEGER = r"^\s*[+-]?\d+\s*$"
_SIZE = r"(?i)^\s*(\d+(?:\.\d+)?)\s*(kb|mb|gb|tb|pb)\s*$"
_BOOLEANS = {"true": True, "$true": True, "false": False, "$false": False}


def as_number(value: Any) -> int | float | None:
    """A number, or text that reads as one (``"10"``, ``"2.5e3"``); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str) and re.match(_NUMBER, value):
        return int(value) if re.match(_INTEGER, value) else float(value)
    return None


def typed_number(text: str) -> int | float | None:
    """A number typed on the command line, with PowerShell's size suffixes: ``100GB``."""
    sized = re.match(_SIZE, text)
    if sized:
        power = ("kb", "mb", "gb", "tb", "pb").index(sized.group(2).lower()) + 1
        amount = float(sized.group(1)) * 1024**power
        return int(amount) if amount.is_integer() else amount
    return as_number(text)


def as_text(value: Any) -> str:
    """A value as PowerShell would show it in a comparison: ``True``, ``3``, ``a, b``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def is_truthy(value: Any) -> bool:
    """PowerShell's idea of true: not null, not false, not zero, not empty."""
    if isinstance(value, str):
        return value != ""
    return bool(value)


def compare(left: Any, right: str) -> int | None:
    """Order a property value against the text typed on the command line: -1, 0 or 1, or None
    when they cannot be compared (a missing property, ``$null`` against a value)."""
    if right.strip().lower() == "$null":
        return 0 if left is None else None
    if left is None:
        return None
    if isinstance(left, bool):
        wanted = _BOOLEANS.get(right.strip().lower())
        if wanted is None and right.strip() in ("1", "0"):
            wanted = right.strip() == "1"
        if wanted is None:
            return _order(as_text(left).casefold(), right.casefold())
        return _order(int(left), int(wanted))
    number, typed = as_number(left), typed_number(right)
    if number is not None and typed is not None:
        return _order(number, typed)
    typed_text = right.strip().lower().lstrip("$") if right.strip().lower() in _BOOLEANS else right
    return _order(as_text(left).casefold(), typed_text.casefold())


def _order(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _equal(left: Any, right: str) -> bool:
    return compare(left, right) == 0


Test = Callable[[Any], bool]


def _scalar_test(operator: str, operand: str) -> Test:
    """The test one operator makes of one (non-list) value."""
    if operator in ("eq", "ne", "gt", "ge", "lt", "le"):
        accept: Callable[[int], bool] = {
            "eq": lambda c: c == 0,
            "ne": lambda c: c != 0,
            "gt": lambda c: c > 0,
            "ge": lambda c: c >= 0,
            "lt": lambda c: c < 0,
            "le": lambda c: c <= 0,
        }[operator]

        def ordered(value: Any) -> bool:
            order = compare(value, operand)
            if order is None:
                return operator == "ne"
            return accept(order)

        return ordered
    if operator in ("like", "not_like"):
        pattern = _wildcard(operand)
        return lambda value: (pattern.match(as_text(value)) is not None) == (operator == "like")
    try:
        regex = re.compile(operand, re.IGNORECASE)
    except re.error as exc:
        raise UsageError(
            f"-{_OPERATORS[operator]}: '{operand}' is not a valid regular expression: {exc}",
            target=operand,
            error_id="InvalidRegularExpression",
        ) from None
    return lambda value: (regex.search(as_text(value)) is not None) == (operator == "match")


def make_test(operator: str, operand: str | list[str]) -> Test:
    """The test of ``<Property> -<operator> <operand>`` on a property value.

    On a list, the comparison operators pass when any element passes, as PowerShell's do;
    -Contains looks for the operand among the elements; -In looks for the value among the
    operands.
    """
    if operator in ("in_", "not_in"):
        choices = operand if isinstance(operand, list) else [operand]
        positive = operator == "in_"

        def within(value: Any) -> bool:
            found = not isinstance(value, list) and any(_equal(value, c) for c in choices)
            return found == positive

        return within
    text = operand if isinstance(operand, str) else ",".join(operand)
    if operator in ("contains", "not_contains"):
        positive = operator == "contains"

        def holds(value: Any) -> bool:
            items = value if isinstance(value, list) else [value]
            return any(_equal(item, text) for item in items) == positive

        return holds
    scalar = _scalar_test(operator, text)

    def test(value: Any) -> bool:
        if isinstance(value, list):
            return any(scalar(item) for item in value)
        return scalar(value)

    return test


# Python parameter name -> the operator as written.
_OPERATORS = {
    "eq": "EQ",
    "ne": "NE",
    "gt": "GT",
    "ge": "GE",
    "lt": "LT",
    "le": "LE",
    "like": "Like",
    "not_like": "NotLike",
    "match": "Match",
    "not_match": "NotMatch",
    "in_": "In",
    "not_in": "NotIn",
    "contains": "Contains",
    "not_contains": "NotContains",
}


# --- Where-Object ----------------------------------------------------------------------------


@cmdlet("Where-Object")
def where_object(
    ctx: Context,
    property: Annotated[
        str | None, Param(position=0, help="The property to test.", completes="property")
    ] = None,
    value: Annotated[
        str | None,
        Param(position=1, help="The value to compare with; without an operator, -EQ is meant."),
    ] = None,
    eq: Annotated[str | None, Param(help="Equal to the value.")] = None,
    ne: Annotated[str | None, Param(help="Not equal to the value.")] = None,
    gt: Annotated[str | None, Param(help="Greater than the value.")] = None,
    ge: Annotated[str | None, Param(help="Greater than or equal to the value.")] = None,
    lt: Annotated[str | None, Param(help="Less than the value.")] = None,
    le: Annotated[str | None, Param(help="Less than or equal to the value.")] = None,
    like: Annotated[str | None, Param(help="Matches the wildcard pattern (* ? [...]).")] = None,
    not_like: Annotated[str | None, Param(help="Does not match the wildcard pattern.")] = None,
    match: Annotated[str | None, Param(help="Matches the regular expression.")] = None,
    not_match: Annotated[str | None, Param(help="Does not match the regular expression.")] = None,
    in_: Annotated[list[str] | None, Param(help="Is one of the values (comma-separated).")] = None,
    not_in: Annotated[list[str] | None, Param(help="Is none of the values.")] = None,
    contains: Annotated[str | None, Param(help="The property (a list) holds the value.")] = None,
    not_contains: Annotated[str | None, Param(help="The property does not hold the value.")] = None,
    not_: Annotated[
        bool, Param(help="Pass the objects whose property is false, empty or missing.")
    ] = False,
    input_object: Annotated[Iterator[Any] | None, INPUT_OBJECT] = None,
) -> Iterator[Any]:
    """Pass on the objects whose property passes a test.

    The simplified syntax of PowerShell: a property, an operator and a value. Comparisons
    ignore case; numbers compare as numbers when both sides are numbers (a typed number may
    end in KB, MB, GB or TB: 100GB); true, false, $true and $false are booleans and $null is
    nothing. -Like takes wildcards (* ? [...]), -Match a regular expression. On a list
    property (HeldBy) an operator passes when any element passes. With a property alone,
    objects whose property is true, non-empty and non-zero pass; -Not passes the others.
    A property may reach inside an object: Target.Repository. Objects are written as soon
    as they pass.

    Examples:
      Get-BackupJob | Where-Object Enabled -eq true
      Get-BackupJob | Where-Object Name -like 'Daily*'
      Get-Repository | Where-Object FreeBytes -lt 100GB
      Get-BackupJob | Where-Object Type -in BackupJob,AgentPolicy
      Get-BackupJob | Where-Object -Not HeldBy
    """
    given = {
        name: operand
        for name, operand in {
            "eq": eq,
            "ne": ne,
            "gt": gt,
            "ge": ge,
            "lt": lt,
            "le": le,
            "like": like,
            "not_like": not_like,
            "match": match,
            "not_match": not_match,
            "in_": in_,
            "not_in": not_in,
            "contains": contains,
            "not_contains": not_contains,
        }.items()
        if operand is not None
    }
    if not property:
        raise UsageError(
            "Where-Object needs a property: Where-Object <Property> -EQ <Value>",
            target="Property",
            error_id="MissingProperty",
        )
    if len(given) > 1:
        listed = ", ".join(f"-{_OPERATORS[name]}" for name in given)
        raise UsageError(f"give one operator, not {listed}", error_id="TooManyOperators")
    if given and value is not None:
        raise UsageError(
            f"the value is given twice: after -{_OPERATORS[next(iter(given))]} and as '{value}'",
            target=value,
            error_id="ValueGivenTwice",
        )
    if not_ and (given or value is not None):
        raise UsageError("-Not takes a property alone: Where-Object -Not <Property>")
    if value is not None:
        given = {"eq": value}
    test: Test
    if given:
        operator, operand = next(iter(given.items()))
        test = make_test(operator, operand)
    else:
        test = is_truthy if not not_ else lambda v: not is_truthy(v)
    for obj in input_object or ():
        if test(get_property(obj, property)):
            yield obj


# --- Select-Object ---------------------------------------------------------------------------


def _non_negative(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise UsageError(f"-{name} must be 0 or more, not {value}", target=name)


def _identity(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


@cmdlet("Select-Object")
def select_object(
    ctx: Context,
    property: Annotated[list[str] | None, PROPERTIES] = None,
    expand_property: Annotated[
        str | None,
        Param(help="Write the value of this property instead of the object.", completes="property"),
    ] = None,
    first: Annotated[int | None, Param(help="Only the first N objects.")] = None,
    last: Annotated[int | None, Param(help="Only the last N objects.")] = None,
    skip: Annotated[int, Param(help="Leave out the first N objects.")] = 0,
    unique: Annotated[
        bool, Param(help="Leave out objects identical to one already written.")
    ] = False,
    input_object: Annotated[Iterator[Any] | None, INPUT_OBJECT] = None,
) -> Iterator[Any]:
    """Select properties of objects, or some of the objects.

    -Property writes new objects with only the named properties (wildcards allowed); their
    TypeName becomes Selected.<TypeName>. -ExpandProperty writes the value of one property
    itself (each element of a list). -Skip, -First and -Last pick objects by position;
    -First stops reading its input as soon as it has enough, so an endless producer stops
    too.

    Examples:
      Get-BackupJob | Select-Object -Property Name,Enabled
      Get-BackupJob | Select-Object -First 1
      Get-BackupJob | Select-Object -ExpandProperty Name
      Get-BackupJob | Select-Object Repository -Unique
    """
    for name, number in (("First", first), ("Last", last), ("Skip", skip)):
        _non_negative(name, number)
    if first is not None and last is not None:
        raise UsageError("use -First or -Last, not both", error_id="FirstAndLast")
    if property and expand_property:
        raise UsageError("use -Property or -ExpandProperty, not both", error_id="PropertyAndExpand")
    if first == 0:
        return
    seen: set[str] = set()
    kept: collections.deque[Any] = collections.deque(maxlen=last if last is not None else None)
    written = skipped = 0
    for obj in _selected(ctx, input_object or iter(()), property, expand_property):
        if unique:
            identity = _identity(obj)
            if identity in seen:
                continue
            seen.add(identity)
        if skipped < skip:
            skipped += 1
            continue
        if last is not None:
            kept.append(obj)
            continue
        yield obj
        written += 1
        if first is not None and written >= first:
            return  # no more reading: the producer is not asked for another object
    if last:
        yield from kept


def _selected(
    ctx: Context, objects: Iterator[Any], patterns: list[str] | None, expand: str | None
) -> Iterator[Any]:
    for obj in objects:
        if expand:
            found = get_property(obj, expand)
            if found is None:
                ctx.write_error(
                    NotFoundError(
                        f"property '{expand}' cannot be found on the input object",
                        target=expand,
                        error_id="ExpandPropertyNotFound",
                    )
                )
                continue
            yield from found if isinstance(found, list) else [found]
        elif patterns:
            selected = _project(obj, patterns)
            type_name = obj.get("TypeName") if isinstance(obj, dict) else None
            if isinstance(type_name, str) and "TypeName" not in selected:
                selected = {"TypeName": f"Selected.{type_name}", **selected}
            yield selected
        else:
            yield obj


# --- Sort-Object -----------------------------------------------------------------------------


def _sort_key(value: Any) -> tuple[int, Any]:
    """A key that orders any two values: nothing first, then numbers and booleans, then text
    (ignoring case), then lists and objects."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value.casefold())
    return (3, as_text(value))


def _default_sort_properties(obj: dict[str, Any]) -> list[str]:
    from cmdlets.host.schemas import display_properties

    type_name = obj.get("TypeName")
    shown = display_properties(type_name) if isinstance(type_name, str) else None
    return shown or [k for k in obj if k != "TypeName"]


@cmdlet("Sort-Object")
def sort_object(
    ctx: Context,
    property: Annotated[list[str] | None, PROPERTIES] = None,
    descending: Annotated[bool, Param(help="Largest first.")] = False,
    unique: Annotated[bool, Param(help="Keep one object of each sort key.")] = False,
    input_object: Annotated[Iterator[Any] | None, INPUT_OBJECT] = None,
) -> Iterator[Any]:
    """Sort objects by property values.

    Text sorts ignoring case, numbers as numbers, missing values first. Without -Property,
    objects sort by their default display properties, strings and numbers by themselves.
    Objects with equal keys keep their order. Sorting needs every object before it writes
    the first.

    Examples:
      Get-BackupJob | Sort-Object Name
      Get-Repository | Sort-Object FreeBytes -Descending
      Get-BackupJob | Sort-Object Repository -Unique
    """
    objects = list(input_object or ())

    def key(obj: Any) -> tuple[tuple[int, Any], ...]:
        if not isinstance(obj, dict):
            return (_sort_key(obj),)
        names = _property_names(obj, property) if property else _default_sort_properties(obj)
        return tuple(_sort_key(get_property(obj, n)) for n in names)

    keyed = sorted(((key(o), o) for o in objects), key=lambda pair: pair[0], reverse=descending)
    previous: object = object()
    for sort_key, obj in keyed:
        if unique and sort_key == previous:
            continue
        previous = sort_key
        yield obj


# --- Format-Table, Format-List ---------------------------------------------------------------


def _groups(objects: Iterable[Any]) -> Iterator[list[Any]]:
    """Consecutive objects of one TypeName together; each non-object (text) on its own."""
    group: list[Any] = []
    for obj in objects:
        same = bool(
            isinstance(obj, dict)
            and group
            and isinstance(group[0], dict)
            and obj.get("TypeName") == group[0].get("TypeName")
        )
        if group and not same:
            yield group
            group = []
        group.append(obj)
        if not isinstance(obj, dict):
            yield group
            group = []
    if group:
        yield group


def _format(objects: Iterable[Any], render: Callable[[list[dict[str, Any]]], str]) -> Iterator[str]:
    """Text lines: each group of objects rendered, a blank line between groups."""
    started = False
    after_text = False
    for group in _groups(objects):
        if not isinstance(group[0], dict):
            if started and not after_text:
                yield ""
            yield as_text(group[0])
            started = after_text = True
            continue
        if started:
            yield ""
        yield from render(group).split("\n")
        started, after_text = True, False


@cmdlet("Format-Table")
def format_table(
    ctx: Context,
    property: Annotated[list[str] | None, PROPERTIES] = None,
    input_object: Annotated[Iterator[Any] | None, INPUT_OBJECT] = None,
) -> Iterator[str]:
    """Format objects as a table and write its lines of text.

    The columns are the named properties (wildcards allowed), else the type's default
    display properties. The output is text: through a pipe between processes each line
    travels as a JSON string.

    Examples:
      Get-BackupJob | Format-Table
      Get-BackupJob | Format-Table -Property Name,Source,Enabled
      Get-Repository | Format-Table Name,*Bytes
    """
    from cmdlets.host import formatting

    width = ctx.env.terminal_width

    def render(group: list[dict[str, Any]]) -> str:
        if not property:
            return formatting.format_table(group, width)
        columns = _property_names(group[0], property)
        rows = [{c: get_property(o, c) for c in columns} for o in group]
        return formatting.format_table(rows, width, columns)

    yield from map(HostText, _format(input_object or (), render))


@cmdlet("Format-List")
def format_list(
    ctx: Context,
    property: Annotated[list[str] | None, PROPERTIES] = None,
    input_object: Annotated[Iterator[Any] | None, INPUT_OBJECT] = None,
) -> Iterator[str]:
    """Format objects as lists of 'Property : value' lines and write those lines of text.

    Every property is shown, or only the named ones (wildcards allowed).

    Examples:
      Get-BackupJob -Name 'Daily SQL' | Format-List
      Get-Repository | Format-List -Property Name,Kind,FreeBytes
    """
    from cmdlets.host import formatting

    def render(group: list[dict[str, Any]]) -> str:
        shown = [_project(o, property) for o in group] if property else group
        return formatting.format_list(shown)

    yield from map(HostText, _format(input_object or (), render))


# --- ConvertTo-Json, ConvertFrom-Json --------------------------------------------------------


@cmdlet("ConvertTo-Json")
def convert_to_json(
    ctx: Context,
    compress: Annotated[bool, Param(help="One line, no spaces.")] = False,
    as_array: Annotated[bool, Param(help="An array even for one object (or none).")] = False,
    input_object: Annotated[Iterator[Any] | None, INPUT_OBJECT] = None,
) -> Iterator[str]:
    """Convert objects to one JSON document, written as one string.

    One object becomes a JSON object, several become an array (always an array with
    -AsArray). Indented by two spaces unless -Compress is given. ConvertFrom-Json reads it
    back.

    Examples:
      Get-BackupJob | ConvertTo-Json
      Get-Repository -Name Main | ConvertTo-Json -Compress
      Get-BackupJob | ConvertTo-Json | ConvertFrom-Json
    """
    objects = list(input_object or ())
    if not objects and not as_array:
        return
    document: Any = objects[0] if len(objects) == 1 and not as_array else objects
    if compress:
        yield HostText(json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str))
    else:
        yield HostText(json.dumps(document, ensure_ascii=False, indent=2, default=str))


@cmdlet("ConvertFrom-Json")
def convert_from_json(
    ctx: Context,
    input_object: Annotated[
        str | None,
        Param(
            position=0,
            by_value={"String": ""},
            help="JSON text (or piped strings, each one JSON document).",
        ),
    ] = None,
) -> Iterator[Any]:
    """Convert JSON text to objects.

    Each string given or piped is one JSON document; an array yields its elements one by
    one. Text that is not JSON is an error (exit 2) naming the line and column, and the
    next string is still read.

    Examples:
      ConvertFrom-Json '{"Name": "Daily SQL"}' | Disable-BackupJob
      Get-BackupJob | ConvertTo-Json | ConvertFrom-Json
    """
    if input_object is None:
        return
    try:
        document = json.loads(input_object)
    except json.JSONDecodeError as exc:
        ctx.write_error(
            InvalidInputError(
                f"the text is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
                target=_excerpt(input_object),
                error_id="MalformedJson",
            )
        )
        return
    except RecursionError:
        ctx.write_error(InvalidInputError("the JSON text is nested too deeply"))
        return
    yield from document if isinstance(document, list) else [document]


def _excerpt(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
