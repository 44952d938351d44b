"""Authored guidance: the YAML format content teams write by hand (``docs/guidance-yaml.md``).

:func:`read_authored` turns such a document into a :class:`RecoveryGuidance`, listing every
problem it finds in one :class:`GuidanceInvalid`; :func:`write_authored` writes one back, so the
importer can hand a reviewer an editable copy of what it found in a leaflet.

Provenance: a document that carries ``source_text`` (the leaflet it was made from) keeps each
item's ``source`` span into that text. A document without one is its own source: each item's span
is the span of its ``text`` value in the YAML, so a reviewer can still go from an action to the
line that made it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar, cast

import yaml

from careplan_fhir.fhir import jsonio

from .model import (
    INSTRUCTION_KINDS,
    Condition,
    GoalSpec,
    Instruction,
    Parameter,
    Quantity,
    RecoveryGuidance,
    Section,
    SourceSpan,
    Supply,
    Timing,
    WarningSign,
)
from .timing import UNIT_WORDS

#: FHIR ``id`` (https://hl7.org/fhir/R4/datatypes.html#id): what action and goal ids must be.
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
#: Parameter names are FHIRPath identifiers: conditions refer to them as ``%name``.
PARAMETER_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

#: UCUM units of time allowed in FHIR Timing (the required value set ``units-of-time``).
TIME_UNITS = ("s", "min", "h", "d", "wk", "mo", "a")
TEMPERATURE_UNITS = ("Cel", "[degF]")
SCORE_UNIT = "{score}"
URGENCIES = ("stat", "urgent", "routine")
MEASURES = ("body-temperature", "pain-score")
COMPARATORS = (">", ">=")
PARAMETER_TYPES = ("Quantity", "string", "dateTime", "integer")
SOURCE_FORMATS = ("text", "markdown", "html")

_UNIT_ALIASES = {
    **{unit: unit for unit in (*TIME_UNITS, *TEMPERATURE_UNITS, SCORE_UNIT)},
    **UNIT_WORDS,  # the time words the leaflet parser reads ("hours", "wks", ...)
    "second": "s",
    "seconds": "s",
    "year": "a",
    "years": "a",
    "C": "Cel",
    "°C": "Cel",
    "celsius": "Cel",
    "F": "[degF]",
    "°F": "[degF]",
    "fahrenheit": "[degF]",
    "score": SCORE_UNIT,
}
_QUANTITY_TEXT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(\S.*?)?\s*$")

_TOP_FIELDS = (
    "title",
    "procedure",
    "source_format",
    "source_text",
    "sections",
    "parameters",
    "instructions",
    "warning_signs",
    "supplies",
    "goals",
)
_INSTRUCTION_FIELDS = ("id", "kind", "text", "section", "prohibition", "timing", "parameter")
_TIMING_FIELDS = (
    "text",
    "offset",
    "offset_max",
    "duration",
    "frequency",
    "frequency_max",
    "period",
    "period_max",
    "period_unit",
    "until",
)
_WARNING_FIELDS = ("id", "text", "urgency", "condition")
_CONDITION_FIELDS = ("measure", "comparator", "threshold", "parameter")
_PARAMETER_FIELDS = ("name", "type", "description", "required", "units", "default")


@dataclass(frozen=True)
class GuidanceIssue:
    """One problem in an authored document, located by a path such as ``instructions[2].kind``."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.path or 'document'}: {self.message}{where}"


