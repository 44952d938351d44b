"""``PlanDefinition/$apply`` (https://hl7.org/fhir/R4/plandefinition-operation-apply.html), pure.

:func:`apply_plan_definition` turns an active recovery template (built as described in
``docs/guidance-fhir.md``), the ActivityDefinitions of its prohibitions and an
:class:`~careplan_fhir.apply.model.ApplyContext` into one patient's CarePlan, Goals, Tasks and
education Communication. Nothing is read from a clock, a database or the environment: the same
inputs give the same resources, byte for byte. The shapes are described in ``docs/apply.md``:

- instruction actions the patient carries out, and supplies → a ``Task`` each, referenced from
  ``CarePlan.activity.reference``; a repeating instruction keeps its ``Timing`` in the
  ``activity-timing`` extension (on the activity and on the Task), since ``Task`` has no timing
  element and an activity may not have both ``reference`` and ``detail`` (invariant cpl-3);
- prohibitions (``definitionCanonical`` → ActivityDefinition with ``doNotPerform``) → inline
  ``activity.detail`` with ``doNotPerform: true`` and a ``scheduledPeriod``;
- warning signs → inline ``activity.detail`` (status not-started) whose description names the
  threshold bound at apply time, with the ``warning-sign`` extension (priority and the condition
  with the parameter replaced by its value) for the escalation engine;
- every activity and Task carries the template action's id (``template-action`` extension), so
  plans applied from two versions of a template can be compared action by action.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import DateFormatError, parse_range
from careplan_fhir.fhir.profiles import meta_profiles
from careplan_fhir.guidance.fhir_builder import (
    DISCHARGE_ACTION_ID,
    INSTRUCTION_KIND_SYSTEM,
    LIFTED_WHEN_URL,
    PLAN_PARAMETER_URL,
    PROJECT,
    SNOMED,
    UCUM,
    USES_PARAMETER_URL,
)

from .model import ApplyContext, ApplyError, ApplyIssue, ApplyResult

#: On ``CarePlan.activity`` and ``Task``: the id of the template action it comes from.
TEMPLATE_ACTION_URL = f"{PROJECT}/StructureDefinition/template-action"
#: On ``CarePlan.activity`` and ``Task``: the applied ``Timing`` of a repeating instruction.
ACTIVITY_TIMING_URL = f"{PROJECT}/StructureDefinition/activity-timing"
#: On ``CarePlan``: one per template parameter, with the value bound at apply time.
BOUND_PARAMETER_URL = f"{PROJECT}/StructureDefinition/bound-parameter"
#: On a warning sign's ``activity.detail``: ``priority`` and the bound ``condition``.
WARNING_SIGN_URL = f"{PROJECT}/StructureDefinition/warning-sign"

US_CORE_CAREPLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"

#: CarePlan.category: US Core's required slice, and the SNOMED CT root of the FHIR care-plan
#: category value set. Both VERIFIED in shared/reference/clinical-codes.md section 4
#: (hl7.org/fhir/us/core/STU7/CodeSystem-careplan-category; hl7.org/fhir/R5/valueset-care-plan-
#: category: is-a 734163000). The more specific "Discharge care plan" is only VERIFIED-2.
CARE_PLAN_CATEGORIES: tuple[dict[str, Any], ...] = (
    {
        "coding": [
            {
                "system": US_CORE_CAREPLAN_CATEGORY,
                "code": "assess-plan",
                "display": "Assessment and Plan of Treatment",
            }
        ]
    },
    {"coding": [{"system": SNOMED, "code": "734163000", "display": "Care plan (record artifact)"}]},
)

TEMPERATURE_UNITS = ("Cel", "[degF]")
#: Plausible fever thresholds, in °C: a plausibility check on the clinician's input, not a
#: default (a value outside is refused, never replaced).
FEVER_RANGE_CELSIUS = (Decimal("35"), Decimal("43"))

_SECONDS = {
    "s": 1,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "wk": 7 * 86400,
    "mo": 30 * 86400,
    "a": 365 * 86400,
}
#: Durations in these units are "each time" ("for 15 minutes at a time"), not how long an
#: instruction lasts: they go to ``Timing.repeat.duration``, never to a period's end.
_OCCURRENCE_UNITS = frozenset({"s", "min"})
_UNIT_WORDS = {
    "s": ("second", "seconds"),
    "min": ("minute", "minutes"),
    "h": ("hour", "hours"),
    "d": ("day", "days"),
    "wk": ("week", "weeks"),
    "mo": ("month", "months"),
    "a": ("year", "years"),
}
_UNIT_DISPLAY = {
    **{code: words[1] for code, words in _UNIT_WORDS.items()},
    "Cel": "°C",
    "[degF]": "°F",
    "{score}": "score",
}
#: Units as people and clients write them → UCUM code.
_UNIT_ALIASES = {
    "°C": "Cel",
    "℃": "Cel",
    "°F": "[degF]",
    "℉": "[degF]",
    "degF": "[degF]",
    **{word: code for code, words in _UNIT_WORDS.items() for word in words},
}
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
#: Who to contact, by the warning sign's priority (request-priority codes).
_CALL = {
    "stat": "Get emergency help right away",
    "asap": "Call your care team right away",
    "urgent": "Call your care team",
    "routine": "Tell your care team",
}
_MEASURE_PHRASE = {"temperature": "your temperature is", "pain_score": "your pain is"}
_CONDITION = re.compile(
    r"^\s*%(?P<var>[A-Za-z_]\w*)\s*(?P<cmp>>=|<=|>|<)\s*"
    r"(?:%(?P<param>[A-Za-z_]\w*)|(?P<num>-?\d+(?:\.\d+)?)(?:\s*'(?P<unit>[^']+)')?)\s*$"
)


# -- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterSpec:
    """A clinician parameter declared by the template (``plan-parameter`` extension)."""

    name: str
    type: str
    required: bool
    description: str = ""
    units: tuple[str, ...] = ()
    default: dict[str, Any] | None = None


def parameter_specs(plan_definition: Mapping[str, Any]) -> dict[str, ParameterSpec]:
    """The parameters a PlanDefinition declares, by name, in declaration order."""
    specs: dict[str, ParameterSpec] = {}
    for extension in plan_definition.get("extension", []):
        if extension.get("url") != PLAN_PARAMETER_URL:
            continue
        name, kind, required, description = "", "string", False, ""
        units: list[str] = []
        default = None
        for part in extension.get("extension", []):
            url = part.get("url")
            if url == "name":
                name = str(part.get("valueCode", ""))
            elif url == "type":
                kind = str(part.get("valueCode", "string"))
            elif url == "required":
                required = bool(part.get("valueBoolean", False))
            elif url == "description":
                description = str(part.get("valueString", ""))
            elif url == "unit":
                units.append(str(part.get("valueCoding", {}).get("code", "")))
            elif url == "default":
                default = part.get("valueQuantity")
        if name:
            specs[name] = ParameterSpec(name, kind, required, description, tuple(units), default)
    return specs


@dataclass(frozen=True)
class BoundParameter:
    """A parameter's value for this plan; ``defaulted`` when the template's default applies."""

    spec: ParameterSpec
    value: Any
    defaulted: bool


def bind_parameters(
    specs: Mapping[str, ParameterSpec], supplied: Mapping[str, Any]
) -> tuple[dict[str, BoundParameter], list[ApplyIssue]]:
    """Check the clinician's values against the declarations; defaults fill optional gaps."""
    issues: list[ApplyIssue] = []
    bound: dict[str, BoundParameter] = {}
    for name in supplied:
        if name not in specs:
            known = ", ".join(specs) or "none"
            issues.append(
                ApplyIssue(name, f"is not a parameter of this template (parameters: {known})")
            )
    for name, spec in specs.items():
        if name not in supplied or supplied[name] is None:
            if spec.default is not None:
                bound[name] = BoundParameter(spec, _normal_quantity(spec.default), True)
            elif spec.required:
                issues.append(ApplyIssue(name, f"is required: {spec.description}".rstrip(": ")))
            continue
        value = _check_value(spec, supplied[name], issues)
        if value is not None:
            bound[name] = BoundParameter(spec, value, False)
    return bound, issues


