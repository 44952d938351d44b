"""``evaluate_check_in`` and ``check_in_key``, pure: warning signs against the answers."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from careplan_fhir.apply.engine import TEMPLATE_ACTION_URL, WARNING_SIGN_URL
from careplan_fhir.errors import Unprocessable
from careplan_fhir.workflows.check_in import (
    NO_SIGN_ADVICE,
    check_in_key,
    evaluate_check_in,
    warning_signs,
)

GOLDEN = Path(__file__).parent.parent / "examples" / "apply" / "golden"
UCUM = "http://unitsofmeasure.org"


def golden_plan(stem: str = "vertebroplasty") -> dict[str, Any]:
    bundle = json.loads((GOLDEN / f"{stem}.json").read_text())
    plan: dict[str, Any] = bundle["entry"][0]["resource"]
    assert plan["resourceType"] == "CarePlan"
    return plan


def answers(
    temperature: str | None = None,
    unit: str | None = "Cel",
    pain: int | None = None,
    authored: str = "2026-03-02T08:00:00Z",
    **signs: bool,
) -> dict[str, Any]:
    """A check-in response; ``warn_6=True`` answers yes to sign ``warn-6``."""
    items: list[dict[str, Any]] = []
    if temperature is not None:
        items.append({"linkId": "body-temperature", "answer": [{"valueDecimal": temperature}]})
        if unit is not None:
            coding = {"system": UCUM, "code": unit}
            items.append({"linkId": "body-temperature-unit", "answer": [{"valueCoding": coding}]})
    if pain is not None:
        items.append({"linkId": "pain-score", "answer": [{"valueInteger": pain}]})
    if signs:
        items.append(
            {
                "linkId": "warning-signs",
                "item": [
                    {
                        "linkId": f"sign-{name.replace('_', '-')}",
                        "answer": [{"valueBoolean": value}],
                    }
                    for name, value in signs.items()
                ],
            }
        )
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "authored": authored,
        "item": items,
    }


def plan_with_sign(expression: str, priority: str = "urgent", text: str = "Sign") -> dict[str, Any]:
    """A plan holding one warning sign with ``expression`` as its bound condition."""
    return {
        "resourceType": "CarePlan",
        "activity": [
            {
                "extension": [{"url": TEMPLATE_ACTION_URL, "valueString": "warn-1"}],
                "detail": {
                    "extension": [
                        {
                            "url": WARNING_SIGN_URL,
                            "extension": [
                                {"url": "priority", "valueCode": priority},
                                {
                                    "url": "condition",
                                    "valueExpression": {
                                        "language": "text/fhirpath",
                                        "expression": expression,
                                    },
                                },
                            ],
                        }
                    ],
                    "code": {"text": text},
                    "status": "not-started",
                    "description": f"{text}. Call your care team.",
                },
            }
        ],
    }


def test_the_plan_signs_are_read_with_priority_and_bound_condition() -> None:
    signs = warning_signs(golden_plan())
    by_id = {s.action_id: s for s in signs}
    assert [s.action_id for s in signs] == [f"warn-{n}" for n in range(1, 9)]
    fever = by_id["warn-2"]
    assert fever.priority == "urgent"
    assert fever.condition is not None
    assert (fever.condition.variable, fever.condition.comparator) == ("temperature", ">=")
    assert (str(fever.condition.threshold), fever.condition.unit) == ("38.0", "Cel")
    assert by_id["warn-6"].priority == "stat"
    assert by_id["warn-6"].condition is None


def test_a_normal_check_in_shows_no_sign() -> None:
    result = evaluate_check_in(golden_plan(), answers("37.2", pain=3, warn_1=False, warn_6=False))
    assert not result.red_flag
    assert result.triggered == ()
    assert (result.priority, result.urgency) == (None, None)
    assert result.advice == NO_SIGN_ADVICE


@pytest.mark.parametrize(
    ("temperature", "unit", "shown"),
    [
        ("38.0", "Cel", True),  # at the threshold: ">="
        ("37.9", "Cel", False),
        ("100.4", "[degF]", True),  # exactly 38.0 °C, compared without rounding
        ("100.3", "[degF]", False),
        ("101.5", "[degF]", True),
    ],
)
def test_the_temperature_is_compared_in_the_unit_the_patient_used(
    temperature: str, unit: str, shown: bool
) -> None:
    result = evaluate_check_in(golden_plan(), answers(temperature, unit))
    assert result.red_flag is shown
    if shown:
        (sign,) = result.triggered
        assert sign.action_id == "warn-2"
        assert sign.priority == "urgent" and sign.urgency == "call-care-team"
        symbol = "°F" if unit == "[degF]" else "°C"
        assert f"temperature {temperature} {symbol}" in sign.reason
        assert "at or above 38.0 °C (100.4 °F)" in sign.reason


def test_a_clinician_threshold_in_fahrenheit_is_compared_with_a_celsius_answer() -> None:
    plan = plan_with_sign("%temperature >= 100.4 '[degF]'", text="Fever")
    assert evaluate_check_in(plan, answers("38.0", "Cel")).red_flag
    assert not evaluate_check_in(plan, answers("37.9", "Cel")).red_flag


def test_an_emergency_sign_comes_first_with_911_advice() -> None:
    result = evaluate_check_in(golden_plan(), answers("38.5", warn_6=True, warn_3=False))
    assert [s.action_id for s in result.triggered] == ["warn-6", "warn-2"]
    assert result.priority == "stat"
    assert result.urgency == "emergency"
    assert result.advice.startswith("Call 911 now. ")
    assert "Sudden chest pain or trouble catching your breath" in result.advice
    assert result.triggered[0].reason == "answered yes"


def test_the_advice_carries_no_number_the_plan_does_not() -> None:
    plan = golden_plan()
    result = evaluate_check_in(plan, answers("39.4", warn_6=True))
    plan_numbers = set(re.findall(r"\d+(?:\.\d+)?", json.dumps(plan, ensure_ascii=False)))
    advice_numbers = set(re.findall(r"\d+(?:\.\d+)?", result.advice))
    assert advice_numbers - plan_numbers == {"911"}


@pytest.mark.parametrize(
    ("expression", "pain", "shown"),
    [
        ("%pain_score > 7", 8, True),
        ("%pain_score > 7", 7, False),
        ("%pain_score >= 8 '{score}'", 8, True),
        ("%pain_score >= 8 '{score}'", 0, False),
    ],
)
def test_pain_follows_the_sign_condition(expression: str, pain: int, shown: bool) -> None:
    result = evaluate_check_in(plan_with_sign(expression, text="Bad pain"), answers(pain=pain))
    assert result.red_flag is shown
    if shown:
        assert result.triggered[0].reason.startswith(f"pain {pain} out of 10")


def test_without_a_pain_condition_a_high_score_is_no_sign() -> None:
    assert not evaluate_check_in(golden_plan(), answers(pain=10)).red_flag


@pytest.mark.parametrize(
    ("response", "expression"),
    [
        (answers("38.5", unit=None), "body-temperature-unit"),
        (answers("38.5", unit="K"), "body-temperature-unit"),
        (answers(pain=11), "pain-score"),
        (answers(pain=-1), "pain-score"),
        (answers(warn_99=True), "sign-warn-99"),
    ],
)
def test_an_answer_that_cannot_be_judged_is_refused(
    response: dict[str, Any], expression: str
) -> None:
    with pytest.raises(Unprocessable) as raised:
        evaluate_check_in(golden_plan(), response)
    assert [i["expression"] for i in raised.value.issues] == [[expression]]


def test_a_yes_no_answer_must_be_a_boolean() -> None:
    response = answers(warn_6=True)
    response["item"][0]["item"][0]["answer"] = [{"valueString": "yes"}]
    with pytest.raises(Unprocessable):
        evaluate_check_in(golden_plan(), response)


def test_the_key_is_the_plan_the_day_and_the_answers() -> None:
    base = answers("38.50", pain=3, warn_6=False)
    key = check_in_key("plan-1", base)
    same = copy.deepcopy(base)
    same["item"].reverse()
    same["item"][-1]["answer"][0]["valueDecimal"] = "38.5"  # the temperature, written otherwise
    same["authored"] = "2026-03-02T08:00:05Z"  # a double tap a few seconds later
    same["id"] = "another"
    assert check_in_key("plan-1", same) == key
    assert check_in_key("plan-2", base) != key
    assert check_in_key("plan-1", answers("38.6", pain=3, warn_6=False)) != key
    assert check_in_key("plan-1", answers("38.50", pain=3, warn_6=True)) != key
    next_day = answers("38.50", pain=3, warn_6=False, authored="2026-03-03T08:00:00Z")
    assert check_in_key("plan-1", next_day) != key