class GuidanceInvalid(ValueError):
    """The authored guidance is not valid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[GuidanceIssue]) -> None:
        count = f"{len(issues)} problem{'s' if len(issues) != 1 else ''}"
        super().__init__(f"{count} in the guidance: " + "; ".join(str(i) for i in issues))
        self.issues = issues


T = TypeVar("T")


class _Reader:
    """Walks the constructed data and its YAML nodes side by side, collecting issues."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.issues: list[GuidanceIssue] = []
        self.source_text: str | None = None

    def fail(self, path: str, message: str, node: yaml.Node | None = None) -> None:
        line = node.start_mark.line + 1 if node is not None else None
        self.issues.append(GuidanceIssue(path, message, line))

    # -- shapes ------------------------------------------------------------------------------

    def mapping(
        self,
        value: Any,
        node: yaml.Node | None,
        path: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(path, "must be a mapping of fields", node)
            return None
        allowed = tuple(allowed)
        for key in value:
            if key not in allowed:
                self.fail(
                    _join(path, str(key)),
                    f"unknown field (allowed: {', '.join(allowed)})",
                    _child(node, key),
                )
        for key in required:
            if value.get(key) in (None, ""):
                self.fail(_join(path, key), "is required", node)
        return value

    def sequence(self, value: Any, node: yaml.Node | None, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "must be a list", node)
            return []
        return value

    def text_field(
        self, data: dict[str, Any], node: yaml.Node | None, path: str, key: str
    ) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(
                _join(path, key),
                f"must be text, not {_describe(value)} (quote it if YAML read it otherwise)",
                _child(node, key),
            )
            return None
        if not value.strip():
            self.fail(_join(path, key), "must not be empty", _child(node, key))
            return None
        return value.strip()

    def choice(
        self,
        data: dict[str, Any],
        node: yaml.Node | None,
        path: str,
        key: str,
        allowed: tuple[str, ...],
        default: str | None = None,
    ) -> str | None:
        value = data.get(key, default)
        if value is None:
            return None
        if value not in allowed:
            self.fail(
                _join(path, key),
                f"{value!r} is not one of: {', '.join(allowed)}",
                _child(node, key),
            )
            return None
        return cast(str, value)

    def boolean(
        self, data: dict[str, Any], node: yaml.Node | None, path: str, key: str, default: bool
    ) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.fail(_join(path, key), "must be true or false", _child(node, key))
            return default
        return value

    def integer(
        self, data: dict[str, Any], node: yaml.Node | None, path: str, key: str
    ) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.fail(_join(path, key), "must be a whole number of 1 or more", _child(node, key))
            return None
        return value

    def decimal(
        self, data: dict[str, Any], node: yaml.Node | None, path: str, key: str
    ) -> Decimal | None:
        value = data.get(key)
        if value is None:
            return None
        number = jsonio.to_decimal(value)
        if number is None or number <= 0:
            self.fail(_join(path, key), "must be a number above 0", _child(node, key))
            return None
        return number

    def quantity(
        self,
        value: Any,
        node: yaml.Node | None,
        path: str,
        units: tuple[str, ...],
    ) -> Quantity | None:
        """``"24 h"``, ``"38.0 °C"``, ``{value: 24, unit: h}`` (or a bare number for scores)."""
        number: Decimal | None = None
        unit: Any = None
        if isinstance(value, dict):
            self.mapping(value, node, path, ("value", "unit"), ("value",))
            number = jsonio.to_decimal(value.get("value"))
            unit = value.get("unit")
        elif isinstance(value, str):
            match = _QUANTITY_TEXT.match(value)
            if match:
                number = Decimal(match.group(1))
                unit = match.group(2)
        elif not isinstance(value, bool):
            number = jsonio.to_decimal(value)
        if number is None:
            self.fail(path, f"{value!r} is not a quantity such as '24 h' or '38.0 Cel'", node)
            return None
        if unit is None and units == (SCORE_UNIT,):
            unit = SCORE_UNIT
        canonical = _UNIT_ALIASES.get(str(unit).strip()) or _UNIT_ALIASES.get(
            str(unit).strip().lower()
        )
        if canonical not in units:
            self.fail(
                path, f"unit {unit!r} is not allowed here (use one of: {', '.join(units)})", node
            )
            return None
        return Quantity(number, canonical)

    def span(
        self,
        data: dict[str, Any] | None,
        node: yaml.Node | None,
        path: str,
        text: str | None,
        text_node: yaml.Node | None,
    ) -> SourceSpan:
        """The item's ``source``, or where its text is (in ``source_text`` or in the YAML)."""
        given = data.get("source") if data is not None else None
        if given is not None:
            return self.given_span(given, _child(node, "source"), _join(path, "source"))
        if self.source_text is None:
            anchor = text_node if text_node is not None else node
            if anchor is None:
                return SourceSpan(0, 0, 1)
            return SourceSpan(
                anchor.start_mark.index, anchor.end_mark.index, anchor.start_mark.line + 1
            )
        if text:
            start = self.source_text.find(text)
            if start >= 0:
                line = self.source_text.count("\n", 0, start) + 1
                return SourceSpan(start, start + len(text), line)
        self.fail(
            _join(path, "source"),
            "is required when source_text is given and the text does not occur in it"
            " (give start, end and line)",
            node,
        )
        return SourceSpan(0, 0, 1)

    def given_span(self, value: Any, node: yaml.Node | None, path: str) -> SourceSpan:
        data = self.mapping(value, node, path, ("start", "end", "line"), ("start", "end", "line"))
        if data is None:
            return SourceSpan(0, 0, 1)
        numbers = [data.get(key) for key in ("start", "end", "line")]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
            self.fail(path, "start, end and line must be whole numbers", node)
            return SourceSpan(0, 0, 1)
        start, end, line = cast(list[int], numbers)
        limit = len(self.source_text if self.source_text is not None else self.text)
        if not 0 <= start <= end <= limit or line < 1:
            self.fail(path, f"span {start}..{end} (line {line}) lies outside the source text", node)
        return SourceSpan(start, end, line)

    def items(
        self,
        data: dict[str, Any],
        node: yaml.Node | None,
        key: str,
        read_one: Callable[[Any, yaml.Node | None, str, int], T | None],
    ) -> list[T]:
        values = self.sequence(data.get(key), _child(node, key), key)
        list_node = _child(node, key)
        result = []
        for index, value in enumerate(values):
            item = read_one(value, _item(list_node, index), f"{key}[{index}]", index)
            if item is not None:
                result.append(item)
        return result

    def item_id(self, data: dict[str, Any], node: yaml.Node | None, path: str, default: str) -> str:
        value = data.get("id", default)
        if not isinstance(value, str) or not ID_PATTERN.match(value):
            self.fail(
                _join(path, "id"),
                f"{value!r} is not a valid id (letters, digits, '-' and '.', at most 64)",
                _child(node, "id"),
            )
            return default
        return value


def read_authored(text: str) -> RecoveryGuidance:
    """Read an authored guidance document; raise :class:`GuidanceInvalid` listing every problem."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        line = mark.line + 1 if mark is not None else None
        raise GuidanceInvalid([GuidanceIssue("", f"not valid YAML: {problem}", line)]) from None
    finally:
        loader.dispose()
    reader = _Reader(text)
    top = reader.mapping(data, node, "", _TOP_FIELDS, ("title",))
    if top is None:
        raise GuidanceInvalid(reader.issues)
    guidance = _read_guidance(reader, top, node)
    if reader.issues:
        raise GuidanceInvalid(reader.issues)
    return guidance


def _read_guidance(
    reader: _Reader, top: dict[str, Any], node: yaml.Node | None
) -> RecoveryGuidance:
    source_text = top.get("source_text")
    if source_text is not None and not isinstance(source_text, str):
        reader.fail("source_text", "must be text", _child(node, "source_text"))
        source_text = None
    reader.source_text = source_text
    source_format = "yaml"
    if source_text is not None:
        source_format = (
            reader.choice(top, node, "", "source_format", SOURCE_FORMATS, "text") or "text"
        )
    elif "source_format" in top:
        reader.fail("source_format", "only goes with source_text", _child(node, "source_format"))

    def read_section(value: Any, item_node: yaml.Node | None, path: str, _: int) -> Section | None:
        if isinstance(value, str) and value.strip():
            title = value.strip()
            return Section(title, reader.span(None, item_node, path, title, item_node))
        data = reader.mapping(value, item_node, path, ("title", "source"), ("title",))
        if data is None:
            return None
        heading = reader.text_field(data, item_node, path, "title")
        if heading is None:
            return None
        span = reader.span(data, item_node, path, heading, _child(item_node, "title"))
        return Section(heading, span)

    parameters = reader.items(top, node, "parameters", lambda *a: _read_parameter(reader, *a))
    names = {p.name for p in parameters}
    guidance = RecoveryGuidance(
        title=reader.text_field(top, node, "", "title") or "",
        source_text=source_text if source_text is not None else reader.text,
        source_format=source_format,  # type: ignore[arg-type]
        procedure=reader.text_field(top, node, "", "procedure"),
        sections=reader.items(top, node, "sections", read_section),
        parameters=parameters,
        instructions=reader.items(
            top, node, "instructions", lambda *a: _read_instruction(reader, names, *a)
        ),
        warning_signs=reader.items(
            top, node, "warning_signs", lambda *a: _read_warning_sign(reader, names, *a)
        ),
        supplies=reader.items(top, node, "supplies", lambda *a: _read_supply(reader, *a)),
    )
    _check_unique_ids(reader, guidance, node)
    action_ids = {
        *(i.id for i in guidance.instructions),
        *(w.id for w in guidance.warning_signs),
        *(s.id for s in guidance.supplies),
    }
    guidance.goals = reader.items(top, node, "goals", lambda *a: _read_goal(reader, action_ids, *a))
    goal_ids = [g.id for g in guidance.goals]
    for duplicate in sorted({g for g in goal_ids if goal_ids.count(g) > 1}):
        reader.fail("goals", f"goal id {duplicate!r} is used more than once", _child(node, "goals"))
    return guidance


def _read_parameter(
    reader: _Reader, value: Any, node: yaml.Node | None, path: str, _: int
) -> Parameter | None:
    data = reader.mapping(
        value, node, path, (*_PARAMETER_FIELDS, "source"), ("name", "type", "description")
    )
    if data is None:
        return None
    name = data.get("name")
    if not isinstance(name, str) or not PARAMETER_NAME_PATTERN.match(name):
        reader.fail(
            _join(path, "name"),
            f"{name!r} is not a parameter name (a letter or '_', then letters, digits or '_')",
            _child(node, "name"),
        )
        name = None
    kind = reader.choice(data, node, path, "type", PARAMETER_TYPES)
    description = reader.text_field(data, node, path, "description")
    units: list[str] = []
    for index, unit in enumerate(
        reader.sequence(data.get("units"), _child(node, "units"), _join(path, "units"))
    ):
        canonical = _UNIT_ALIASES.get(str(unit))
        if canonical is None:
            reader.fail(
                f"{_join(path, 'units')}[{index}]", f"unknown unit {unit!r}", _child(node, "units")
            )
        else:
            units.append(canonical)
    default = None
    if data.get("default") is not None:
        if kind != "Quantity":
            reader.fail(
                _join(path, "default"),
                "a default is only supported for Quantity parameters",
                _child(node, "default"),
            )
        else:
            allowed = tuple(units) or (*TEMPERATURE_UNITS, *TIME_UNITS, SCORE_UNIT)
            default = reader.quantity(
                data["default"], _child(node, "default"), _join(path, "default"), allowed
            )
    if units and kind not in (None, "Quantity"):
        reader.fail(_join(path, "units"), "units only go with type Quantity", _child(node, "units"))
    required = reader.boolean(data, node, path, "required", default is None)
    if name is None or kind is None or description is None:
        return None
    source = reader.span(data, node, path, None, None) if "source" in data else None
    return Parameter(
        name=name,
        type=kind,  # type: ignore[arg-type]
        description=description,
        required=required,
        source=source,
        units=tuple(units),
        default=default,
    )


def _read_instruction(
    reader: _Reader, parameters: set[str], value: Any, node: yaml.Node | None, path: str, index: int
) -> Instruction | None:
    data = reader.mapping(value, node, path, (*_INSTRUCTION_FIELDS, "source"), ("kind", "text"))
    if data is None:
        return None
    kind = reader.choice(data, node, path, "kind", INSTRUCTION_KINDS)
    text = reader.text_field(data, node, path, "text")
    parameter = reader.text_field(data, node, path, "parameter")
    if parameter is not None and parameter not in parameters:
        reader.fail(
            _join(path, "parameter"),
            f"no parameter named {parameter!r} is declared",
            _child(node, "parameter"),
        )
    timing = None
    if data.get("timing") is not None:
        timing = _read_timing(reader, data["timing"], _child(node, "timing"), _join(path, "timing"))
    instruction_id = reader.item_id(data, node, path, f"instruction-{index + 1}")
    span = reader.span(data, node, path, text, _child(node, "text"))
    if kind is None or text is None:
        return None
    return Instruction(
        id=instruction_id,
        kind=kind,  # type: ignore[arg-type]
        text=text,
        source=span,
        section=reader.text_field(data, node, path, "section"),
        prohibition=reader.boolean(data, node, path, "prohibition", False),
        timing=timing,
        parameter=parameter,
    )


def _read_timing(reader: _Reader, value: Any, node: yaml.Node | None, path: str) -> Timing | None:
    if isinstance(value, str):
        return Timing(text=value.strip()) if value.strip() else None
    issues_before = len(reader.issues)
    data = reader.mapping(value, node, path, _TIMING_FIELDS)
    if data is None:
        return None

    def time_quantity(key: str) -> Quantity | None:
        if data.get(key) is None:
            return None
        return reader.quantity(data[key], _child(node, key), _join(path, key), TIME_UNITS)

    timing = Timing(
        text="",
        offset=time_quantity("offset"),
        offset_max=time_quantity("offset_max"),
        duration=time_quantity("duration"),
        frequency=reader.integer(data, node, path, "frequency"),
        frequency_max=reader.integer(data, node, path, "frequency_max"),
        period=reader.decimal(data, node, path, "period"),
        period_max=reader.decimal(data, node, path, "period_max"),
        period_unit=reader.choice(data, node, path, "period_unit", TIME_UNITS),
        until=reader.text_field(data, node, path, "until"),
    )
    if timing.offset_max is not None and timing.offset is None:
        reader.fail(_join(path, "offset_max"), "needs offset", node)
    if timing.frequency_max is not None and (
        timing.frequency is None or timing.frequency_max < timing.frequency
    ):
        reader.fail(_join(path, "frequency_max"), "needs a frequency no larger than it", node)
    if timing.frequency is not None and timing.period_unit is None:
        reader.fail(_join(path, "period_unit"), "is required with frequency", node)
    if timing.frequency is None and (timing.period is not None or timing.period_unit is not None):
        reader.fail(_join(path, "frequency"), "is required with period and period_unit", node)
    if timing.period_max is not None and (
        timing.period is None or timing.period_max < timing.period
    ):
        reader.fail(_join(path, "period_max"), "needs a period no larger than it", node)
    if timing.frequency is not None and timing.period is None:
        timing.period = Decimal(1)
    timing.text = reader.text_field(data, node, path, "text") or describe_timing(timing)
    if not timing.text and len(reader.issues) == issues_before:
        reader.fail(path, "says nothing: give text or at least one timing field", node)
        return None
    return timing


def _read_warning_sign(
    reader: _Reader, parameters: set[str], value: Any, node: yaml.Node | None, path: str, index: int
) -> WarningSign | None:
    data = reader.mapping(value, node, path, (*_WARNING_FIELDS, "source"), ("text",))
    if data is None:
        return None
    text = reader.text_field(data, node, path, "text")
    urgency = reader.choice(data, node, path, "urgency", URGENCIES, "urgent")
    condition = None
    if data.get("condition") is not None:
        condition = _read_condition(
            reader,
            parameters,
            data["condition"],
            _child(node, "condition"),
            _join(path, "condition"),
        )
    sign_id = reader.item_id(data, node, path, f"warning-sign-{index + 1}")
    span = reader.span(data, node, path, text, _child(node, "text"))
    if text is None or urgency is None:
        return None
    return WarningSign(sign_id, text, urgency, span, condition)  # type: ignore[arg-type]


def _read_condition(
    reader: _Reader, parameters: set[str], value: Any, node: yaml.Node | None, path: str
) -> Condition | None:
    data = reader.mapping(value, node, path, _CONDITION_FIELDS, ("measure",))
    if data is None:
        return None
    measure = reader.choice(data, node, path, "measure", MEASURES)
    comparator = reader.choice(data, node, path, "comparator", COMPARATORS, ">=")
    parameter = reader.text_field(data, node, path, "parameter")
    if parameter is not None and parameter not in parameters:
        reader.fail(
            _join(path, "parameter"),
            f"no parameter named {parameter!r} is declared",
            _child(node, "parameter"),
        )
    threshold = None
    if data.get("threshold") is not None and measure is not None:
        units = TEMPERATURE_UNITS if measure == "body-temperature" else (SCORE_UNIT,)
        threshold = reader.quantity(
            data["threshold"], _child(node, "threshold"), _join(path, "threshold"), units
        )
    if (data.get("threshold") is None) == (parameter is None):
        reader.fail(path, "needs exactly one of threshold or parameter", node)
    if measure is None or comparator is None:
        return None
    return Condition(measure, comparator, threshold, parameter)  # type: ignore[arg-type]


def _read_supply(
    reader: _Reader, value: Any, node: yaml.Node | None, path: str, index: int
) -> Supply | None:
    default_id = f"supply-{index + 1}"
    if isinstance(value, str) and value.strip():
        return Supply(default_id, value.strip(), reader.span(None, node, path, value.strip(), node))
    data = reader.mapping(value, node, path, ("id", "text", "source"), ("text",))
    if data is None:
        return None
    text = reader.text_field(data, node, path, "text")
    supply_id = reader.item_id(data, node, path, default_id)
    span = reader.span(data, node, path, text, _child(node, "text"))
    return Supply(supply_id, text, span) if text is not None else None


def _read_goal(
    reader: _Reader, action_ids: set[str], value: Any, node: yaml.Node | None, path: str, index: int
) -> GoalSpec | None:
    data = reader.mapping(value, node, path, ("id", "text", "instructions"), ("text",))
    if data is None:
        return None
    text = reader.text_field(data, node, path, "text")
    goal_id = reader.item_id(data, node, path, f"goal-{index + 1}")
    served = []
    list_path = _join(path, "instructions")
    for position, item in enumerate(
        reader.sequence(data.get("instructions"), _child(node, "instructions"), list_path)
    ):
        if item not in action_ids:
            reader.fail(
                f"{list_path}[{position}]",
                f"no instruction, warning sign or supply has id {item!r}",
                _child(node, "instructions"),
            )
        else:
            served.append(str(item))
    return GoalSpec(goal_id, text, served) if text is not None else None


def _check_unique_ids(reader: _Reader, guidance: RecoveryGuidance, node: yaml.Node | None) -> None:
    seen: dict[str, str] = {}
    for key, items in (
        ("instructions", guidance.instructions),
        ("warning_signs", guidance.warning_signs),
        ("supplies", guidance.supplies),
    ):
        for item in items:
            if item.id in seen:
                reader.fail(
                    key, f"id {item.id!r} is already used in {seen[item.id]}", _child(node, key)
                )
            else:
                seen[item.id] = key


def describe_timing(timing: Timing) -> str:
    """Plain words for a timing's fields ("3 to 4 times a day, for 2 weeks")."""
    parts = []
    if timing.offset is not None:
        upper = f" to {_spoken(timing.offset_max)}" if timing.offset_max else ""
        parts.append(f"starting {_spoken(timing.offset)}{upper} after discharge")
    if timing.frequency is not None and timing.period_unit is not None:
        count = str(timing.frequency)
        if timing.frequency_max is not None:
            count += f" to {timing.frequency_max}"
        period = timing.period or Decimal(1)
        if timing.period_max is not None:
            upper = _spoken(Quantity(timing.period_max, timing.period_unit))
            every = f"every {_number(period)} to {upper}"
        elif period == 1:
            every = f"a {_UNIT_WORDS[timing.period_unit]}"
        else:
            every = f"every {_spoken(Quantity(period, timing.period_unit))}"
        parts.append(f"{'once' if count == '1' else count + ' times'} {every}")
    if timing.duration is not None:
        parts.append(f"for {_spoken(timing.duration)}")
    if timing.until is not None:
        parts.append(f"until {timing.until}")
    return ", ".join(parts)


_UNIT_WORDS = {
    "s": "second",
    "min": "minute",
    "h": "hour",
    "d": "day",
    "wk": "week",
    "mo": "month",
    "a": "year",
}


def _spoken(quantity: Quantity | None) -> str:
    if quantity is None:
        return ""
    word = _UNIT_WORDS.get(quantity.unit)
    if word is None:
        return _quantity_text(quantity)
    return f"{_number(quantity.value)} {word}{'' if quantity.value == 1 else 's'}"


# -- writing ----------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Safe YAML with multi-line text as literal blocks and decimals as plain numbers."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _represent_decimal(dumper: yaml.SafeDumper, value: Decimal) -> yaml.ScalarNode:
    if value == value.to_integral_value():
        return dumper.represent_scalar("tag:yaml.org,2002:int", str(int(value)))
    return dumper.represent_scalar("tag:yaml.org,2002:float", format(value, "f"))


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(Decimal, _represent_decimal)


def write_authored(guidance: RecoveryGuidance) -> str:
    """The guidance as an authored YAML document that :func:`read_authored` reads back.

    A guidance read from a leaflet keeps the leaflet as ``source_text`` and every span, so
    ``read_authored(write_authored(g)) == g``. A guidance that came from YAML is written
    without ``source_text``: the new document is its own source, and spans point into it.
    """
    keep_source = guidance.source_format != "yaml"
    document: dict[str, Any] = {"title": guidance.title}
    if guidance.procedure:
        document["procedure"] = guidance.procedure

    def with_source(entry: dict[str, Any], span: SourceSpan | None) -> dict[str, Any]:
        if keep_source and span is not None:
            entry["source"] = {"start": span.start, "end": span.end, "line": span.line}
        return entry

    if guidance.sections:
        document["sections"] = [
            with_source({"title": s.title}, s.source) if keep_source else s.title
            for s in guidance.sections
        ]
    if guidance.parameters:
        document["parameters"] = [
            with_source(_parameter_entry(p), p.source) for p in guidance.parameters
        ]
    if guidance.instructions:
        document["instructions"] = [
            with_source(_instruction_entry(i), i.source) for i in guidance.instructions
        ]
    if guidance.warning_signs:
        document["warning_signs"] = [
            with_source(_warning_entry(w), w.source) for w in guidance.warning_signs
        ]
    if guidance.supplies:
        document["supplies"] = [
            with_source({"id": s.id, "text": s.text}, s.source) for s in guidance.supplies
        ]
    if guidance.goals:
        document["goals"] = [
            {
                "id": g.id,
                "text": g.text,
                **({"instructions": list(g.instruction_ids)} if g.instruction_ids else {}),
            }
            for g in guidance.goals
        ]
    if keep_source:
        document["source_format"] = guidance.source_format
        document["source_text"] = guidance.source_text
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def _parameter_entry(parameter: Parameter) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": parameter.name,
        "type": parameter.type,
        "description": parameter.description,
        "required": parameter.required,
    }
    if parameter.units:
        entry["units"] = list(parameter.units)
    if parameter.default is not None:
        entry["default"] = _quantity_text(parameter.default)
    return entry


