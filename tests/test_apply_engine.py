"""The pure ``$apply`` engine: parameters, rendering, timing, prohibitions, goals, determinism."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from careplan_fhir.apply.engine import (
    ACTIVITY_TIMING_URL,
    TEMPLATE_ACTION_URL,
    WARNING_SIGN_URL,
    add_duration,
    apply_plan_definition,
    parse_parameter,
    quantity_text,
    temperature_text,
)
from careplan_fhir.apply.model import ApplyContext, ApplyError, ApplyResult
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.models import validate_resource

GOLDEN = Path(__file__).parent.parent / "examples" / "guidance" / "golden"
START = datetime(2026, 3, 1, 14, 30, tzinfo=UTC)
NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
CELSIUS_38 = {"value": Decimal("38.0"), "code": "Cel"}


def template(stem: str, status: str = "active") -> tuple[dict[str, Any], dict[str, Any]]:
    resources = [
        e["resource"] for e in jsonio.loads((GOLDEN / f"{stem}.bundle.json").read_bytes())["entry"]
    ]
    plan = resources[0] | {"status": status}
    definitions = {}
    for r in resources:
        if r["resourceType"] == "ActivityDefinition":
            definitions[f"{r['url']}|{r['version']}"] = r
    return plan, definitions


def context(**overrides: Any) -> ApplyContext:
    counter = itertools.count(1)
    values: dict[str, Any] = {
        "subject": "Patient/p1",
        "now": NOW,
        "start": START,
        "new_id": lambda kind: f"{kind.lower()}-{next(counter)}",
        "encounter": "Encounter/e1",
        "practitioner": "Practitioner/dr1",
        "parameters": {"fever_threshold": CELSIUS_38},
    }
    values.update(overrides)
    return ApplyContext(**values)


def apply(stem: str = "vertebroplasty", **overrides: Any) -> ApplyResult:
    plan, definitions = template(stem)
    return apply_plan_definition(plan, definitions, context(**overrides))


def issues_of(stem: str, **overrides: Any) -> dict[str, str]:
    with pytest.raises(ApplyError) as caught:
        apply(stem, **overrides)
    return {i.name: i.message for i in caught.value.issues}


def activity(result: ApplyResult, action_id: str) -> dict[str, Any]:
    for item in result.care_plan["activity"]:
        if item["extension"][0] == {"url": TEMPLATE_ACTION_URL, "valueString": action_id}:
            return dict(item)
    raise AssertionError(action_id)


def task(result: ApplyResult, action_id: str) -> dict[str, Any]:
    reference = activity(result, action_id)["reference"]["reference"]
    return next(t for t in result.tasks if f"Task/{t['id']}" == reference)


# -- parameters -------------------------------------------------------------------------------


def test_missing_required_parameter_is_named() -> None:
    issues = issues_of("vertebroplasty", parameters={})
    assert set(issues) == {"fever_threshold"}
    assert "required" in issues["fever_threshold"]


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"value": Decimal("38"), "code": "K"}, "'K'"),
        ({"value": Decimal("38")}, "unit"),
        ({"value": "hot", "code": "Cel"}, "numeric"),
        ("38.0", "Quantity"),
        ({"value": Decimal("38"), "code": "Cel", "system": "http://snomed.info/sct"}, "UCUM"),
        ({"value": Decimal("3.8"), "code": "Cel"}, "plausible"),
        ({"value": Decimal("38"), "code": "[degF]"}, "plausible"),
    ],
)
def test_wrong_type_or_unit_is_named(value: Any, needle: str) -> None:
    issues = issues_of("vertebroplasty", parameters={"fever_threshold": value})
    assert set(issues) == {"fever_threshold"}
    assert needle in issues["fever_threshold"]


def test_unknown_parameter_and_inactive_template_are_reported_together() -> None:
    plan, definitions = template("vertebroplasty", status="draft")
    with pytest.raises(ApplyError) as caught:
        apply_plan_definition(
            plan, definitions, context(parameters={"fever_threshold": CELSIUS_38, "fevr": 1})
        )
    names = {i.name for i in caught.value.issues}
    assert names == {"status", "fevr"}
    plan, definitions = template("vertebroplasty", status="retired")
    with pytest.raises(ApplyError, match="retired"):
        apply_plan_definition(plan, definitions, context())


def test_fahrenheit_input_and_unit_forms_are_accepted() -> None:
    for value in (
        {"value": Decimal("100.4"), "code": "[degF]"},
        {"value": 100.4, "unit": "°F"},
        {"value": Decimal("100.4"), "unit": "[degF]", "system": "http://unitsofmeasure.org"},
        parse_parameter("100.4[degF]"),
    ):
        result = apply(parameters={"fever_threshold": value})
        assert "100.4 °F (38.0 °C) or higher" in result.care_plan["text"]["div"]
        sign = activity(result, "warn-2")["detail"]
        condition = sign["extension"][0]["extension"][1]["valueExpression"]
        assert condition["expression"] == "%temperature >= 100.4 '[degF]'"


def test_optional_parameter_falls_back_to_default_or_takes_the_clinicians_value() -> None:
    default = apply()
    walking = task(default, "inst-3")
    assert walking["executionPeriod"]["start"] == "2026-03-02T14:30:00Z"
    bound = default.care_plan["extension"]
    walking_bound = next(e for e in bound if e["extension"][0]["valueCode"] == "walking_after")
    assert walking_bound["extension"][2] == {"url": "defaulted", "valueBoolean": True}

    later = apply(
        parameters={"fever_threshold": CELSIUS_38, "walking_after": parse_parameter("48 h")}
    )
    walking = task(later, "inst-3")
    assert walking["executionPeriod"]["start"] == "2026-03-03T14:30:00Z"
    assert walking["restriction"]["period"]["start"] == "2026-03-03T14:30:00Z"
    assert "after 48 hours" in walking["description"]
    assert "24 hours" not in walking["description"]


def test_parse_parameter() -> None:
    assert parse_parameter("38.0Cel") == {"value": Decimal("38.0"), "code": "Cel"}
    assert parse_parameter(" 100.4 [degF] ") == {"value": Decimal("100.4"), "code": "[degF]"}
    assert parse_parameter("38") == {"value": Decimal("38")}
    assert parse_parameter("hot") == "hot"
    assert parse_parameter("3", "integer") == 3
    assert parse_parameter("text", "string") == "text"


# -- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code", "text"),
    [
        ("38.0", "Cel", "38.0 °C (100.4 °F)"),
        ("38", "Cel", "38.0 °C (100.4 °F)"),
        ("38.5", "Cel", "38.5 °C (101.3 °F)"),
        ("37.8", "Cel", "37.8 °C (100.0 °F)"),
        ("100.4", "[degF]", "100.4 °F (38.0 °C)"),
        ("101", "[degF]", "101.0 °F (38.3 °C)"),
    ],
)
def test_temperatures_in_both_units(value: str, code: str, text: str) -> None:
    assert temperature_text({"value": Decimal(value), "code": code}) == text


def test_quantity_words() -> None:
    assert quantity_text({"value": 24, "code": "h"}) == "24 hours"
    assert quantity_text({"value": 1, "code": "wk"}) == "1 week"
    assert quantity_text({"value": Decimal("8"), "code": "{score}"}) == "8 out of 10"


def test_fever_sign_is_rendered_with_the_bound_threshold() -> None:
    result = apply()
    sign = activity(result, "warn-2")["detail"]
    assert sign["status"] == "not-started"
    assert sign["description"] == (
        "Fever. Call your care team if your temperature is 38.0 °C (100.4 °F) or higher."
    )
    parts = {p["url"]: p for p in sign["extension"][0]["extension"]}
    assert sign["extension"][0]["url"] == WARNING_SIGN_URL
    assert parts["priority"]["valueCode"] == "urgent"
    assert parts["condition"]["valueExpression"]["expression"] == "%temperature >= 38.0 'Cel'"
    communication = result.communications[0]
    text = "\n".join(p["contentString"] for p in communication["payload"])
    assert "Call your care team if your temperature is 38.0 °C (100.4 °F) or higher." in text


def test_no_threshold_is_invented() -> None:
    """A sign without a measurable condition gets no number; a fixed one is not repeated."""
    result = apply()
    pain = activity(result, "warn-1")["detail"]
    assert pain["description"] == "Your pain medicine is not helping. Call your care team."
    assert len(pain["extension"][0]["extension"]) == 1  # priority only
    fixed = apply("kyphoplasty", parameters={})
    fever = next(
        a["detail"] for a in fixed.care_plan["activity"] if "fever" in str(a.get("detail", ""))
    )
    assert fever["description"] == "A fever of 38.0 °C (100.4 °F) or higher. Call your care team."


def test_narrative_is_readable_xhtml() -> None:
    from lxml import etree

    div = apply().care_plan["text"]["div"]
    root = etree.fromstring(div.encode("utf-8"))
    assert root.tag == "{http://www.w3.org/1999/xhtml}div"
    headings = [h.text for h in root.iter("{http://www.w3.org/1999/xhtml}h3")]
    assert headings == [
        "Your goals",
        "What to do",
        "What not to do",
        "When to get help",
        "What to have at home",
    ]


# -- timing -----------------------------------------------------------------------------------


def test_offsets_and_durations_become_dates() -> None:
    result = apply()
    shower = task(result, "inst-14")
    assert shower["executionPeriod"] == {"start": "2026-03-02T14:30:00Z"}
    assert shower["restriction"] == {"period": {"start": "2026-03-02T14:30:00Z"}}
    lifting = activity(result, "inst-4")["detail"]  # "for 2 weeks"
    assert lifting["scheduledPeriod"] == {
        "start": "2026-03-01T14:30:00Z",
        "end": "2026-03-15T14:30:00Z",
    }
    plain = task(result, "inst-7")
    assert plain["executionPeriod"] == {"start": "2026-03-01T14:30:00Z"}
    assert "restriction" not in plain


def test_repeating_instructions_carry_their_timing() -> None:
    result = apply("implanted-port")
    look = activity(result, "inst-10")  # every day in the first week
    assert "detail" not in look
    timing = look["extension"][1]
    assert timing["url"] == ACTIVITY_TIMING_URL
    repeat = timing["valueTiming"]["repeat"]
    assert repeat["frequency"] == 1
    assert repeat["periodUnit"] == "d"
    assert repeat["boundsPeriod"] == {
        "start": "2026-03-01T14:30:00Z",
        "end": "2026-03-08T14:30:00Z",
    }
    look_task = task(result, "inst-10")
    assert look_task["extension"][1] == timing
    assert look_task["executionPeriod"]["end"] == "2026-03-08T14:30:00Z"
    cold_pack = task(result, "inst-4")  # "for 15 minutes at a time": each time, not the span
    assert "end" not in cold_pack["executionPeriod"]
    assert cold_pack["extension"][1]["valueTiming"]["repeat"]["duration"] == 15


def test_add_duration_follows_the_calendar_for_months() -> None:
    moment = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert add_duration(moment, {"value": 1, "code": "mo"}) == datetime(
        2026, 2, 28, 12, 0, tzinfo=UTC
    )
    assert add_duration(moment, {"value": 3, "code": "mo"}) == datetime(
        2026, 4, 30, 12, 0, tzinfo=UTC
    )
    assert add_duration(moment, {"value": Decimal("1.5"), "code": "d"}) == datetime(
        2026, 2, 2, 0, 0, tzinfo=UTC
    )


# -- prohibitions, goals, tasks, the plan -----------------------------------------------------


def test_prohibitions_are_do_not_perform_details() -> None:
    plan, _ = template("vertebroplasty")
    result = apply()
    prohibited = [a for a in plan["action"] if "definitionCanonical" in a]
    assert prohibited
    for action in prohibited:
        item = activity(result, action["id"])
        assert "reference" not in item
        detail = item["detail"]
        assert detail["doNotPerform"] is True
        assert detail["kind"] == "Task"
        assert detail["status"] == "not-started"
        assert detail["instantiatesCanonical"] == [action["definitionCanonical"]]
        assert detail["description"] == action["description"]
    bath = activity(result, "inst-15")["detail"]
    assert bath["extension"][0]["valueString"] == "your care team says the site has healed"
    assert "end" not in bath["scheduledPeriod"]
    no_task_for = {a["id"] for a in prohibited}
    assert not [t for t in result.tasks if t["extension"][0]["valueString"] in no_task_for]


def test_goals() -> None:
    plan, _ = template("vertebroplasty")
    result = apply()
    assert [g["description"] for g in result.goals] == [g["description"] for g in plan["goal"]]
    for goal in result.goals:
        assert goal["lifecycleStatus"] == "active"
        assert goal["subject"] == {"reference": "Patient/p1"}
        assert goal["startDate"] == "2026-03-01"
        assert "target" not in goal
    assert result.care_plan["goal"] == [{"reference": f"Goal/{g['id']}"} for g in result.goals]


def test_goal_targets_only_where_the_template_has_them() -> None:
    plan, definitions = template("vertebroplasty")
    plan["goal"][0]["target"] = [
        {
            "measure": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
            "detailQuantity": {
                "value": 3,
                "system": "http://unitsofmeasure.org",
                "code": "{score}",
            },
            "due": {
                "value": 2,
                "unit": "weeks",
                "system": "http://unitsofmeasure.org",
                "code": "wk",
            },
        }
    ]
    result = apply_plan_definition(plan, definitions, context())
    target = result.goals[0]["target"][0]
    assert target["dueDate"] == "2026-03-15"
    assert target["detailQuantity"]["value"] == 3
    assert all("target" not in g for g in result.goals[1:])
    validate_resource(result.goals[0])


def test_tasks_and_plan_shape() -> None:
    result = apply()
    care_plan = result.care_plan
    assert care_plan["status"] == "active"
    assert care_plan["intent"] == "plan"
    assert care_plan["category"][0]["coding"][0]["code"] == "assess-plan"
    assert care_plan["category"][1]["coding"][0]["code"] == "734163000"
    assert care_plan["period"] == {"start": "2026-03-01T14:30:00Z"}
    assert care_plan["created"] == "2026-03-01T09:00:00Z"
    assert care_plan["author"] == {"reference": "Practitioner/dr1"}
    assert care_plan["instantiatesCanonical"] == [
        "https://careplan-fhir.org/fhir/PlanDefinition/going-home-after-vertebroplasty|0.1.0"
    ]
    for item in result.tasks:
        assert item["status"] == "requested"
        assert item["intent"] == "plan"
        assert item["for"] == item["owner"] == {"reference": "Patient/p1"}
        assert item["basedOn"] == [{"reference": f"CarePlan/{care_plan['id']}"}]
        assert item["authoredOn"] == "2026-03-01T09:00:00Z"
        assert item["requester"] == {"reference": "Practitioner/dr1"}
        assert item["encounter"] == {"reference": "Encounter/e1"}
    supplies = [t for t in result.tasks if t["description"].startswith("Have at home: ")]
    assert len(supplies) == 4
    communication = result.communications[0]
    assert communication["category"][0]["coding"][0]["code"] == "instruction"
    assert communication["status"] == "completed"
    assert communication["recipient"] == [{"reference": "Patient/p1"}]
    assert communication["sent"] == "2026-03-01T09:00:00Z"
    for resource in result.resources():
        validate_resource(resource)


def test_addresses_and_organization() -> None:
    result = apply(addresses=("Condition/c1",), organization="Organization/o1", practitioner=None)
    assert result.care_plan["addresses"] == [{"reference": "Condition/c1"}]
    assert result.care_plan["contributor"] == [{"reference": "Organization/o1"}]
    assert "author" not in result.care_plan
    assert all("requester" not in t for t in result.tasks)


def test_deterministic() -> None:
    first = jsonio.dumps(apply().resources())
    second = jsonio.dumps(apply().resources())
    assert first == second


def test_missing_activity_definition_is_reported() -> None:
    plan, _ = template("vertebroplasty")
    with pytest.raises(ApplyError, match="inst-4"):
        apply_plan_definition(plan, {}, context())
