"""RecoveryGuidance → PlanDefinition, ActivityDefinition, Questionnaire, DocumentReference."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.guidance.fhir_builder import (
    CLINICAL_CODE_BY_KIND,
    INSTRUCTION_KIND_SYSTEM,
    LIFTED_WHEN_URL,
    PLAN_PARAMETER_URL,
    READING_GRADE_URL,
    SOURCE_SPAN_URL,
    build_artifacts,
    computable_name,
    slugify,
)
from careplan_fhir.guidance.model import (
    INSTRUCTION_KINDS,
    Condition,
    GoalSpec,
    Instruction,
    Parameter,
    Quantity,
    RecoveryGuidance,
    SourceSpan,
    Supply,
    Timing,
    WarningSign,
)
from careplan_fhir.guidance.readability import GRADE_LIMIT, hard_to_read, reading_grade
from careplan_fhir.workflows.import_guidance import build_import, format_for_path

PROFILES = Path(__file__).resolve().parent.parent / "profiles"
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
URL_BASE = "https://hospital.example.org/fhir"

SOURCE = """Going home after your hip replacement

Walk around your home three times a day.
Keep the dressing clean and dry.
Do not take a bath for 2 weeks.
Do not drive until your surgeon says you may.
Start the leg exercises 1 day after you get home.
Check your temperature every evening.

Call us if your temperature is at or above the number your team gave you.
Call us if your pain is 8 or more.
Call 911 if you have chest pain.
The wound leaks yellow fluid.

