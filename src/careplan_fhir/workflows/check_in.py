"""The daily check-in: the patient's answers against the plan's warning signs, an alert once.

Two parts (``docs/check-in.md``):

* :func:`evaluate_check_in` is pure: which of the plan's warning signs (``CarePlan.activity``
  with the ``warning-sign`` extension, see ``docs/apply.md``) a check-in QuestionnaireResponse
  triggers, how urgent that is, and the advice to show the patient, written from the plan's own
  sentences. A sign with a condition (``%temperature >= 38.0 'Cel'``, ``%pain_score > 7``: the
  threshold bound at ``$apply``) is judged on the temperature (in the unit the patient used) or
  the 0-10 pain score; a sign without one on the patient's yes to its question
  (``sign-{action id}``). No threshold is ever taken from anywhere but the plan.
* :func:`record_check_in` (the caller's transaction, as ``attach_care_plan``) stores the
  QuestionnaireResponse (profile ``checkin-questionnaireresponse``), an Observation per
  measurement (body temperature, LOINC 8310-5, profile ``bodytemp``; pain, LOINC 72514-3), and
  when a sign is triggered ONE Communication (category alert, https://hl7.org/fhir/R4/
  communication.html) to the plan's author, contributors and care teams and ONE Flag
  (https://hl7.org/fhir/R4/flag.html). :func:`record_stored_check_in` does the same for a
  QuestionnaireResponse a plain ``POST /QuestionnaireResponse`` already stored.

Once per event: :func:`check_in_key` hashes the plan id, the authored date and the answers. A
``check_in`` row with that key (unique) is inserted in a savepoint before anything is derived;
the same answers again the same day (a retry, a double tap, a concurrent twin that loses the
race on the constraint) write no second Observation, Communication or Flag, and are answered
with the first check-in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import select

from careplan_fhir.apply.engine import (
    TEMPLATE_ACTION_URL,
    WARNING_SIGN_URL,
    quantity_text,
    temperature_text,
)
from careplan_fhir.errors import Unprocessable
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant, to_naive_utc
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.fhir.outcome import issue
from careplan_fhir.fhir.profiles import (
    CHECK_IN_QUESTIONNAIRE_RESPONSE,
    find_profile,
    validate_against_profile,
)
from careplan_fhir.guidance.fhir_builder import LOINC, PROJECT, UCUM
from careplan_fhir.storage.db import claim_row
from careplan_fhir.storage.repository import Repository, StoredResource
from careplan_fhir.storage.search import parse_search, run_search
from careplan_fhir.storage.tables import CheckInRow

_check_in = CheckInRow.__table__  # type: ignore[attr-defined]

#: ``identifier.system`` of the check-in key on the QuestionnaireResponse (when the client
#: gave none), the alert Communication and the Flag.
CHECK_IN_KEY_SYSTEM = f"{PROJECT}/identifier/check-in"

#: The check-in Questionnaire's items (``docs/guidance-fhir.md``, built by guidance/fhir_builder).
TEMPERATURE_ITEM = "body-temperature"
TEMPERATURE_UNIT_ITEM = "body-temperature-unit"
PAIN_ITEM = "pain-score"
SIGN_ITEM_PREFIX = "sign-"
TEMPERATURE_UNITS = ("Cel", "[degF]")
PAIN_RANGE = (0, 10)

#: Codes, each seen with its display in an authoritative source:
#: LOINC rows VERIFIED in shared/reference/clinical-codes.md section 3; the observation
#: categories in the R4 examples package (hl7.fhir.r4.examples 4.0.1, Observation-body-temperature
#: and Observation-1minute-apgar-score in tests/data/hl7-r4-examples); communication-category
#: ``alert`` VERIFIED in clinical-codes.md section 7.
BODY_TEMPERATURE = {"system": LOINC, "code": "8310-5", "display": "Body temperature"}
PAIN_SEVERITY = {
    "system": LOINC,
    "code": "72514-3",
    "display": "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
}
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
VITAL_SIGNS = {"system": OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}
SURVEY = {"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
ALERT = {"system": COMMUNICATION_CATEGORY, "code": "alert", "display": "Alert"}
#: The R4 body temperature profile (https://hl7.org/fhir/R4/bodytemp.html).
BODYTEMP_PROFILE = "http://hl7.org/fhir/StructureDefinition/bodytemp"
#: R4 core extension on Flag: "other record that provides additional supporting information"
#: (https://hl7.org/fhir/R4/extension-flag-detail.html), valueReference, 0..*.
FLAG_DETAIL_URL = "http://hl7.org/fhir/StructureDefinition/flag-detail"

_UNIT_DISPLAY = {"Cel": "°C", "[degF]": "°F"}

#: R4 request-priority, lowest first.
PRIORITY_ORDER = ("routine", "urgent", "asap", "stat")
#: What the patient is told to do, by the highest priority triggered.
URGENCY_BY_PRIORITY = {
    "stat": "emergency",
    "asap": "call-care-team",
    "urgent": "call-care-team",
    "routine": "tell-care-team",
}
HEADLINE_BY_URGENCY = {
    "emergency": "Call 911 now.",
    "call-care-team": "Call your care team now.",
    "tell-care-team": "Tell your care team about this.",
}
NO_SIGN_ADVICE = (
    "Thank you for checking in. None of your answers matches a warning sign in your plan."
    " Keep following your plan."
)

_CONDITION = re.compile(
    r"^\s*%(?P<var>[A-Za-z_]\w*)\s*(?P<cmp>>=|<=|>|<)\s*"
    r"(?P<num>-?\d+(?:\.\d+)?)(?:\s*'(?P<unit>[^']+)')?\s*$"
)
_COMPARATOR_WORDS = {">=": "at or above", ">": "above", "<=": "at or below", "<": "below"}
_ANSWERED_STATUSES = ("completed", "amended")
_PLAN_IN_FORCE = ("active",)


# -- the plan's warning signs ----------------------------------------------------------------


@dataclass(frozen=True)
class SignCondition:
    """A bound condition: ``%variable comparator threshold ['unit']``."""

    variable: str
    comparator: str
    threshold: Decimal
    unit: str | None
    expression: str


@dataclass(frozen=True)
class WarningSign:
    """One warning sign of a plan, as the engine wrote it on ``CarePlan.activity.detail``."""

    action_id: str
    #: The sign in the plan's words (``detail.code.text``).
    text: str
    #: The plan's sentence for the patient, threshold included (``detail.description``).
    description: str
    priority: str
    condition: SignCondition | None


def warning_signs(care_plan: Mapping[str, Any]) -> list[WarningSign]:
    """The plan's warning signs in plan order (cancelled activities left out)."""
    signs = []
    for activity in care_plan.get("activity") or []:
        detail = activity.get("detail") if isinstance(activity, dict) else None
        if not isinstance(detail, dict) or detail.get("status") in ("cancelled", "stopped"):
            continue
        extension = _extension(detail, WARNING_SIGN_URL)
        if extension is None:
            continue
        parts = {p.get("url"): p for p in extension.get("extension") or []}
        priority = str((parts.get("priority") or {}).get("valueCode") or "urgent")
        condition = None
        expression = ((parts.get("condition") or {}).get("valueExpression") or {}).get("expression")
        match = _CONDITION.match(expression or "")
        if match is not None:
            condition = SignCondition(
                match["var"], match["cmp"], Decimal(match["num"]), match["unit"], str(expression)
            )
        action = _extension(activity, TEMPLATE_ACTION_URL) or {}
        text = (detail.get("code") or {}).get("text") or detail.get("description") or ""
        signs.append(
            WarningSign(
                action_id=str(action.get("valueString") or ""),
                text=str(text).rstrip("."),
                description=str(detail.get("description") or text),
                priority=priority if priority in PRIORITY_ORDER else "urgent",
                condition=condition,
            )
        )
    return signs