def _check_value(spec: ParameterSpec, value: Any, issues: list[ApplyIssue]) -> Any:
    name = spec.name
    if spec.type == "Quantity":
        return _check_quantity(spec, value, issues)
    if spec.type == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            issues.append(ApplyIssue(name, f"must be an integer, not {value!r}"))
            return None
        return value
    if spec.type == "dateTime":
        if not isinstance(value, str):
            issues.append(ApplyIssue(name, f"must be a dateTime, not {value!r}"))
            return None
        try:
            parse_range(value)
        except DateFormatError:
            issues.append(ApplyIssue(name, f"{value!r} is not a FHIR dateTime"))
            return None
        return value
    if not isinstance(value, str) or not value.strip():
        issues.append(ApplyIssue(name, f"must be a non-empty string, not {value!r}"))
        return None
    return value


def _check_quantity(spec: ParameterSpec, value: Any, issues: list[ApplyIssue]) -> Any:
    name = spec.name
    allowed = ", ".join(spec.units) if spec.units else "a UCUM unit"
    if not isinstance(value, Mapping):
        issues.append(ApplyIssue(name, f"must be a Quantity (value and {allowed}), not {value!r}"))
        return None
    number = jsonio.to_decimal(value.get("value"))
    if number is None:
        issues.append(ApplyIssue(name, f"needs a numeric value, not {value.get('value')!r}"))
        return None
    system = value.get("system")
    if system is not None and system != UCUM:
        issues.append(ApplyIssue(name, f"unit system must be UCUM ({UCUM}), not {system!r}"))
        return None
    raw_unit = value.get("code") or value.get("unit")
    code = _UNIT_ALIASES.get(str(raw_unit), raw_unit) if raw_unit else None
    if not code:
        issues.append(ApplyIssue(name, f"needs a unit: {allowed}"))
        return None
    if spec.units and code not in spec.units:
        issues.append(ApplyIssue(name, f"unit {raw_unit!r} is not allowed; use {allowed}"))
        return None
    if code in TEMPERATURE_UNITS:
        celsius = number if code == "Cel" else (number - 32) * 5 / 9
        low, high = FEVER_RANGE_CELSIUS
        if not low <= celsius <= high:
            issues.append(
                ApplyIssue(
                    name,
                    f"{_number(number)} {_UNIT_DISPLAY[code]} is not a plausible body temperature"
                    f" threshold ({_number(low)} to {_number(high)} °C)",
                )
            )
            return None
    elif code in _SECONDS and number <= 0:
        issues.append(ApplyIssue(name, f"must be a positive duration, not {_number(number)}"))
        return None
    return {"value": number, "unit": _UNIT_DISPLAY.get(code, code), "system": UCUM, "code": code}


