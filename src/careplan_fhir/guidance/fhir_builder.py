"""RecoveryGuidance → FHIR R4 knowledge artifacts, in one Bundle of type ``collection``.

- PlanDefinition (https://hl7.org/fhir/R4/plandefinition.html): the reusable template, one
  ``action`` per instruction, warning sign and supply, ``goal[]``, clinician parameters;
- ActivityDefinition (https://hl7.org/fhir/R4/activitydefinition.html) per prohibition, with
  ``doNotPerform: true``;
- Questionnaire (https://hl7.org/fhir/R4/questionnaire.html): the daily check-in;
- DocumentReference (https://hl7.org/fhir/R4/documentreference.html): the source text.

Pure and deterministic: the caller gives ``now``, the canonical ``url_base`` and the ``version``;
resource ids come from a slug of the title (and an index). The mapping is described in
``docs/guidance-fhir.md``.
"""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .model import (
    Condition,
    Instruction,
    Parameter,
    Quantity,
    RecoveryGuidance,
    SourceSpan,
    Timing,
    WarningSign,
)
from .readability import reading_grade

PROJECT = "https://careplan-fhir.org/fhir"
INSTRUCTION_KIND_SYSTEM = f"{PROJECT}/CodeSystem/instruction-kind"
SOURCE_SPAN_URL = f"{PROJECT}/StructureDefinition/source-span"
READING_GRADE_URL = f"{PROJECT}/StructureDefinition/reading-grade"
PLAN_PARAMETER_URL = f"{PROJECT}/StructureDefinition/plan-parameter"
USES_PARAMETER_URL = f"{PROJECT}/StructureDefinition/uses-parameter"
SECTION_URL = f"{PROJECT}/StructureDefinition/guidance-section"
LIFTED_WHEN_URL = f"{PROJECT}/StructureDefinition/lifted-when"

PLAN_DEFINITION_TYPE = "http://terminology.hl7.org/CodeSystem/plan-definition-type"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
MIN_VALUE_URL = "http://hl7.org/fhir/StructureDefinition/minValue"
MAX_VALUE_URL = "http://hl7.org/fhir/StructureDefinition/maxValue"

#: Id of the anchor action that offsets ("after 24 hours") are measured from: discharge home.
DISCHARGE_ACTION_ID = "discharge"

#: Displays of the instruction-kind codes (profiles/CodeSystem-instruction-kind.json).
KIND_DISPLAY = {
    "medication": "Medication",
    "activity": "Activity",
    "exercise": "Exercise",
    "wound-care": "Wound care",
    "hygiene": "Hygiene",
    "diet": "Diet",
    "bowel": "Bowel care",
    "monitoring": "Monitoring",
    "supplies": "Supplies",
    "follow-up": "Follow-up",
    "restriction": "Restriction",
    "education": "Education",
    "other": "Other",
    "warning-sign": "Warning sign",
}

#: Clinical codes per instruction kind: only VERIFIED rows of the project's code table
#: (shared/reference/clinical-codes.md, section 5). A kind without a verified code that means the
#: whole kind gets none; its action is described by text.
#: - 225358003 "Wound care": synthea modules/injuries.json (Laceration_CarePlan).
#: - 409073007 "Education (procedure)": hl7.org/fhir/DSTU1/valueset-procedure-category.html.
CLINICAL_CODE_BY_KIND: dict[str, tuple[str, str, str]] = {
    "wound-care": (SNOMED, "225358003", "Wound care"),
    "education": (SNOMED, "409073007", "Education (procedure)"),
}