def _extension(element: Mapping[str, Any], url: str) -> dict[str, Any] | None:
    for extension in element.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return extension
    return None


# -- the answers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckInAnswers:
    """What the patient answered, read from the QuestionnaireResponse's items."""

    authored: str | None
    #: The temperature as given, and its UCUM unit (``Cel`` or ``[degF]``).
    temperature: Decimal | None = None
    temperature_unit: str | None = None
    pain_score: int | None = None
    #: Warning sign action id → the patient's yes (True) or no (False).
    signs: Mapping[str, bool] = field(default_factory=dict)
    #: The question's text per sign action id, as the response carries it.
    questions: Mapping[str, str] = field(default_factory=dict)

    def temperature_quantity(self) -> dict[str, Any] | None:
        if self.temperature is None or self.temperature_unit is None:
            return None
        return {
            "value": self.temperature,
            "unit": _UNIT_DISPLAY[self.temperature_unit],
            "system": UCUM,
            "code": self.temperature_unit,
        }

    def temperature_text(self) -> str | None:
        quantity = self.temperature_quantity()
        return temperature_text(quantity) if quantity is not None else None


def response_items(items: Any) -> Iterator[dict[str, Any]]:
    """Every item of a QuestionnaireResponse, nested ones included (under items and answers)."""
    for item in items or []:
        if not isinstance(item, dict):
            continue
        yield item
        yield from response_items(item.get("item"))
        for answer in item.get("answer") or []:
            if isinstance(answer, dict):
                yield from response_items(answer.get("item"))