_PARAMETER_TEXT = re.compile(r"^\s*(?P<value>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>\S.*?)?\s*$")


def parse_parameter(text: str, kind: str = "Quantity") -> Any:
    """A clinician parameter written as text (CLI, GET): ``38.0Cel``, ``100.4[degF]``, ``24 h``.

    A Quantity becomes ``{"value": Decimal, "code": unit}`` (checked later, like any value); an
    integer becomes an ``int``; other types, and text that does not parse, stay text.
    """
    if kind == "Quantity":
        match = _PARAMETER_TEXT.match(text)
        if match is None:
            return text
        quantity: dict[str, Any] = {"value": Decimal(match["value"])}
        if match["unit"]:
            quantity["code"] = match["unit"]
        return quantity
    if kind == "integer":
        try:
            return int(text.strip())
        except ValueError:
            return text
    return text


def _normal_quantity(quantity: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(quantity)
    number = jsonio.to_decimal(quantity.get("value"))
    if number is not None:
        result["value"] = number
    return result


# -- rendering -------------------------------------------------------------------------------


def _number(value: Decimal) -> str:
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".") if value == value.to_integral_value() else text
    return text


def _one_decimal(value: Decimal) -> str:
    return format(value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP), "f")


def temperature_text(quantity: Mapping[str, Any]) -> str:
    """``38.0 °C (100.4 °F)``: the value as given, then converted, exact to one decimal."""
    value = Decimal(str(quantity["value"]))
    exponent = value.as_tuple().exponent
    decimals = isinstance(exponent, int) and exponent < 0
    given = format(value, "f") if decimals else _one_decimal(value)
    if quantity.get("code") == "[degF]":
        return f"{given} °F ({_one_decimal((value - 32) * 5 / 9)} °C)"
    return f"{given} °C ({_one_decimal(value * 9 / 5 + 32)} °F)"


def quantity_text(quantity: Mapping[str, Any]) -> str:
    """A quantity in words: ``24 hours``, ``1 week``, ``38.0 °C (100.4 °F)``, ``8 out of 10``."""
    code = quantity.get("code")
    if code in TEMPERATURE_UNITS:
        return temperature_text(quantity)
    value = Decimal(str(quantity["value"]))
    if code == "{score}":
        return f"{_number(value)} out of 10"
    if code in _UNIT_WORDS:
        singular, plural = _UNIT_WORDS[code]
        return f"{_number(value)} {singular if value == 1 else plural}"
    unit = quantity.get("unit") or code or ""
    return f"{_number(value)} {unit}".strip()


def date_text(moment: datetime) -> str:
    """``3 March 2026``: a date a patient reads without a locale."""
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}"