Have at home: a thermometer.
"""


def span(text: str) -> SourceSpan:
    start = SOURCE.index(text)
    return SourceSpan(start, start + len(text), SOURCE.count("\n", 0, start) + 1)


def sample_guidance() -> RecoveryGuidance:
    return RecoveryGuidance(
        title="Going home after your hip replacement",
        source_text=SOURCE,
        source_format="text",
        procedure="Hip replacement",
        instructions=[
            Instruction(
                "walk",
                "activity",
                "Walk around your home three times a day.",
                span("Walk around your home three times a day."),
                timing=Timing("three times a day", frequency=3, period=Decimal(1), period_unit="d"),
            ),
            Instruction(
                "dressing",
                "wound-care",
                "Keep the dressing clean and dry.",
                span("Keep the dressing clean and dry."),
            ),
            Instruction(
                "no-bath",
                "hygiene",
                "Do not take a bath for 2 weeks.",
                span("Do not take a bath for 2 weeks."),
                prohibition=True,
                timing=Timing("for 2 weeks", duration=Quantity(Decimal(2), "wk")),
            ),
            Instruction(
                "no-driving",
                "restriction",
                "Do not drive until your surgeon says you may.",
                span("Do not drive until your surgeon says you may."),
                prohibition=True,
                timing=Timing("until your surgeon says you may", until="your surgeon says you may"),
            ),
            Instruction(
                "leg-exercises",
                "exercise",
                "Start the leg exercises 1 day after you get home.",
                span("Start the leg exercises 1 day after you get home."),
                timing=Timing("1 day after you get home", offset=Quantity(Decimal(1), "d")),
            ),
            Instruction(
                "check-temperature",
                "monitoring",
                "Check your temperature every evening.",
                span("Check your temperature every evening."),
                parameter="fever_threshold",
            ),
        ],
        warning_signs=[
            WarningSign(
                "fever",
                "Call us if your temperature is at or above the number your team gave you.",
                "urgent",
                span("Call us if your temperature is at or above the number your team gave you."),
                Condition("body-temperature", ">=", parameter="fever_threshold"),
            ),
            WarningSign(
                "pain",
                "Call us if your pain is 8 or more.",
                "urgent",
                span("Call us if your pain is 8 or more."),
                Condition("pain-score", ">=", threshold=Quantity(Decimal(8), "{score}")),
            ),
            WarningSign(
                "chest-pain",
                "Call 911 if you have chest pain.",
                "stat",
                span("Call 911 if you have chest pain."),
            ),
            WarningSign(
                "leaking",
                "The wound leaks yellow fluid.",
                "urgent",
                span("The wound leaks yellow fluid."),
            ),
        ],
        supplies=[Supply("thermometer", "a thermometer", span("a thermometer"))],
        parameters=[
            Parameter(
                "fever_threshold",
                "Quantity",
                "Temperature at which the patient calls the team",
                required=True,
                units=("Cel", "[degF]"),
            )
        ],
        goals=[
            GoalSpec("wound-heals", "Your wound heals without infection.", ["dressing", "no-bath"]),
            GoalSpec("back-to-walking", "You walk on your own again.", ["walk", "leg-exercises"]),
        ],
    )


@pytest.fixture(scope="module")
def bundle() -> dict[str, Any]:
    return build_artifacts(sample_guidance(), url_base=URL_BASE, version="0.1.0", now=NOW)


def resources(bundle: dict[str, Any], resource_type: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == resource_type
    ]


def plan_of(bundle: dict[str, Any]) -> dict[str, Any]:
    (plan,) = resources(bundle, "PlanDefinition")
    return plan


def action(bundle: dict[str, Any], action_id: str) -> dict[str, Any]:
    return next(a for a in plan_of(bundle)["action"] if a["id"] == action_id)


def extension(element: dict[str, Any], url: str) -> dict[str, Any] | None:
    return next((e for e in element.get("extension", []) if e["url"] == url), None)


def test_every_resource_validates(bundle: dict[str, Any]) -> None:
    validate_resource(bundle)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == [
        "PlanDefinition",
        "ActivityDefinition",
        "ActivityDefinition",
        "Questionnaire",
        "DocumentReference",
    ]
    for entry in bundle["entry"]:
        validate_resource(entry["resource"])
        resource = entry["resource"]
        assert entry["fullUrl"] == f"{URL_BASE}/{resource['resourceType']}/{resource['id']}"
    assert bundle["type"] == "collection"


def test_output_is_deterministic(bundle: dict[str, Any]) -> None:
    again = build_artifacts(sample_guidance(), url_base=URL_BASE, version="0.1.0", now=NOW)
    assert json.dumps(again, default=str) == json.dumps(bundle, default=str)


def test_plan_definition_header(bundle: dict[str, Any]) -> None:
    plan = plan_of(bundle)
    assert plan["id"] == "going-home-after-your-hip-replacement"
    assert plan["url"] == f"{URL_BASE}/PlanDefinition/going-home-after-your-hip-replacement"
    assert plan["version"] == "0.1.0"
    assert plan["name"] == "GoingHomeAfterYourHipReplacement"
    assert plan["status"] == "draft"
    assert plan["date"] == "2026-03-01T09:30:00Z"
    assert plan["type"]["coding"][0]["code"] == "clinical-protocol"
    documentation = plan["relatedArtifact"][0]
    assert documentation["type"] == "documentation"
    assert documentation["url"] == "DocumentReference/going-home-after-your-hip-replacement-source"
    assert {g["id"]: g["description"]["text"] for g in plan["goal"]} == {
        "wound-heals": "Your wound heals without infection.",
        "back-to-walking": "You walk on your own again.",
    }


def test_one_action_per_instruction_sign_and_supply(bundle: dict[str, Any]) -> None:
    ids = [a["id"] for a in plan_of(bundle)["action"]]
    assert ids == [
        "discharge",
        "walk",
        "dressing",
        "no-bath",
        "no-driving",
        "leg-exercises",
        "check-temperature",
        "fever",
        "pain",
        "chest-pain",
        "leaking",
        "thermometer",
    ]


def test_action_codes_kind_and_verified_clinical_code(bundle: dict[str, Any]) -> None:
    dressing = action(bundle, "dressing")
    assert dressing["code"][0]["coding"][0] == {
        "system": INSTRUCTION_KIND_SYSTEM,
        "code": "wound-care",
        "display": "Wound care",
    }
    assert dressing["code"][1]["coding"][0]["code"] == "225358003"
    walk = action(bundle, "walk")
    assert len(walk["code"]) == 1
    assert action(bundle, "thermometer")["code"][0]["coding"][0]["code"] == "supplies"
    assert action(bundle, "fever")["code"][0]["coding"][0]["code"] == "warning-sign"


def test_source_span_and_reading_grade_on_every_action(bundle: dict[str, Any]) -> None:
    for item in plan_of(bundle)["action"]:
        if item["id"] == "discharge":
            continue
        source = extension(item, SOURCE_SPAN_URL)
        assert source is not None, item["id"]
        parts = {p["url"]: p for p in source["extension"]}
        start, end = parts["start"]["valueInteger"], parts["end"]["valueInteger"]
        assert SOURCE[start:end] == item["description"]
        assert parts["document"]["valueReference"]["reference"].startswith("DocumentReference/")
        assert parts["line"]["valueInteger"] == SOURCE.count("\n", 0, start) + 1
    grade = extension(action(bundle, "walk"), READING_GRADE_URL)
    assert grade is not None
    assert grade["valueDecimal"] == reading_grade("Walk around your home three times a day.")
    # A label too short to grade carries no grade.
    assert extension(action(bundle, "thermometer"), READING_GRADE_URL) is None


def test_prohibition_points_at_do_not_perform_activity_definition(bundle: dict[str, Any]) -> None:
    definitions = {d["url"]: d for d in resources(bundle, "ActivityDefinition")}
    no_bath = action(bundle, "no-bath")
    url, _, version = no_bath["definitionCanonical"].partition("|")
    assert version == "0.1.0"
    bath = definitions[url]
    assert bath["doNotPerform"] is True
    assert bath["kind"] == "Task"
    assert bath["status"] == "draft"
    assert bath["description"] == "Do not take a bath for 2 weeks."
    assert bath["timingDuration"]["code"] == "wk"
    assert bath["timingDuration"]["value"] == 2
    driving = definitions[action(bundle, "no-driving")["definitionCanonical"].split("|")[0]]
    lifted = extension(driving, LIFTED_WHEN_URL)
    assert lifted is not None and lifted["valueString"] == "your surgeon says you may"
    assert "definitionCanonical" not in action(bundle, "walk")
    assert bath["id"] == "going-home-after-your-hip-replacement-avoid-1"


def test_timing(bundle: dict[str, Any]) -> None:
    repeat = action(bundle, "walk")["timingTiming"]["repeat"]
    assert (repeat["frequency"], repeat["period"], repeat["periodUnit"]) == (3, 1, "d")
    assert action(bundle, "no-bath")["timingDuration"]["value"] == 2
    related = action(bundle, "leg-exercises")["relatedAction"][0]
    assert related["actionId"] == "discharge"
    assert related["relationship"] == "after-start"
    assert related["offsetDuration"]["code"] == "d"
    discharge = action(bundle, "discharge")
    assert discharge["trigger"][0] == {"type": "named-event", "name": "discharge"}


def test_warning_signs_priority_and_condition(bundle: dict[str, Any]) -> None:
    fever = action(bundle, "fever")
    assert fever["priority"] == "urgent"
    (condition,) = fever["condition"]
    assert condition["kind"] == "applicability"
    assert condition["expression"]["language"] == "text/fhirpath"
    assert condition["expression"]["expression"] == "%temperature >= %fever_threshold"
    assert action(bundle, "pain")["condition"][0]["expression"]["expression"] == "%pain_score >= 8"
    chest = action(bundle, "chest-pain")
    assert chest["priority"] == "stat"
    assert "condition" not in chest


def test_goal_links(bundle: dict[str, Any]) -> None:
    assert action(bundle, "no-bath")["goalId"] == ["wound-heals"]
    assert action(bundle, "walk")["goalId"] == ["back-to-walking"]
    assert "goalId" not in action(bundle, "fever")


def test_parameters_declared_once(bundle: dict[str, Any]) -> None:
    plan = plan_of(bundle)
    declared = [e for e in plan["extension"] if e["url"] == PLAN_PARAMETER_URL]
    assert len(declared) == 1
    parts = declared[0]["extension"]
    values = {p["url"]: p for p in parts}
    assert values["name"]["valueCode"] == "fever_threshold"
    assert values["type"]["valueCode"] == "Quantity"
    assert values["required"]["valueBoolean"] is True
    assert [p["valueCoding"]["code"] for p in parts if p["url"] == "unit"] == ["Cel", "[degF]"]
    assert "default" not in values


def test_questionnaire_items(bundle: dict[str, Any]) -> None:
    (questionnaire,) = resources(bundle, "Questionnaire")
    assert questionnaire["status"] == "draft"
    items = {i["linkId"]: i for i in questionnaire["item"]}
    temperature = items["body-temperature"]
    assert temperature["type"] == "decimal"
    assert temperature["code"][0] == {
        "system": "http://loinc.org",
        "code": "8310-5",
        "display": "Body temperature",
    }
    unit = items["body-temperature-unit"]
    assert [o["valueCoding"]["code"] for o in unit["answerOption"]] == ["Cel", "[degF]"]
    pain = items["pain-score"]
    assert pain["type"] == "integer"
    assert pain["code"][0]["code"] == "72514-3"
    limits = {e["url"].rsplit("/", 1)[1]: e["valueInteger"] for e in pain["extension"]}
    assert limits == {"minValue": 0, "maxValue": 10}
    signs = items["warning-signs"]["item"]
    assert [(s["linkId"], s["type"]) for s in signs] == [
        ("sign-chest-pain", "boolean"),
        ("sign-leaking", "boolean"),
    ]


def test_document_reference_holds_the_source(bundle: dict[str, Any]) -> None:
    (document,) = resources(bundle, "DocumentReference")
    assert document["status"] == "current"
    attachment = document["content"][0]["attachment"]
    assert attachment["contentType"] == "text/plain"
    assert base64.b64decode(attachment["data"]).decode("utf-8") == SOURCE
    assert attachment["title"] == "Going home after your hip replacement"


def test_questionnaire_without_measures_has_only_yes_no_items() -> None:
    guidance = sample_guidance()
    guidance.warning_signs = guidance.warning_signs[2:]
    guidance.instructions = [i for i in guidance.instructions if i.kind != "monitoring"]
    guidance.parameters = []
    result = build_artifacts(guidance, url_base=URL_BASE, version="1", now=NOW)
    (questionnaire,) = resources(result, "Questionnaire")
    assert [i["linkId"] for i in questionnaire["item"]] == ["warning-signs"]
    for entry in result["entry"]:
        validate_resource(entry["resource"])


def test_fixed_threshold_in_fahrenheit_selects_the_unit() -> None:
    guidance = sample_guidance()
    guidance.warning_signs[0].condition = Condition(
        "body-temperature", ">", threshold=Quantity(Decimal("100.4"), "[degF]")
    )
    result = build_artifacts(guidance, url_base=URL_BASE, version="1", now=NOW)
    fever = action(result, "fever")
    assert fever["condition"][0]["expression"]["expression"] == "%temperature > 100.4 '[degF]'"
    (questionnaire,) = resources(result, "Questionnaire")
    unit = next(i for i in questionnaire["item"] if i["linkId"] == "body-temperature-unit")
    selected = [o["valueCoding"]["code"] for o in unit["answerOption"] if o.get("initialSelected")]
    assert selected == ["[degF]"]


def test_duplicate_action_ids_are_refused() -> None:
    guidance = sample_guidance()
    guidance.supplies = [Supply("walk", "a walker", span("a thermometer"))]
    with pytest.raises(ValueError, match="walk"):
        build_artifacts(guidance, url_base=URL_BASE, version="1", now=NOW)


def test_names_and_slugs() -> None:
    assert slugify("  Knee: the FIRST 2 weeks!  ") == "knee-the-first-2-weeks"
    assert slugify("???") == "guidance"
    assert len(slugify("word " * 40)) <= 40
    assert computable_name("2nd stage recovery") == "Plan2ndStageRecovery"


def test_reading_grades() -> None:
    assert reading_grade("Thermometer") is None
    easy = reading_grade("Walk a little every day.")
    assert easy is not None and easy <= GRADE_LIMIT
    hard = reading_grade(
        "Refrain from strenuous physical exertion, including lifting heavy objects, until "
        "radiographic confirmation of satisfactory vertebral consolidation is documented."
    )
    assert hard is not None and hard > GRADE_LIMIT
    guidance = sample_guidance()
    guidance.instructions[0].text = (
        "Ambulate progressively, incorporating intermittent rest periods, notwithstanding "
        "considerable postoperative discomfort experienced during mobilisation."
    )
    flagged = {g.item_id: g for g in hard_to_read(guidance)}
    assert "walk" in flagged and flagged["walk"].too_hard
    assert "dressing" not in flagged


def test_code_system_profile_matches_the_builder() -> None:
    code_system = json.loads((PROFILES / "CodeSystem-instruction-kind.json").read_text())
    validate_resource(code_system)
    assert code_system["url"] == INSTRUCTION_KIND_SYSTEM
    assert code_system["content"] == "complete"
    assert [c["code"] for c in code_system["concept"]] == list(INSTRUCTION_KINDS)
    assert code_system["count"] == len(INSTRUCTION_KINDS)
    for concept in code_system["concept"]:
        assert concept["display"] and concept["definition"]
    assert set(CLINICAL_CODE_BY_KIND) <= set(INSTRUCTION_KINDS)


def test_operation_definition_profile_validates() -> None:
    operation = json.loads(
        (PROFILES / "OperationDefinition-PlanDefinition-import.json").read_text()
    )
    validate_resource(operation)
    assert operation["code"] == "import"
    assert operation["resource"] == ["PlanDefinition"]
    names = {p["name"] for p in operation["parameter"]}
    assert {"document", "format", "title", "version", "return"} <= names


def test_builder_does_not_mutate_its_input() -> None:
    guidance = sample_guidance()
    before = copy.deepcopy(guidance)
    build_artifacts(guidance, url_base=URL_BASE, version="1", now=NOW)
    assert guidance == before


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "guidance"


@pytest.mark.parametrize(
    "path",
    sorted(p for p in EXAMPLES.glob("*.*") if format_for_path(p) is not None),
    ids=lambda p: p.name,
)
def test_example_guidance_builds_valid_artifacts(path: Path) -> None:
    guidance, bundle = build_import(
        path.read_text(encoding="utf-8"), format_for_path(path), url_base=URL_BASE, now=NOW
    )
    validate_resource(bundle)
    for entry in bundle["entry"]:
        validate_resource(entry["resource"])
    plan = plan_of(bundle)
    described = [a for a in plan["action"] if a["id"] != "discharge"]
    assert len(described) == (
        len(guidance.instructions) + len(guidance.warning_signs) + len(guidance.supplies)
    )
    for item in described:
        assert extension(item, SOURCE_SPAN_URL) is not None