def read_answers(
    questionnaire_response: Mapping[str, Any], sign_ids: frozenset[str] | None = None
) -> CheckInAnswers:
    """The answers; Unprocessable (every problem, by linkId) for one that cannot be judged.

    ``sign_ids`` are the plan's warning-sign action ids: a ``sign-…`` item for another sign is
    refused. Items the check-in does not know are left to the caller (see
    :func:`check_link_ids`).
    """
    problems: list[dict[str, Any]] = []
    seen: set[str] = set()
    temperature: Decimal | None = None
    unit: str | None = None
    quantity_unit: str | None = None
    unit_answered = False
    pain: int | None = None
    signs: dict[str, bool] = {}
    questions: dict[str, str] = {}

    def refuse(link_id: str, message: str) -> None:
        problems.append(issue(f"{link_id}: {message}", code="invalid", expression=link_id))

    for item in response_items(questionnaire_response.get("item")):
        link_id = str(item.get("linkId") or "")
        answers = [a for a in item.get("answer") or [] if isinstance(a, dict)]
        known = link_id in (TEMPERATURE_ITEM, TEMPERATURE_UNIT_ITEM, PAIN_ITEM) or (
            link_id.startswith(SIGN_ITEM_PREFIX)
        )
        if not known:
            continue
        if link_id in seen:
            refuse(link_id, "is answered more than once")
            continue
        seen.add(link_id)
        if not answers:
            continue
        if len(answers) > 1:
            refuse(link_id, "takes one answer")
            continue
        answer = answers[0]
        if link_id == TEMPERATURE_ITEM:
            temperature, quantity_unit = _temperature(answer, link_id, refuse)
        elif link_id == TEMPERATURE_UNIT_ITEM:
            unit_answered = True
            unit = _unit(answer, link_id, refuse)
        elif link_id == PAIN_ITEM:
            pain = _pain(answer, link_id, refuse)
        else:
            action_id = link_id[len(SIGN_ITEM_PREFIX) :]
            if sign_ids is not None and action_id not in sign_ids:
                refuse(link_id, "is not a warning sign of this plan")
                continue
            value = answer.get("valueBoolean")
            if not isinstance(value, bool):
                refuse(link_id, "needs valueBoolean (yes or no)")
                continue
            signs[action_id] = value
            if isinstance(item.get("text"), str):
                questions[action_id] = item["text"]
    if temperature is not None:
        if unit is None:
            unit = quantity_unit
        elif quantity_unit is not None and quantity_unit != unit:
            refuse(TEMPERATURE_UNIT_ITEM, "differs from the unit of the temperature answer")
        if unit is None and not unit_answered:
            refuse(TEMPERATURE_UNIT_ITEM, "is required with a temperature (°C or °F)")
    if problems:
        raise Unprocessable(
            "The check-in answers cannot be evaluated: "
            + "; ".join(p["diagnostics"] for p in problems),
            issues=problems,
        )
    authored = questionnaire_response.get("authored")
    return CheckInAnswers(
        authored=str(authored) if authored else None,
        temperature=temperature,
        temperature_unit=unit if temperature is not None else None,
        pain_score=pain,
        signs=signs,
        questions=questions,
    )


def _temperature(
    answer: Mapping[str, Any], link_id: str, refuse: Callable[[str, str], None]
) -> tuple[Decimal | None, str | None]:
    if "valueQuantity" in answer:
        quantity = answer["valueQuantity"] or {}
        code = quantity.get("code")
        number = jsonio.to_decimal(quantity.get("value"))
        if code not in TEMPERATURE_UNITS or number is None:
            refuse(link_id, "a Quantity answer needs a value and the UCUM code Cel or [degF]")
            return None, None
        return number, str(code)
    key = "valueDecimal" if "valueDecimal" in answer else "valueInteger"
    number = jsonio.to_decimal(answer.get(key))
    if number is None:
        refuse(link_id, "needs valueDecimal (the temperature)")
    return number, None


def _unit(
    answer: Mapping[str, Any], link_id: str, refuse: Callable[[str, str], None]
) -> str | None:
    coding = answer.get("valueCoding")
    if isinstance(coding, dict) and coding.get("system") in (None, UCUM):
        code = coding.get("code")
        if code in TEMPERATURE_UNITS:
            return str(code)
    refuse(link_id, "needs valueCoding with UCUM code Cel (°C) or [degF] (°F)")
    return None


def _pain(
    answer: Mapping[str, Any], link_id: str, refuse: Callable[[str, str], None]
) -> int | None:
    value = answer.get("valueInteger")
    low, high = PAIN_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        refuse(link_id, f"needs valueInteger from {low} to {high}")
        return None
    return value


# -- evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggeredSign:
    """A warning sign the answers show, and why."""

    action_id: str
    text: str
    #: The plan's own sentence for the patient.
    description: str
    priority: str
    #: ``emergency`` | ``call-care-team`` | ``tell-care-team``
    urgency: str
    #: What in the answers shows it, for the care team ("temperature 38.6 °C (101.5 °F), at or
    #: above 38.0 °C (100.4 °F)", "answered yes").
    reason: str