def _datetime(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def add_duration(moment: datetime, quantity: Mapping[str, Any]) -> datetime:
    """``moment`` plus a UCUM time quantity; whole months and years follow the calendar."""
    code = str(quantity.get("code"))
    value = Decimal(str(quantity["value"]))
    if code in ("mo", "a") and value == value.to_integral_value():
        months = int(value) * (12 if code == "a" else 1)
        index = moment.month - 1 + months
        year, month = moment.year + index // 12, index % 12 + 1
        day = moment.day
        while True:
            try:
                return moment.replace(year=year, month=month, day=day)
            except ValueError:
                day -= 1
    if code not in _SECONDS:
        raise ValueError(f"{code!r} is not a UCUM unit of time")
    return moment + timedelta(seconds=float(value * _SECONDS[code]))


# -- actions ---------------------------------------------------------------------------------


@dataclass
class _Schedule:
    """When an action applies, in dates from the plan's start."""

    start: datetime
    offset: bool = False
    end: datetime | None = None
    timing: dict[str, Any] | None = None
    text: str = ""


@dataclass
class _Action:
    action: dict[str, Any]
    kind: str
    description: str
    schedule: _Schedule
    codings: list[dict[str, Any]] = field(default_factory=list)
    definition: dict[str, Any] | None = None
    canonical: str | None = None

    @property
    def id(self) -> str:
        return str(self.action.get("id", ""))

    @property
    def title(self) -> str:
        return str(self.action.get("title") or self.description)


def _flatten(actions: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for action in actions:
        yield action
        yield from _flatten(action.get("action", []))


def _kind(action: Mapping[str, Any]) -> str:
    for concept in action.get("code", []):
        for coding in concept.get("coding", []):
            if coding.get("system") == INSTRUCTION_KIND_SYSTEM:
                return str(coding.get("code"))
    return "other"


def _codings(action: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(c) for concept in action.get("code", []) for c in concept.get("coding", [])]


def _concept(codings: list[dict[str, Any]], text: str) -> dict[str, Any]:
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    concept["text"] = text
    return concept


def _extension_value(element: Mapping[str, Any], url: str, key: str) -> Any:
    for extension in element.get("extension", []):
        if extension.get("url") == url:
            return extension.get(key)
    return None


def _same_quantity(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    if a is None or b is None:
        return False
    return bool(
        jsonio.to_decimal(a.get("value")) == jsonio.to_decimal(b.get("value"))
        and a.get("code") == b.get("code")
    )


class _Applier:
    def __init__(
        self,
        plan: dict[str, Any],
        definitions: Mapping[str, dict[str, Any]],
        context: ApplyContext,
        bound: dict[str, BoundParameter],
    ) -> None:
        self.plan = plan
        self.definitions = definitions
        self.context = context
        self.bound = bound
        self.start = _aware(context.start)
        self.now = _datetime(_aware(context.now))
        self.issues: list[ApplyIssue] = []

    # -- timing ------------------------------------------------------------------------------

    def schedule(self, action: dict[str, Any]) -> tuple[_Schedule, str]:
        """The action's dates, and its description with a bound timing parameter in words."""
        description = str(action.get("description") or action.get("title") or "")
        timing = action.get("timingTiming")
        timing_text = str((timing or {}).get("code", {}).get("text", ""))
        offset: dict[str, Any] | None = None
        for related in action.get("relatedAction", []):
            if related.get("actionId") == DISCHARGE_ACTION_ID and related.get("relationship") in (
                "after-start",
                "after",
                "after-end",
            ):
                offset = related.get("offsetDuration") or related.get("offsetRange", {}).get("low")
        duration = action.get("timingDuration")
        bounds = (timing or {}).get("repeat", {}).get("boundsDuration")

        name = _extension_value(action, USES_PARAMETER_URL, "valueCode")
        parameter = self.bound.get(name) if name else None
        if parameter is not None and isinstance(parameter.value, dict):
            value = parameter.value
            default = parameter.spec.default
            if _same_quantity(offset, default) or (
                not _same_quantity(duration, default)
                and not _same_quantity(bounds, default)
                and str(name).endswith("_after")
            ):
                offset = value
            elif duration is not None:
                duration = value
            elif bounds is not None:
                bounds = value
            else:
                offset = value
            if (
                not parameter.defaulted
                and default is not None
                and not _same_quantity(value, default)
            ):
                description = _replace_quantity(description, default, value)
                timing_text = _replace_quantity(timing_text, default, value, note=False)

        try:
            begin = add_duration(self.start, offset) if offset is not None else self.start
            schedule = _Schedule(begin, offset is not None, text=timing_text)
            each: dict[str, Any] | None = None
            for span in (duration, bounds):
                if span is None:
                    continue
                if span.get("code") in _OCCURRENCE_UNITS:
                    each = span
                else:
                    schedule.end = add_duration(begin, span)
        except ValueError as exc:
            self.issues.append(ApplyIssue(f"action {action.get('id')}", str(exc)))
            return _Schedule(self.start), description
        repeat = dict((timing or {}).get("repeat", {}))
        if repeat or each is not None:
            repeat.pop("boundsDuration", None)
            applied: dict[str, Any] = {}
            if each is not None:
                repeat["duration"] = jsonio.to_decimal(each.get("value"))
                repeat["durationUnit"] = each.get("code")
            bounds_period = {"start": _datetime(begin)}
            if schedule.end is not None:
                bounds_period["end"] = _datetime(schedule.end)
            applied["repeat"] = {"boundsPeriod": bounds_period, **repeat}
            if timing_text:
                applied["code"] = {"text": timing_text}
            schedule.timing = applied
        return schedule, description

    # -- actions -----------------------------------------------------------------------------

    def actions(self) -> list[_Action]:
        found: list[_Action] = []
        for action in _flatten(self.plan.get("action", [])):
            if action.get("id") == DISCHARGE_ACTION_ID and action.get("trigger"):
                continue  # the anchor that offsets count from, not something to do
            schedule, description = self.schedule(action)
            item = _Action(action, _kind(action), description, schedule, _codings(action))
            canonical = action.get("definitionCanonical")
            if canonical:
                definition = self.definitions.get(canonical) or self.definitions.get(
                    canonical.split("|")[0]
                )
                if definition is None:
                    self.issues.append(
                        ApplyIssue(
                            f"action {action.get('id')}",
                            f"its ActivityDefinition {canonical} is not available",
                        )
                    )
                    continue
                item.definition = definition
                item.canonical = canonical
            found.append(item)
        return found

    def condition(self, action: Mapping[str, Any]) -> tuple[str | None, str | None, bool]:
        """The warning sign's condition as a clause and as FHIRPath with values bound.

        The third value tells whether the threshold is a clinician parameter.
        """
        for condition in action.get("condition", []):
            expression = condition.get("expression", {}).get("expression")
            match = _CONDITION.match(expression or "")
            if match is None:
                continue
            variable, comparator = match["var"], match["cmp"]
            if match["param"]:
                bound = self.bound.get(match["param"])
                if bound is None:
                    if match["param"] not in parameter_specs(self.plan):
                        self.issues.append(
                            ApplyIssue(
                                match["param"],
                                f"is used by action {action.get('id')} but not declared",
                            )
                        )
                    return None, None, True
                quantity = bound.value
                literal = _fhirpath_quantity(quantity)
                bound_expression = expression.replace(f"%{match['param']}", literal)
            else:
                number = Decimal(match["num"])
                quantity = {"value": number, "code": match["unit"] or "{score}"}
                bound_expression = expression
            phrase = _MEASURE_PHRASE.get(variable, f"your {variable.replace('_', ' ')} is")
            words = quantity_text(quantity)
            threshold = {
                ">=": f"{words} or higher",
                ">": f"above {words}",
                "<=": f"{words} or lower",
                "<": f"below {words}",
            }[comparator]
            return f"if {phrase} {threshold}", bound_expression, bool(match["param"])
        return None, None, False


def _fhirpath_quantity(quantity: Mapping[str, Any]) -> str:
    value = format(Decimal(str(quantity["value"])), "f")
    code = quantity.get("code")
    return value if code in (None, "1", "{score}") else f"{value} '{code}'"


def _replace_quantity(
    text: str, old: Mapping[str, Any], new: Mapping[str, Any], *, note: bool = True
) -> str:
    """Put the clinician's value where the template's default is written."""
    before, after = quantity_text(old), quantity_text(new)
    if before in text:
        return text.replace(before, after, 1)
    if not note or not text:
        return text
    return f"{text.rstrip()} (Your care team set: {after}.)"


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else f"{text}."


# -- the engine ------------------------------------------------------------------------------


def apply_plan_definition(
    plan_definition: dict[str, Any],
    activity_definitions: Mapping[str, dict[str, Any]],
    context: ApplyContext,
) -> ApplyResult:
    """Apply an active template for one patient; :class:`ApplyError` names every problem.

    ``activity_definitions`` maps canonical urls (with and without ``|version``) to the
    ActivityDefinitions the template's prohibitions point to.
    """
    issues: list[ApplyIssue] = []
    status = plan_definition.get("status")
    if status != "active":
        issues.append(
            ApplyIssue("status", f"the template is {status}; only an active template is applied")
        )
    subject = context.subject
    if not subject.startswith("Patient/") or len(subject) <= len("Patient/"):
        issues.append(ApplyIssue("subject", f"must be a Patient reference, not {subject!r}"))
    specs = parameter_specs(plan_definition)
    bound, parameter_issues = bind_parameters(specs, context.parameters)
    issues += parameter_issues
    if issues:
        raise ApplyError(issues)
    applier = _Applier(plan_definition, activity_definitions, context, bound)
    actions = applier.actions()
    if applier.issues:
        raise ApplyError(applier.issues)
    return _Output(plan_definition, context, applier, actions).build()


def _declare_profiles(resource: dict[str, Any]) -> None:
    """Declare in ``meta.profile`` the profiles (ours, and the US Core one they restate) the
    resource is built to meet; docs/profiles.md says what each requires."""
    profiles = meta_profiles(resource["resourceType"])
    if profiles:
        meta = dict(resource.get("meta") or {})
        meta["profile"] = profiles
        resource["meta"] = meta


class _Output:
    def __init__(
        self,
        plan: dict[str, Any],
        context: ApplyContext,
        applier: _Applier,
        actions: list[_Action],
    ) -> None:
        self.plan = plan
        self.context = context
        self.applier = applier
        self.actions = actions
        self.subject = {"reference": context.subject}
        self.care_plan_id = context.new_id("CarePlan")
        self.care_plan_ref = {"reference": f"CarePlan/{self.care_plan_id}"}
        self.goal_ids: dict[str, str] = {}
        self.sections: list[tuple[str, list[str]]] = []
        self.warnings: list[tuple[str, str]] = []

    def build(self) -> ApplyResult:
        goals = [self.goal(g) for g in self.plan.get("goal", [])]
        tasks: list[dict[str, Any]] = []
        activities: list[dict[str, Any]] = []
        todo: list[str] = []
        avoid: list[str] = []
        get_help: list[str] = []
        have: list[str] = []
        for item in self.actions:
            if item.kind == "warning-sign":
                activity, text = self.warning(item)
                get_help.append(text)
            elif item.definition is not None and item.definition.get("doNotPerform"):
                activity, text = self.prohibition(item)
                avoid.append(text)
            else:
                task = self.task(item)
                tasks.append(task)
                activity = {
                    "extension": self.activity_extensions(item),
                    "reference": {"reference": f"Task/{task['id']}", "display": item.title},
                }
                text = task["description"] + self.when(item.schedule)
                if item.kind == "supplies":
                    have.append(item.description)
                else:
                    todo.append(text)
            activities.append(activity)
        goal_texts = [g["description"].get("text", "") for g in goals]
        self.sections = [
            ("Your goals", goal_texts),
            ("What to do", todo),
            ("What not to do", avoid),
            ("When to get help", get_help),
            ("What to have at home", have),
        ]
        care_plan = self.care_plan(goals, activities)
        communication = self.communication()
        result = ApplyResult(care_plan, goals, tasks, [communication])
        for resource in result.resources():
            _declare_profiles(resource)
        return result

    # -- pieces ------------------------------------------------------------------------------

    def when(self, schedule: _Schedule) -> str:
        parts = []
        if schedule.offset:
            parts.append(f"from {date_text(schedule.start)}")
        if schedule.end is not None:
            parts.append(f"until {date_text(schedule.end)}")
        return f" ({' '.join(parts)})" if parts else ""

    def activity_extensions(self, item: _Action) -> list[dict[str, Any]]:
        extensions: list[dict[str, Any]] = [{"url": TEMPLATE_ACTION_URL, "valueString": item.id}]
        if item.schedule.timing is not None:
            extensions.append({"url": ACTIVITY_TIMING_URL, "valueTiming": item.schedule.timing})
        return extensions

    def goal_refs(self, item: _Action) -> list[dict[str, Any]]:
        return [
            {"reference": f"Goal/{self.goal_ids[g]}"}
            for g in item.action.get("goalId", [])
            if g in self.goal_ids
        ]

    def goal(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        goal_id = self.context.new_id("Goal")
        if spec.get("id"):
            self.goal_ids[str(spec["id"])] = goal_id
        goal: dict[str, Any] = {"resourceType": "Goal", "id": goal_id}
        goal["extension"] = [{"url": TEMPLATE_ACTION_URL, "valueString": str(spec.get("id", ""))}]
        goal["lifecycleStatus"] = "active"
        if spec.get("category"):
            goal["category"] = spec["category"]
        if spec.get("priority"):
            goal["priority"] = spec["priority"]
        goal["description"] = spec.get("description") or {"text": "Recovery goal"}
        goal["subject"] = self.subject
        goal["startDate"] = self.applier.start.date().isoformat()
        targets = []
        for target in spec.get("target", []):
            applied = {
                key: value
                for key, value in target.items()
                if key == "measure" or key.startswith("detail")
            }
            due = target.get("due")
            if due is not None:
                applied["dueDate"] = add_duration(self.applier.start, due).date().isoformat()
            if applied:
                targets.append(applied)
        if targets:
            goal["target"] = targets
        if spec.get("addresses") is None and self.context.addresses:
            goal["addresses"] = [{"reference": r} for r in self.context.addresses]
        return goal

    def task(self, item: _Action) -> dict[str, Any]:
        task_id = self.context.new_id("Task")
        description = item.description
        if item.kind == "supplies":
            description = f"Have at home: {description}"
        schedule = item.schedule
        task: dict[str, Any] = {
            "resourceType": "Task",
            "id": task_id,
            "extension": self.activity_extensions(item),
            "basedOn": [self.care_plan_ref],
            "status": "requested",
            "intent": "plan",
            "code": _concept(item.codings, item.title),
            "description": description,
            "for": self.subject,
        }
        if self.context.encounter:
            task["encounter"] = {"reference": self.context.encounter}
        period: dict[str, Any] = {"start": _datetime(schedule.start)}
        if schedule.end is not None:
            period["end"] = _datetime(schedule.end)
        task["executionPeriod"] = period
        task["authoredOn"] = self.applier.now
        if self.context.practitioner:
            task["requester"] = {"reference": self.context.practitioner}
        task["owner"] = self.subject
        if schedule.offset or schedule.end is not None:
            task["restriction"] = {"period": dict(period)}
        return task

    def prohibition(self, item: _Action) -> tuple[dict[str, Any], str]:
        definition = item.definition or {}
        schedule = item.schedule
        if schedule.end is None and definition.get("timingDuration"):
            schedule.end = add_duration(schedule.start, definition["timingDuration"])
        code = definition.get("code") or _concept(item.codings, item.title)
        detail: dict[str, Any] = {}
        lifted = _extension_value(definition, LIFTED_WHEN_URL, "valueString")
        if lifted:
            detail["extension"] = [{"url": LIFTED_WHEN_URL, "valueString": lifted}]
        detail["kind"] = definition.get("kind", "Task")
        if item.canonical:
            detail["instantiatesCanonical"] = [item.canonical]
        detail["code"] = code
        goals = self.goal_refs(item)
        if goals:
            detail["goal"] = goals
        detail["status"] = "not-started"
        detail["doNotPerform"] = True
        if schedule.timing is not None:
            detail["scheduledTiming"] = schedule.timing
        else:
            period = {"start": _datetime(schedule.start)}
            if schedule.end is not None:
                period["end"] = _datetime(schedule.end)
            detail["scheduledPeriod"] = period
        detail["description"] = item.description
        activity = {
            "extension": [{"url": TEMPLATE_ACTION_URL, "valueString": item.id}],
            "detail": detail,
        }
        return activity, item.description + self.when(schedule)

    def warning(self, item: _Action) -> tuple[dict[str, Any], str]:
        priority = str(item.action.get("priority") or "urgent")
        call = _CALL.get(priority, _CALL["urgent"])
        sentence, expression, from_parameter = self.applier.condition(item.action)
        text = item.description.strip().rstrip(".")
        # A fixed threshold the leaflet writes out ("a fever of 38.0 °C or higher") is not
        # repeated; a clinician's threshold is always spelled out.
        already_said = not from_parameter and any(ch.isdigit() for ch in text)
        if sentence is None or already_said:
            description = f"{_sentence(text)} {call}."
        else:
            description = f"{_sentence(text)} {call} {sentence}."
        parts: list[dict[str, Any]] = [{"url": "priority", "valueCode": priority}]
        if expression is not None:
            parts.append(
                {
                    "url": "condition",
                    "valueExpression": {
                        "description": item.description,
                        "language": "text/fhirpath",
                        "expression": expression,
                    },
                }
            )
        detail: dict[str, Any] = {
            "extension": [{"url": WARNING_SIGN_URL, "extension": parts}],
            "code": _concept(item.codings, item.title),
        }
        goals = self.goal_refs(item)
        if goals:
            detail["goal"] = goals
        detail["status"] = "not-started"
        detail["description"] = description
        activity = {
            "extension": [{"url": TEMPLATE_ACTION_URL, "valueString": item.id}],
            "detail": detail,
        }
        return activity, description

    def bound_parameters(self) -> list[dict[str, Any]]:
        extensions = []
        for name, bound in self.applier.bound.items():
            parts: list[dict[str, Any]] = [{"url": "name", "valueCode": name}]
            value = bound.value
            if isinstance(value, dict):
                parts.append({"url": "value", "valueQuantity": value})
            elif bound.spec.type == "integer":
                parts.append({"url": "value", "valueInteger": value})
            elif bound.spec.type == "dateTime":
                parts.append({"url": "value", "valueDateTime": value})
            else:
                parts.append({"url": "value", "valueString": value})
            parts.append({"url": "defaulted", "valueBoolean": bound.defaulted})
            extensions.append({"url": BOUND_PARAMETER_URL, "extension": parts})
        return extensions

    def care_plan(
        self, goals: list[dict[str, Any]], activities: list[dict[str, Any]]
    ) -> dict[str, Any]:
        plan = self.plan
        context = self.context
        care_plan: dict[str, Any] = {"resourceType": "CarePlan", "id": self.care_plan_id}
        care_plan["text"] = {"status": "generated", "div": self.narrative()}
        extensions = self.bound_parameters()
        if extensions:
            care_plan["extension"] = extensions
        url = plan.get("url")
        if url:
            version = plan.get("version")
            care_plan["instantiatesCanonical"] = [f"{url}|{version}" if version else url]
        care_plan["status"] = "active"
        care_plan["intent"] = "plan"
        care_plan["category"] = [dict(c) for c in CARE_PLAN_CATEGORIES]
        if plan.get("title"):
            care_plan["title"] = plan["title"]
        if plan.get("description"):
            care_plan["description"] = plan["description"]
        care_plan["subject"] = self.subject
        if context.encounter:
            care_plan["encounter"] = {"reference": context.encounter}
        care_plan["period"] = {"start": _datetime(self.applier.start)}
        care_plan["created"] = self.applier.now
        if context.practitioner:
            care_plan["author"] = {"reference": context.practitioner}
        if context.organization:
            care_plan["contributor"] = [{"reference": context.organization}]
        if context.addresses:
            care_plan["addresses"] = [{"reference": r} for r in context.addresses]
        if goals:
            care_plan["goal"] = [{"reference": f"Goal/{g['id']}"} for g in goals]
        if activities:
            care_plan["activity"] = activities
        return care_plan

    def narrative(self) -> str:
        title = str(self.plan.get("title") or "Recovery plan")
        parts = [
            '<div xmlns="http://www.w3.org/1999/xhtml">',
            f"<h2>{html.escape(title)}</h2>",
            f"<p>Your recovery plan starts on {date_text(self.applier.start)}.</p>",
        ]
        for heading, items in self.sections:
            if not items:
                continue
            parts.append(f"<h3>{html.escape(heading)}</h3><ul>")
            parts += [f"<li>{html.escape(item)}</li>" for item in items]
            parts.append("</ul>")
        parts.append("</div>")
        return "".join(parts)

    def communication(self) -> dict[str, Any]:
        context = self.context
        title = str(self.plan.get("title") or "Recovery plan")
        payload = [
            {
                "contentString": f"{title}\nYour recovery plan starts on"
                f" {date_text(self.applier.start)}."
            }
        ]
        for heading, items in self.sections:
            if items:
                lines = "\n".join(f"- {item}" for item in items)
                payload.append({"contentString": f"{heading}:\n{lines}"})
        communication: dict[str, Any] = {
            "resourceType": "Communication",
            "id": context.new_id("Communication"),
            "basedOn": [self.care_plan_ref],
            "status": "completed",
            "category": [
                {
                    "coding": [
                        {
                            "system": COMMUNICATION_CATEGORY,
                            "code": "instruction",
                            "display": "Instruction",
                        }
                    ]
                }
            ],
            "subject": self.subject,
            "topic": {"text": title},
        }
        if context.encounter:
            communication["encounter"] = {"reference": context.encounter}
        communication["sent"] = self.applier.now
        communication["recipient"] = [self.subject]
        if context.practitioner:
            communication["sender"] = {"reference": context.practitioner}
        communication["payload"] = payload
        return communication


__all__ = [
    "ACTIVITY_TIMING_URL",
    "BOUND_PARAMETER_URL",
    "CARE_PLAN_CATEGORIES",
    "TEMPLATE_ACTION_URL",
    "WARNING_SIGN_URL",
    "BoundParameter",
    "ParameterSpec",
    "add_duration",
    "apply_plan_definition",
    "bind_parameters",
    "parse_parameter",
    "date_text",
    "parameter_specs",
    "quantity_text",
    "temperature_text",
]