def _instruction_entry(instruction: Instruction) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": instruction.id,
        "kind": instruction.kind,
        "text": instruction.text,
    }
    if instruction.section:
        entry["section"] = instruction.section
    if instruction.prohibition:
        entry["prohibition"] = True
    if instruction.timing is not None:
        entry["timing"] = _timing_entry(instruction.timing)
    if instruction.parameter:
        entry["parameter"] = instruction.parameter
    return entry


def _timing_entry(timing: Timing) -> dict[str, Any]:
    entry: dict[str, Any] = {"text": timing.text}
    for key in ("offset", "offset_max", "duration"):
        value = getattr(timing, key)
        if value is not None:
            entry[key] = _quantity_text(value)
    for key in ("frequency", "frequency_max", "period", "period_max", "period_unit", "until"):
        value = getattr(timing, key)
        if value is not None:
            entry[key] = value
    return entry


def _warning_entry(sign: WarningSign) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": sign.id, "text": sign.text, "urgency": sign.urgency}
    if sign.condition is not None:
        condition: dict[str, Any] = {
            "measure": sign.condition.measure,
            "comparator": sign.condition.comparator,
        }
        if sign.condition.threshold is not None:
            condition["threshold"] = _quantity_text(sign.condition.threshold)
        if sign.condition.parameter is not None:
            condition["parameter"] = sign.condition.parameter
        entry["condition"] = condition
    return entry


# -- helpers ----------------------------------------------------------------------------------


def _quantity_text(quantity: Quantity | None) -> str:
    if quantity is None:
        return ""
    return f"{_number(quantity.value)} {quantity.unit}"


def _number(value: Decimal) -> str:
    return format(value, "f")


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _child(node: yaml.Node | None, key: Any) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == key:
                return cast(yaml.Node, value_node)
    return None


def _item(node: yaml.Node | None, index: int) -> yaml.Node | None:
    if isinstance(node, yaml.SequenceNode) and index < len(node.value):
        return cast(yaml.Node, node.value[index])
    return node