@dataclass(frozen=True)
class CheckInResult:
    """What a check-in shows: the answers, the triggered signs, the advice for the patient."""

    answers: CheckInAnswers
    triggered: tuple[TriggeredSign, ...]
    #: Patient-facing: call 911 / call your care team, then the plan's sentences for the signs;
    #: or a thank-you when no sign is shown.
    advice: str

    @property
    def red_flag(self) -> bool:
        return bool(self.triggered)

    @property
    def priority(self) -> str | None:
        """The highest priority triggered (R4 request-priority), None without a sign."""
        if not self.triggered:
            return None
        return max((s.priority for s in self.triggered), key=PRIORITY_ORDER.index)

    @property
    def urgency(self) -> str | None:
        priority = self.priority
        return URGENCY_BY_PRIORITY[priority] if priority else None

    def answers_text(self) -> str:
        """The answers in words, for the care team."""
        answers = self.answers
        parts = []
        temperature = answers.temperature_text()
        if temperature:
            parts.append(f"temperature {temperature}")
        if answers.pain_score is not None:
            parts.append(f"pain {answers.pain_score} out of 10")
        yes = [answers.questions.get(k, k) for k, v in answers.signs.items() if v]
        no = [answers.questions.get(k, k) for k, v in answers.signs.items() if not v]
        if yes:
            parts.append("yes to: " + "; ".join(yes))
        if no:
            parts.append("no to: " + "; ".join(no))
        return ", ".join(parts) if parts else "no answers"


def evaluate_check_in(
    care_plan: Mapping[str, Any], questionnaire_response: Mapping[str, Any]
) -> CheckInResult:
    """Which of the plan's warning signs the answers trigger (pure; see the module doc).

    Raises Unprocessable when an answer cannot be judged (a temperature without its unit, a
    pain score outside 0-10, a yes/no that is not a boolean, a sign the plan does not have).
    """
    signs = warning_signs(care_plan)
    answers = read_answers(questionnaire_response, frozenset(s.action_id for s in signs))
    # A sign's question in the plan's words when the response does not carry its text.
    questions = {s.action_id: s.text for s in signs if s.action_id in answers.signs}
    answers = replace(answers, questions={**questions, **answers.questions})
    triggered = []
    for sign in signs:
        reasons = []
        if sign.condition is not None:
            reason = _condition_met(sign.condition, answers)
            if reason:
                reasons.append(reason)
        if answers.signs.get(sign.action_id):
            reasons.append("answered yes")
        if reasons:
            triggered.append(
                TriggeredSign(
                    action_id=sign.action_id,
                    text=sign.text,
                    description=sign.description,
                    priority=sign.priority,
                    urgency=URGENCY_BY_PRIORITY[sign.priority],
                    reason="; ".join(reasons),
                )
            )
    triggered.sort(key=lambda s: -PRIORITY_ORDER.index(s.priority))
    return CheckInResult(answers, tuple(triggered), _advice(triggered))


def _condition_met(condition: SignCondition, answers: CheckInAnswers) -> str | None:
    """The reason text when the answers meet ``condition``; None when not (or not answered)."""
    words = _COMPARATOR_WORDS[condition.comparator]
    if condition.variable == "temperature":
        if answers.temperature is None or answers.temperature_unit is None:
            return None
        if condition.unit not in TEMPERATURE_UNITS:
            return None
        given = _celsius(answers.temperature, answers.temperature_unit)
        threshold = _celsius(condition.threshold, condition.unit)
        if not _compare(given, condition.comparator, threshold):
            return None
        bound = quantity_text({"value": condition.threshold, "code": condition.unit})
        return f"temperature {answers.temperature_text()}, {words} {bound}"
    if condition.variable == "pain_score":
        if answers.pain_score is None or condition.unit not in (None, "1", "{score}"):
            return None
        if not _compare(Fraction(answers.pain_score), condition.comparator, condition.threshold):
            return None
        bound = quantity_text({"value": condition.threshold, "code": "{score}"})
        return f"pain {answers.pain_score} out of 10, {words} {bound}"
    return None


def _celsius(value: Decimal, unit: str | None) -> Fraction:
    """Exact: 100.4 °F is 38 °C, not 37.99999…"""
    number = Fraction(value)
    return (number - 32) * Fraction(5, 9) if unit == "[degF]" else number


def _compare(value: Fraction, comparator: str, threshold: Fraction | Decimal) -> bool:
    bound = Fraction(threshold)
    return {
        ">=": value >= bound,
        ">": value > bound,
        "<=": value <= bound,
        "<": value < bound,
    }[comparator]


def _advice(triggered: list[TriggeredSign]) -> str:
    if not triggered:
        return NO_SIGN_ADVICE
    urgency = triggered[0].urgency  # sorted: the highest priority first
    sentences = [HEADLINE_BY_URGENCY[urgency]]
    sentences += [s.description for s in triggered]
    return " ".join(sentences)


# -- the idempotency key ---------------------------------------------------------------------