#: LOINC codes of the check-in questions (clinical-codes.md section 3, both VERIFIED).
BODY_TEMPERATURE = (LOINC, "8310-5", "Body temperature")
PAIN_SEVERITY = (LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported")

#: FHIRPath variables the escalation engine binds from a check-in, per measure.
MEASURE_VARIABLE = {"body-temperature": "temperature", "pain-score": "pain_score"}

CONTENT_TYPE_BY_FORMAT = {
    "text": "text/plain",
    "markdown": "text/markdown",
    "html": "text/html",
    "yaml": "application/yaml",
}

_UNIT_DISPLAY = {
    "s": "seconds",
    "min": "minutes",
    "h": "hours",
    "d": "days",
    "wk": "weeks",
    "mo": "months",
    "a": "years",
    "Cel": "°C",
    "[degF]": "°F",
    "{score}": "score",
}
_FORMAT_NAME = {
    "text": "a plain-text leaflet",
    "markdown": "a Markdown leaflet",
    "html": "an HTML leaflet",
    "yaml": "an authored guidance file (YAML)",
}
_TITLE_LENGTH = 60
_SLUG_LENGTH = 40


def slugify(text: str) -> str:
    """Lower-case letters, digits and single hyphens, at most 40 characters, cut between words.

    "guidance" when the text has no letter or digit.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > _SLUG_LENGTH:
        cut = slug[: _SLUG_LENGTH + 1]
        # Cut at a word boundary when there is one.
        slug = cut.rsplit("-", 1)[0] if "-" in cut else cut[:_SLUG_LENGTH]
    slug = slug.rstrip("-")
    return slug or "guidance"


def computable_name(text: str) -> str:
    """A PlanDefinition ``name``: ``[A-Z]([A-Za-z0-9_]){0,254}`` built from the title's words."""
    words = re.findall(r"[A-Za-z0-9]+", text)
    name = "".join(w[:1].upper() + w[1:] for w in words)[:200]
    if not name or not name[0].isalpha():
        name = "Plan" + name
    return name


def build_artifacts(
    guidance: RecoveryGuidance, *, url_base: str, version: str, now: datetime
) -> dict[str, Any]:
    """The PlanDefinition, ActivityDefinitions, Questionnaire and DocumentReference as a Bundle."""
    return _Builder(guidance, url_base.rstrip("/"), version, now).bundle()


class _Builder:
    def __init__(
        self, guidance: RecoveryGuidance, url_base: str, version: str, now: datetime
    ) -> None:
        self.guidance = guidance
        self.url_base = url_base
        self.version = version
        moment = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
        self.date = moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.slug = slugify(guidance.title)
        self.name = computable_name(guidance.title)
        self.document_id = f"{self.slug}-source"
        self.questionnaire_id = f"{self.slug}-check-in"
        self.activity_definitions: list[dict[str, Any]] = []
        self.goal_ids = {goal.id: _element_id(goal.id) for goal in guidance.goals}

    def canonical(self, resource_type: str, resource_id: str) -> str:
        return f"{self.url_base}/{resource_type}/{resource_id}"

    def bundle(self) -> dict[str, Any]:
        plan = self.plan_definition()
        resources = [
            plan,
            *self.activity_definitions,
            self.questionnaire(),
            self.document_reference(),
        ]
        return {
            "resourceType": "Bundle",
            "id": f"{self.slug}-artifacts",
            "type": "collection",
            "timestamp": self.date,
            "entry": [
                {
                    "fullUrl": self.canonical(resource["resourceType"], resource["id"]),
                    "resource": resource,
                }
                for resource in resources
            ],
        }

    # -- PlanDefinition ----------------------------------------------------------------------

    def plan_definition(self) -> dict[str, Any]:
        guidance = self.guidance
        actions: list[dict[str, Any]] = []
        if any(i.timing is not None and i.timing.offset is not None for i in guidance.instructions):
            actions.append(self.discharge_action())
        actions += [self.instruction_action(i) for i in guidance.instructions]
        actions += [self.warning_action(w) for w in guidance.warning_signs]
        actions += [self.supply_action(s.id, s.text, s.source) for s in guidance.supplies]
        ids = [a["id"] for a in actions]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"action ids must be unique; repeated: {', '.join(duplicates)}")
        plan: dict[str, Any] = {
            "resourceType": "PlanDefinition",
            "id": self.slug,
        }
        if guidance.parameters:
            plan["extension"] = [self.parameter_extension(p) for p in guidance.parameters]
        plan.update(
            {
                "url": self.canonical("PlanDefinition", self.slug),
                "version": self.version,
                "name": self.name,
                "title": guidance.title,
                "type": {
                    "coding": [
                        {
                            "system": PLAN_DEFINITION_TYPE,
                            "code": "clinical-protocol",
                            "display": "Clinical Protocol",
                        }
                    ]
                },
                "status": "draft",
                "date": self.date,
                "description": self.description(),
            }
        )
        if guidance.procedure:
            plan["topic"] = [{"text": guidance.procedure}]
        plan["relatedArtifact"] = [
            {
                "type": "documentation",
                "display": f"Source document: {guidance.title}",
                "url": f"DocumentReference/{self.document_id}",
            },
            {
                "type": "composed-of",
                "display": "Daily check-in",
                "resource": f"{self.canonical('Questionnaire', self.questionnaire_id)}"
                f"|{self.version}",
            },
        ]
        if guidance.goals:
            plan["goal"] = [
                {"id": self.goal_ids[g.id], "description": {"text": g.text}} for g in guidance.goals
            ]
        if actions:
            plan["action"] = actions
        return plan

    def description(self) -> str:
        guidance = self.guidance
        what = "Recovery guidance"
        if guidance.procedure:
            what += f" after {guidance.procedure}"
        return (
            f"{what}, imported from {_FORMAT_NAME[guidance.source_format]}."
            f" Instructions: {len(guidance.instructions)}; warning signs:"
            f" {len(guidance.warning_signs)}; supplies: {len(guidance.supplies)}."
        )

    def goal_ids_for(self, action_id: str) -> list[str]:
        return [self.goal_ids[g.id] for g in self.guidance.goals if action_id in g.instruction_ids]

    def common(
        self,
        action_id: str,
        text: str,
        source: SourceSpan,
        kind: str,
        *,
        extra: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """id, extensions (source span, reading grade), title, description, code, goalId."""
        extensions = [self.source_extension(source), *(extra or [])]
        grade = reading_grade(text)
        if grade is not None:
            extensions.append({"url": READING_GRADE_URL, "valueDecimal": grade})
        action: dict[str, Any] = {
            "id": action_id,
            "extension": extensions,
            "title": _title(text),
            "description": text,
            "code": self.codes(kind),
        }
        goal_ids = self.goal_ids_for(action_id)
        if goal_ids:
            action["goalId"] = goal_ids
        return action

    def codes(self, kind: str) -> list[dict[str, Any]]:
        codes: list[dict[str, Any]] = [
            {
                "coding": [
                    {"system": INSTRUCTION_KIND_SYSTEM, "code": kind, "display": KIND_DISPLAY[kind]}
                ]
            }
        ]
        clinical = CLINICAL_CODE_BY_KIND.get(kind)
        if clinical is not None:
            system, code, display = clinical
            codes.append({"coding": [{"system": system, "code": code, "display": display}]})
        return codes

    def discharge_action(self) -> dict[str, Any]:
        return {
            "id": DISCHARGE_ACTION_ID,
            "title": "Going home",
            "description": "Recovery at home starts the day you leave the hospital.",
            "trigger": [{"type": "named-event", "name": "discharge"}],
        }

    def instruction_action(self, instruction: Instruction) -> dict[str, Any]:
        extra = []
        if instruction.section:
            extra.append({"url": SECTION_URL, "valueString": instruction.section})
        if instruction.parameter:
            extra.append({"url": USES_PARAMETER_URL, "valueCode": instruction.parameter})
        action = self.common(
            instruction.id, instruction.text, instruction.source, instruction.kind, extra=extra
        )
        if instruction.timing is not None:
            action.update(_timing_elements(instruction.timing))
        if instruction.prohibition:
            definition = self.activity_definition(instruction)
            action["definitionCanonical"] = f"{definition['url']}|{self.version}"
        return action

    def warning_action(self, sign: WarningSign) -> dict[str, Any]:
        action = self.common(sign.id, sign.text, sign.source, "warning-sign")
        action["priority"] = sign.urgency
        if sign.condition is not None:
            action["condition"] = [
                {
                    "kind": "applicability",
                    "expression": {
                        "description": sign.text,
                        "language": "text/fhirpath",
                        "expression": condition_expression(sign.condition),
                    },
                }
            ]
        return action

    def supply_action(self, supply_id: str, text: str, source: SourceSpan) -> dict[str, Any]:
        return self.common(supply_id, text, source, "supplies")

    # -- extensions --------------------------------------------------------------------------

    def source_extension(self, span: SourceSpan, url: str = SOURCE_SPAN_URL) -> dict[str, Any]:
        return {
            "url": url,
            "extension": [
                {
                    "url": "document",
                    "valueReference": {"reference": f"DocumentReference/{self.document_id}"},
                },
                {"url": "start", "valueInteger": span.start},
                {"url": "end", "valueInteger": span.end},
                {"url": "line", "valueInteger": span.line},
            ],
        }

    def parameter_extension(self, parameter: Parameter) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [
            {"url": "name", "valueCode": parameter.name},
            {"url": "type", "valueCode": parameter.type},
            {"url": "required", "valueBoolean": parameter.required},
            {"url": "description", "valueString": parameter.description},
        ]
        parts += [{"url": "unit", "valueCoding": _unit_coding(unit)} for unit in parameter.units]
        if parameter.default is not None:
            parts.append({"url": "default", "valueQuantity": _quantity(parameter.default)})
        if parameter.source is not None:
            parts.append(self.source_extension(parameter.source, "source"))
        return {"url": PLAN_PARAMETER_URL, "extension": parts}

    # -- ActivityDefinition ------------------------------------------------------------------

    def activity_definition(self, instruction: Instruction) -> dict[str, Any]:
        index = len(self.activity_definitions) + 1
        resource_id = f"{self.slug}-avoid-{index}"
        definition: dict[str, Any] = {"resourceType": "ActivityDefinition", "id": resource_id}
        timing = instruction.timing
        if timing is not None and timing.until:
            definition["extension"] = [{"url": LIFTED_WHEN_URL, "valueString": timing.until}]
        definition.update(
            {
                "url": self.canonical("ActivityDefinition", resource_id),
                "version": self.version,
                "name": f"{self.name[:180]}Avoid{index}",
                "title": _title(instruction.text),
                "status": "draft",
                "date": self.date,
                "description": instruction.text,
                "kind": "Task",
                "code": self.codes(instruction.kind)[0],
                "doNotPerform": True,
            }
        )
        if timing is not None and timing.duration is not None:
            definition["timingDuration"] = _quantity(timing.duration)
        self.activity_definitions.append(definition)
        return definition

    # -- Questionnaire -----------------------------------------------------------------------

    def questionnaire(self) -> dict[str, Any]:
        guidance = self.guidance
        measures = {w.condition.measure for w in guidance.warning_signs if w.condition}
        monitoring = " ".join(
            i.text.lower() for i in guidance.instructions if i.kind == "monitoring"
        )
        items: list[dict[str, Any]] = []
        if "body-temperature" in measures or re.search(r"temperature|fever", monitoring):
            items += self.temperature_items()
        # Pain 0-10 when a sign is judged on it, when the leaflet asks the patient to watch their
        # pain, or when it manages pain with medicine (the score tells whether that works).
        pain_medicine = any(
            i.kind == "medication" and re.search(r"\bpain\b", i.text, re.IGNORECASE)
            for i in guidance.instructions
        )
        if "pain-score" in measures or "pain" in monitoring or pain_medicine:
            items.append(
                {
                    "extension": [
                        {"url": MIN_VALUE_URL, "valueInteger": 0},
                        {"url": MAX_VALUE_URL, "valueInteger": 10},
                    ],
                    "linkId": "pain-score",
                    "code": [_coding(PAIN_SEVERITY)],
                    "text": "How bad is your pain right now? 0 means no pain, 10 the worst pain.",
                    "type": "integer",
                }
            )
        signs = [w for w in guidance.warning_signs if w.condition is None]
        if signs:
            items.append(
                {
                    "linkId": "warning-signs",
                    "text": "Since your last check-in, have you had any of these?",
                    "type": "group",
                    "item": [
                        {"linkId": f"sign-{w.id}", "text": w.text, "type": "boolean"} for w in signs
                    ],
                }
            )
        questionnaire: dict[str, Any] = {
            "resourceType": "Questionnaire",
            "id": self.questionnaire_id,
            "url": self.canonical("Questionnaire", self.questionnaire_id),
            "version": self.version,
            "name": f"{self.name[:190]}CheckIn",
            "title": f"Daily check-in: {guidance.title}",
            "status": "draft",
            "subjectType": ["Patient"],
            "date": self.date,
            "description": "Answer once a day while you recover at home.",
        }
        if items:
            questionnaire["item"] = items
        return questionnaire

    def temperature_items(self) -> list[dict[str, Any]]:
        unit_item: dict[str, Any] = {
            "linkId": "body-temperature-unit",
            "text": "Is that in °C or °F?",
            "type": "choice",
            "enableWhen": [
                {"question": "body-temperature", "operator": "exists", "answerBoolean": True}
            ],
            "required": True,
            "answerOption": [
                {"valueCoding": _unit_coding("Cel")},
                {"valueCoding": _unit_coding("[degF]")},
            ],
        }
        preferred = self.preferred_temperature_unit()
        if preferred is not None:
            for option in unit_item["answerOption"]:
                if option["valueCoding"]["code"] == preferred:
                    option["initialSelected"] = True
        return [
            {
                "linkId": "body-temperature",
                "code": [_coding(BODY_TEMPERATURE)],
                "text": "What is your temperature today?",
                "type": "decimal",
            },
            unit_item,
        ]

    def preferred_temperature_unit(self) -> str | None:
        """The unit the leaflet itself uses for temperature, if it uses one."""
        for sign in self.guidance.warning_signs:
            condition = sign.condition
            if condition and condition.threshold and condition.measure == "body-temperature":
                return condition.threshold.unit
        for parameter in self.guidance.parameters:
            if parameter.default is not None and parameter.default.unit in ("Cel", "[degF]"):
                return parameter.default.unit
        return None

    # -- DocumentReference -------------------------------------------------------------------

    def document_reference(self) -> dict[str, Any]:
        data = self.guidance.source_text.encode("utf-8")
        return {
            "resourceType": "DocumentReference",
            "id": self.document_id,
            "status": "current",
            "docStatus": "final",
            "type": {"text": "Patient education: recovery guidance"},
            "date": self.date,
            "description": f"Source of PlanDefinition/{self.slug}: {self.guidance.title}",
            "content": [
                {
                    "attachment": {
                        "contentType": CONTENT_TYPE_BY_FORMAT[self.guidance.source_format],
                        "data": base64.b64encode(data).decode("ascii"),
                        "size": len(data),
                        "hash": base64.b64encode(hashlib.sha1(data).digest()).decode("ascii"),
                        "title": self.guidance.title,
                    }
                }
            ],
        }


def condition_expression(condition: Condition) -> str:
    """FHIRPath over the check-in variables: ``%temperature >= %fever_threshold``."""
    left = f"%{MEASURE_VARIABLE[condition.measure]}"
    if condition.parameter is not None:
        right = f"%{condition.parameter}"
    elif condition.threshold is not None:
        threshold = condition.threshold
        if threshold.unit == "{score}":
            right = _number(threshold.value)
        else:
            right = f"{_number(threshold.value)} '{threshold.unit}'"
    else:
        raise ValueError("a warning-sign condition needs a threshold or a parameter")
    return f"{left} {condition.comparator} {right}"


def _timing_elements(timing: Timing) -> dict[str, Any]:
    """``timing[x]`` and ``relatedAction`` of an action from the guidance's Timing."""
    elements: dict[str, Any] = {}
    if timing.frequency is not None:
        repeat: dict[str, Any] = {}
        if timing.duration is not None:
            repeat["boundsDuration"] = _quantity(timing.duration)
        repeat["frequency"] = timing.frequency
        if timing.frequency_max is not None:
            repeat["frequencyMax"] = timing.frequency_max
        repeat["period"] = timing.period if timing.period is not None else Decimal(1)
        if timing.period_max is not None:
            repeat["periodMax"] = timing.period_max
        repeat["periodUnit"] = timing.period_unit or "d"
        elements["timingTiming"] = {"repeat": repeat, "code": {"text": timing.text}}
    elif timing.duration is not None:
        elements["timingDuration"] = _quantity(timing.duration)
    elif timing.text:
        elements["timingTiming"] = {"code": {"text": timing.text}}
    if timing.offset is not None:
        related: dict[str, Any] = {
            "actionId": DISCHARGE_ACTION_ID,
            "relationship": "after-start",
        }
        if timing.offset_max is not None:
            related["offsetRange"] = {
                "low": _quantity(timing.offset),
                "high": _quantity(timing.offset_max),
            }
        else:
            related["offsetDuration"] = _quantity(timing.offset)
        elements["relatedAction"] = [related]
    return elements


def _quantity(quantity: Quantity) -> dict[str, Any]:
    return {
        "value": quantity.value,
        "unit": _UNIT_DISPLAY.get(quantity.unit, quantity.unit),
        "system": UCUM,
        "code": quantity.unit,
    }


def _unit_coding(unit: str) -> dict[str, Any]:
    return {"system": UCUM, "code": unit, "display": _UNIT_DISPLAY.get(unit, unit)}


def _coding(code: tuple[str, str, str]) -> dict[str, Any]:
    system, value, display = code
    return {"system": system, "code": value, "display": display}


def _number(value: Decimal) -> str:
    return format(value, "f")


def _title(text: str) -> str:
    """The text itself when short, else its first words and an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= _TITLE_LENGTH:
        return text
    cut = text[:_TITLE_LENGTH].rsplit(" ", 1)[0].rstrip(",;:.")
    return f"{cut}…"


def _element_id(value: str) -> str:
    """A FHIR ``id`` (``[A-Za-z0-9-.]{1,64}``) for a goal id, as ``goalId`` needs."""
    return re.sub(r"[^A-Za-z0-9\-.]", "-", value)[:64] or "goal"