def _answer_value(answer: Mapping[str, Any]) -> list[str]:
    values = []
    for key in sorted(k for k in answer if k.startswith("value")):
        value = answer[key]
        if key == "valueCoding" and isinstance(value, dict):
            values.append(f"{key}={value.get('system') or ''}|{value.get('code') or ''}")
        elif key == "valueQuantity" and isinstance(value, dict):
            number = jsonio.to_decimal(value.get("value"))
            shown = format(number.normalize(), "f") if number is not None else ""
            values.append(f"{key}={shown} {value.get('code') or value.get('unit') or ''}")
        elif key == "valueDecimal":
            number = jsonio.to_decimal(value)
            values.append(f"{key}={format(number.normalize(), 'f') if number is not None else ''}")
        elif isinstance(value, bool):
            values.append(f"{key}={'true' if value else 'false'}")
        else:
            values.append(f"{key}={jsonio.dumps(value).decode()}")
    return values


def check_in_key(care_plan_id: str, questionnaire_response: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the plan id, the authored date and the answers (pure).

    The date is ``authored``'s first ten characters (the patient's own calendar day, as the
    app wrote it). Answers are taken by linkId, sorted, with numbers normalised (``38.50`` and
    ``38.5`` are one answer); ids, ``meta``, texts and the order of items do not count.
    """
    authored = str(questionnaire_response.get("authored") or "")[:10]
    answers = sorted(
        (str(item.get("linkId") or ""), value)
        for item in response_items(questionnaire_response.get("item"))
        for answer in item.get("answer") or []
        if isinstance(answer, dict)
        for value in _answer_value(answer)
    )
    text = "\n".join(
        [f"CarePlan/{care_plan_id}", authored, *(f"{link}:{value}" for link, value in answers)]
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# -- reading the plan and its check-in Questionnaire -----------------------------------------


def _document(stored: StoredResource) -> dict[str, Any]:
    assert stored.raw is not None
    document: dict[str, Any] = jsonio.loads(stored.raw)
    return document


def _search(repository: Repository, resource_type: str, *params: tuple[str, str]) -> list[Any]:
    request = parse_search(resource_type, list(params), default_count=1000, strict=True)
    request.total = "none"
    return list(run_search(repository, request).matches)


def _local_id(reference: Any, resource_type: str) -> str | None:
    if isinstance(reference, dict):
        text = reference.get("reference")
        if isinstance(text, str) and text.startswith(f"{resource_type}/"):
            return text.split("/")[1]
    return None


def based_on_plans(questionnaire_response: Mapping[str, Any]) -> list[str]:
    """The ids of the CarePlans a response is ``basedOn`` (local references)."""
    ids = [_local_id(r, "CarePlan") for r in questionnaire_response.get("basedOn") or []]
    return list(dict.fromkeys(i for i in ids if i))


def check_in_questionnaire(repository: Repository, care_plan: Mapping[str, Any]) -> str | None:
    """The canonical (``url|version``) of the plan's check-in Questionnaire, or None.

    The plan's template (``instantiatesCanonical``, any status: a retired template's plans
    still check in) names it as its ``composed-of`` related artifact.
    """
    for canonical in care_plan.get("instantiatesCanonical") or []:
        url, _, version = str(canonical).partition("|")
        params = [("url", url), *([("version", version)] if version else [])]
        for found in _search(repository, "PlanDefinition", *params):
            template = _document(found)
            for artifact in template.get("relatedArtifact") or []:
                resource = artifact.get("resource")
                if (
                    artifact.get("type") == "composed-of"
                    and isinstance(resource, str)
                    and "/Questionnaire/" in resource
                ):
                    return resource
    return None


def answers_questionnaire(response: Mapping[str, Any], canonical: str) -> bool:
    """Whether ``response.questionnaire`` is ``canonical`` (``url|version``, or its url)."""
    given = response.get("questionnaire")
    return isinstance(given, str) and given in (canonical, canonical.partition("|")[0])


def _questionnaire_link_ids(repository: Repository, canonical: str) -> set[str] | None:
    url, _, version = canonical.partition("|")
    params = [("url", url), *([("version", version)] if version else [])]
    found = _search(repository, "Questionnaire", *params)
    if not found:
        return None
    link_ids: set[str] = set()

    def walk(items: Any) -> None:
        for item in items or []:
            if isinstance(item, dict):
                link_ids.add(str(item.get("linkId")))
                walk(item.get("item"))

    walk(_document(found[-1]).get("item"))
    return link_ids


def check_link_ids(repository: Repository, response: Mapping[str, Any], canonical: str) -> None:
    """422 for an item the check-in Questionnaire (when stored) does not have."""
    known = _questionnaire_link_ids(repository, canonical)
    if known is None:
        return
    unknown = sorted({str(i.get("linkId")) for i in response_items(response.get("item"))} - known)
    if unknown:
        raise Unprocessable(
            "The check-in answers questions its Questionnaire does not ask: " + ", ".join(unknown),
            issues=[
                issue(f"{link} is not an item of {canonical}", code="invalid", expression=link)
                for link in unknown
            ],
        )


def read_plan(repository: Repository, care_plan_id: str) -> dict[str, Any]:
    """The plan (404, 410); 422 unless it is active (a check-in is for a plan in force)."""
    plan = _document(repository.read("CarePlan", care_plan_id))
    if plan.get("status") not in _PLAN_IN_FORCE:
        message = f"CarePlan/{care_plan_id} is {plan.get('status')}; only an active plan checks in"
        raise Unprocessable(
            message, issues=[issue(message, code="business-rule", expression="CarePlan.status")]
        )
    return plan


# -- preparing the response ------------------------------------------------------------------


def _refuse(message: str, expression: str) -> Unprocessable:
    return Unprocessable(message, issues=[issue(message, code="invalid", expression=expression)])


def prepare_response(
    care_plan_id: str,
    care_plan: Mapping[str, Any],
    questionnaire: str,
    questionnaire_response: Mapping[str, Any],
    now: datetime,
) -> dict[str, Any]:
    """The response as it will be stored: what the portal left out filled in from the plan
    (questionnaire, status completed, subject and author the patient, basedOn the plan, authored
    now, the check-in profile); 422 for what contradicts the plan."""
    if questionnaire_response.get("resourceType") != "QuestionnaireResponse":
        raise _refuse("A check-in is a QuestionnaireResponse", "resourceType")
    response = {k: v for k, v in questionnaire_response.items() if k not in ("id", "meta")}
    subject = care_plan.get("subject") or {}
    patient = _local_id(subject, "Patient")
    if patient is None:
        raise _refuse(f"CarePlan/{care_plan_id} has no Patient subject", "CarePlan.subject")
    given_questionnaire = response.setdefault("questionnaire", questionnaire)
    if not answers_questionnaire(response, questionnaire):
        raise _refuse(
            f"questionnaire {given_questionnaire!r} is not this plan's check-in ({questionnaire})",
            "QuestionnaireResponse.questionnaire",
        )
    response.setdefault("status", "completed")
    if response["status"] not in _ANSWERED_STATUSES:
        raise _refuse(
            f"A check-in is evaluated when completed, not {response['status']!r}",
            "QuestionnaireResponse.status",
        )
    response.setdefault("subject", {"reference": f"Patient/{patient}"})
    if _local_id(response["subject"], "Patient") != patient:
        raise _refuse(
            f"The check-in's subject must be the plan's patient, Patient/{patient}",
            "QuestionnaireResponse.subject",
        )
    based_on = list(response.get("basedOn") or [])
    if care_plan_id not in based_on_plans(response):
        based_on.append({"reference": f"CarePlan/{care_plan_id}"})
    response["basedOn"] = based_on
    response.setdefault("authored", format_instant(now))
    response.setdefault("author", {"reference": f"Patient/{patient}"})
    response["meta"] = {"profile": [CHECK_IN_QUESTIONNAIRE_RESPONSE]}
    return response


def check_response(response: Mapping[str, Any]) -> None:
    """The base spec (``validate_resource``) and the check-in profile; 422 with each issue."""
    validate_resource(dict(response))
    profile = find_profile(CHECK_IN_QUESTIONNAIRE_RESPONSE)
    assert profile is not None
    problems = [i for i in validate_against_profile(response, profile) if i.severity == "error"]
    if problems:
        raise Unprocessable(
            "The check-in does not meet the check-in profile: "
            + "; ".join(p.diagnostics for p in problems),
            issues=[
                issue(p.diagnostics, code="invalid", expression=p.expression) for p in problems
            ],
        )


# -- storing ---------------------------------------------------------------------------------


@dataclass
class CheckInOutcome:
    """What a check-in stored; ``created`` False: an earlier identical check-in was found."""

    created: bool
    key: str
    result: CheckInResult
    questionnaire_response: StoredResource
    observations: list[StoredResource]
    communication: StoredResource | None
    flag: StoredResource | None

    def resources(self) -> list[StoredResource]:
        extra = [r for r in (self.communication, self.flag) if r is not None]
        return [self.questionnaire_response, *self.observations, *extra]


def _claimed(repository: Repository, key: str) -> str | None:
    winner = repository.connection.execute(
        select(_check_in.c.questionnaireresponse_id).where(_check_in.c.key == key)
    ).scalar_one_or_none()
    return str(winner) if winner is not None else None


def _claim(
    repository: Repository, key: str, care_plan_id: str, response_id: str, moment: datetime
) -> str | None:
    """Insert the check-in row; None when ours, else the response id of the one that won."""
    values = {
        "key": key,
        "careplan_id": care_plan_id,
        "questionnaireresponse_id": response_id,
        "created": to_naive_utc(moment),
    }
    return claim_row(
        repository.connection, _check_in, values, unique=("key",), winner="questionnaireresponse_id"
    )


def _found(
    repository: Repository, care_plan: Mapping[str, Any], key: str, response_id: str
) -> CheckInOutcome:
    """The check-in stored earlier under ``key``, as it is now."""
    stored = repository.read("QuestionnaireResponse", response_id)
    reference = f"QuestionnaireResponse/{response_id}"
    observations = _search(repository, "Observation", ("derived-from", reference))
    token = f"{CHECK_IN_KEY_SYSTEM}|{key}"
    communications = _search(repository, "Communication", ("identifier", token))
    flags = _search(repository, "Flag", ("identifier", token))
    result = evaluate_check_in(care_plan, _document(stored))
    return CheckInOutcome(
        False,
        key,
        result,
        stored,
        observations,
        communications[0] if communications else None,
        flags[0] if flags else None,
    )


def record_check_in(
    repository: Repository,
    care_plan_id: str,
    questionnaire_response: Mapping[str, Any],
    *,
    now: datetime,
    new_id: Callable[[], str],
) -> CheckInOutcome:
    """Store a check-in of ``CarePlan/{care_plan_id}`` and what it shows, once (module doc).

    Everything is checked before anything is written: 404/410 for the plan, 422 for a plan not
    active, a response that contradicts the plan (another patient, another questionnaire, not
    completed), misses the check-in profile, or holds an answer that cannot be judged.
    """
    plan = read_plan(repository, care_plan_id)
    questionnaire = check_in_questionnaire(repository, plan)
    if questionnaire is None:
        raise _refuse(
            f"CarePlan/{care_plan_id} has no check-in Questionnaire (its template names none)",
            "CarePlan.instantiatesCanonical",
        )
    response = prepare_response(care_plan_id, plan, questionnaire, questionnaire_response, now)
    check_response(response)
    check_link_ids(repository, response, questionnaire)
    result = evaluate_check_in(plan, response)
    key = check_in_key(care_plan_id, response)
    earlier = _claimed(repository, key)
    if earlier is not None:
        return _found(repository, plan, key, earlier)
    response_id = new_id()
    winner = _claim(repository, key, care_plan_id, response_id, now)
    if winner is not None:
        return _found(repository, plan, key, winner)
    if "identifier" not in response:
        response["identifier"] = {"system": CHECK_IN_KEY_SYSTEM, "value": key}
    stored = repository.create(response, resource_id=response_id)
    return _derive(repository, plan, care_plan_id, stored, response, result, key, now, new_id)


def record_stored_check_in(
    repository: Repository,
    care_plan_id: str,
    stored: StoredResource,
    *,
    now: datetime,
    new_id: Callable[[], str],
) -> CheckInOutcome:
    """The same for a response already stored (a plain create): derive, once, or nothing.

    The response must answer the plan's check-in Questionnaire and meet the check-in profile
    (422 otherwise, and the caller's transaction, the create included, is rolled back). A
    second identical response stays stored as the client's record; nothing is derived from it.
    """
    plan = read_plan(repository, care_plan_id)
    questionnaire = check_in_questionnaire(repository, plan)
    response = _document(stored)
    if questionnaire is None or not answers_questionnaire(response, questionnaire):
        raise _refuse(
            f"QuestionnaireResponse/{stored.id} does not answer the check-in of"
            f" CarePlan/{care_plan_id}",
            "QuestionnaireResponse.questionnaire",
        )
    patient = _local_id(plan.get("subject"), "Patient")
    if patient is None or _local_id(response.get("subject"), "Patient") != patient:
        raise _refuse(
            f"The check-in's subject must be the plan's patient, Patient/{patient}",
            "QuestionnaireResponse.subject",
        )
    check_response(response)
    check_link_ids(repository, response, questionnaire)
    result = evaluate_check_in(plan, response)
    key = check_in_key(care_plan_id, response)
    winner = _claim(repository, key, care_plan_id, stored.id, now)
    if winner is not None:
        outcome = _found(repository, plan, key, winner)
        return outcome
    return _derive(repository, plan, care_plan_id, stored, response, result, key, now, new_id)


def _derive(
    repository: Repository,
    plan: Mapping[str, Any],
    care_plan_id: str,
    stored: StoredResource,
    response: Mapping[str, Any],
    result: CheckInResult,
    key: str,
    now: datetime,
    new_id: Callable[[], str],
) -> CheckInOutcome:
    now_text = format_instant(now)
    effective = str(response.get("authored") or now_text)
    links = CheckInLinks(
        patient=dict(response["subject"]),
        care_plan=f"CarePlan/{care_plan_id}",
        response=f"QuestionnaireResponse/{stored.id}",
        effective=effective,
        issued=now_text,
        key=key,
    )
    observations = []
    for document in observations_of(result.answers, links):
        validate_resource(document)
        observations.append(repository.create(document, resource_id=new_id()))
    communication = flag = None
    if result.red_flag:
        about = [links.response, *(f"Observation/{o.id}" for o in observations)]
        alert = alert_communication(plan, result, links, about)
        validate_resource(alert)
        communication = repository.create(alert, resource_id=new_id())
        document = alert_flag(result, links, [*about, f"Communication/{communication.id}"])
        validate_resource(document)
        flag = repository.create(document, resource_id=new_id())
    return CheckInOutcome(True, key, result, stored, observations, communication, flag)


# -- the derived resources (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class CheckInLinks:
    """What every derived resource points at."""

    patient: dict[str, Any]
    care_plan: str
    response: str
    effective: str
    issued: str
    key: str


def observations_of(answers: CheckInAnswers, links: CheckInLinks) -> list[dict[str, Any]]:
    """Body temperature (R4 bodytemp) and pain severity Observations of the answers given."""
    common = {
        "status": "final",
        "subject": links.patient,
        "effectiveDateTime": links.effective,
        "issued": links.issued,
        "performer": [links.patient],
        "basedOn": [{"reference": links.care_plan}],
        "derivedFrom": [{"reference": links.response}],
    }
    observations = []
    temperature = answers.temperature_quantity()
    if temperature is not None:
        observations.append(
            {
                "resourceType": "Observation",
                "meta": {"profile": [BODYTEMP_PROFILE]},
                "status": common["status"],
                "category": [{"coding": [dict(VITAL_SIGNS)], "text": "Vital Signs"}],
                "code": {"coding": [dict(BODY_TEMPERATURE)], "text": "Body temperature"},
                **{k: v for k, v in common.items() if k != "status"},
                "valueQuantity": temperature,
            }
        )
    if answers.pain_score is not None:
        observations.append(
            {
                "resourceType": "Observation",
                "status": common["status"],
                "category": [{"coding": [dict(SURVEY)], "text": "Survey"}],
                "code": {"coding": [dict(PAIN_SEVERITY)], "text": "Pain severity (0-10)"},
                **{k: v for k, v in common.items() if k != "status"},
                # clinical-codes.md: the LOINC answer list for 0-10 is unverified; a {score}
                # Quantity instead, as the R4 examples write scores.
                "valueQuantity": {
                    "value": answers.pain_score,
                    "unit": "score",
                    "system": UCUM,
                    "code": "{score}",
                },
            }
        )
    return observations


def alert_recipients(care_plan: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The plan's author, contributors and care teams (local references, each once)."""
    candidates = [care_plan.get("author"), *(care_plan.get("contributor") or [])]
    candidates += list(care_plan.get("careTeam") or [])
    seen: dict[str, dict[str, Any]] = {}
    for candidate in candidates:
        if isinstance(candidate, dict) and isinstance(candidate.get("reference"), str):
            seen.setdefault(candidate["reference"], {"reference": candidate["reference"]})
    return list(seen.values())


def alert_payload(result: CheckInResult, links: CheckInLinks) -> list[str]:
    """The alert's texts: which signs, why, and all the answers."""
    lines = [
        f"Daily check-in of {links.effective} shows"
        f" {len(result.triggered)} warning sign{'s' if len(result.triggered) != 1 else ''}"
        f" (priority {result.priority}):"
    ]
    lines += [f"{s.text} ({s.priority}): {s.reason}." for s in result.triggered]
    lines.append(f"Answers: {result.answers_text()}.")
    lines.append(f"Advice shown to the patient: {result.advice}")
    return lines


def alert_communication(
    care_plan: Mapping[str, Any], result: CheckInResult, links: CheckInLinks, about: list[str]
) -> dict[str, Any]:
    """The alert to the care team (https://hl7.org/fhir/R4/communication.html)."""
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [{"system": CHECK_IN_KEY_SYSTEM, "value": links.key}],
        "basedOn": [{"reference": links.care_plan}],
        "status": "in-progress",
        "category": [{"coding": [dict(ALERT)], "text": "Alert"}],
        "priority": result.priority,
        "subject": links.patient,
        "about": [{"reference": reference} for reference in about],
        "sent": links.issued,
        "reasonCode": [{"text": s.text} for s in result.triggered],
        "payload": [{"contentString": text} for text in alert_payload(result, links)],
    }
    recipients = alert_recipients(care_plan)
    if recipients:
        communication["recipient"] = recipients
    return communication


def alert_flag(result: CheckInResult, links: CheckInLinks, details: list[str]) -> dict[str, Any]:
    """The Flag on the patient's record until the care team acts (R4 Flag; ``flag-detail``
    points at the plan, the answers, the Observations and the Communication)."""
    signs = "; ".join(s.text for s in result.triggered)
    return {
        "resourceType": "Flag",
        "extension": [
            {"url": FLAG_DETAIL_URL, "valueReference": {"reference": reference}}
            for reference in [links.care_plan, *details]
        ],
        "identifier": [{"system": CHECK_IN_KEY_SYSTEM, "value": links.key}],
        "status": "active",
        "code": {"text": f"Warning sign at the daily check-in ({result.priority}): {signs}"},
        "subject": links.patient,
        "period": {"start": links.issued},
    }


__all__ = [
    "CHECK_IN_KEY_SYSTEM",
    "CheckInAnswers",
    "CheckInOutcome",
    "CheckInResult",
    "TriggeredSign",
    "WarningSign",
    "based_on_plans",
    "check_in_key",
    "check_in_questionnaire",
    "evaluate_check_in",
    "record_check_in",
    "record_stored_check_in",
    "warning_signs",
]
