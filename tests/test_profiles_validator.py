"""The profile validator (careplan_fhir.fhir.profiles): pure, no server."""

from __future__ import annotations

import copy
import filecmp
from pathlib import Path
from typing import Any

import pytest

from careplan_fhir.fhir import profiles
from careplan_fhir.fhir.models import Issue, validate_resource
from careplan_fhir.fhir.profiles import (
    CHECK_IN_QUESTIONNAIRE_RESPONSE,
    RECOVERY_CARE_PLAN,
    RECOVERY_COMMUNICATION,
    RECOVERY_GOAL,
    RECOVERY_TASK,
    US_CORE_CARE_PLAN,
    US_CORE_GOAL,
    ProfileUnusable,
    check_declared_profiles,
    find_profile,
    load_profile,
    meta_profiles,
    unchecked_profiles,
    validate_against_profile,
)

from . import factories

PROJECT_PROFILES = Path(__file__).parent.parent / "profiles"
PACKAGE_PROFILES = Path(profiles.__file__).parent / "profiles_data"

NARRATIVE = {
    "status": "generated",
    "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Recovery after knee surgery</p></div>',
}
SNOMED_CATEGORY = {"coding": [{"system": "http://snomed.info/sct", "code": "736366004"}]}


def recovery_care_plan(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "meta": {"profile": meta_profiles("CarePlan")},
        "text": NARRATIVE,
        "instantiatesCanonical": ["https://careplan-fhir.org/fhir/PlanDefinition/knee|0.1.0"],
        "category": [factories.ASSESS_PLAN, SNOMED_CATEGORY],
        "encounter": {"reference": "Encounter/e1"},
        "goal": [{"reference": "Goal/g1"}],
    }
    return copy.deepcopy(factories.care_plan("p1", **{**fields, **overrides}))


def recovery_goal(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"meta": {"profile": meta_profiles("Goal")}, "startDate": "2026-03-01"}
    return copy.deepcopy(factories.goal("p1", **{**fields, **overrides}))


def recovery_task(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "meta": {"profile": meta_profiles("Task")},
        "executionPeriod": {"start": "2026-03-02T09:00:00Z"},
    }
    return copy.deepcopy(factories.task("p1", "cp1", **{**fields, **overrides}))


def recovery_communication(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "meta": {"profile": meta_profiles("Communication")},
        "category": [{"text": "instruction"}],
        "basedOn": [{"reference": "CarePlan/cp1"}],
        "recipient": [{"reference": "Patient/p1"}],
    }
    return copy.deepcopy(factories.communication("p1", **{**fields, **overrides}))


def check_in(**overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "meta": {"profile": meta_profiles("QuestionnaireResponse")},
        "questionnaire": "https://careplan-fhir.org/fhir/Questionnaire/knee-check-in|0.1.0",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-03-02T08:00:00Z",
        "item": [{"linkId": "temperature", "answer": [{"valueDecimal": 37.2}]}],
    }
    resource.update(overrides)
    return copy.deepcopy(resource)


EXAMPLES = {
    RECOVERY_CARE_PLAN: recovery_care_plan,
    RECOVERY_GOAL: recovery_goal,
    RECOVERY_TASK: recovery_task,
    RECOVERY_COMMUNICATION: recovery_communication,
    CHECK_IN_QUESTIONNAIRE_RESPONSE: check_in,
}


def issues_of(resource: dict[str, Any], url: str) -> list[Issue]:
    profile = find_profile(url)
    assert profile is not None
    return validate_against_profile(resource, profile)


def expressions(issues: list[Issue]) -> set[str]:
    return {i.expression for i in issues if i.severity == "error"}


def test_package_copy_matches_profiles_folder() -> None:
    shipped = sorted(p.name for p in PACKAGE_PROFILES.glob("*.json"))
    published = sorted(p.name for p in PROJECT_PROFILES.glob("StructureDefinition-*.json"))
    assert shipped == published, "run: make profiles-data"
    for name in published:
        assert filecmp.cmp(PROJECT_PROFILES / name, PACKAGE_PROFILES / name, shallow=False), (
            f"{name} differs from the package copy; run: make profiles-data"
        )


def test_every_shipped_profile_loads_and_is_exemplified() -> None:
    known = profiles.known_profiles()
    assert set(known) == set(EXAMPLES)
    for url, profile in known.items():
        assert profile.url == url
        assert url.startswith("https://careplan-fhir.org/fhir/StructureDefinition/")
        assert profile.must_support


@pytest.mark.parametrize("url", sorted(EXAMPLES))
def test_each_profile_accepts_its_conforming_example(url: str) -> None:
    example = EXAMPLES[url]()
    validate_resource(example)
    assert issues_of(example, url) == []
    assert check_declared_profiles(example) == []


def test_meta_profiles_claim_us_core_only_where_it_is_restated() -> None:
    assert meta_profiles("CarePlan") == [RECOVERY_CARE_PLAN, US_CORE_CARE_PLAN]
    assert meta_profiles("Goal") == [RECOVERY_GOAL, US_CORE_GOAL]
    assert meta_profiles("Task") == [RECOVERY_TASK]
    assert meta_profiles("Communication") == [RECOVERY_COMMUNICATION]
    assert meta_profiles("Patient") == []
    assert unchecked_profiles(recovery_care_plan()) == [US_CORE_CARE_PLAN]


def test_us_core_mandatory_elements_are_restated_in_our_differentials() -> None:
    """What US Core CarePlan and Goal make mandatory, ours enforce (docs/profiles.md)."""
    care_plan = find_profile(RECOVERY_CARE_PLAN)
    goal = find_profile(RECOVERY_GOAL)
    assert care_plan is not None and goal is not None
    assert care_plan.base_definition == US_CORE_CARE_PLAN
    assert goal.base_definition == US_CORE_GOAL
    plan_min = {r.path: r.min for r in care_plan.rules}
    for path in ("CarePlan.text", "CarePlan.status", "CarePlan.intent", "CarePlan.subject"):
        assert plan_min[path] == 1, path
    category = next(r for r in care_plan.rules if r.path == "CarePlan.category")
    assert [(s.name, s.min, s.max) for s in category.slices] == [("AssessPlan", 1, 1)]
    goal_min = {r.path: r.min for r in goal.rules}
    for path in ("Goal.lifecycleStatus", "Goal.description", "Goal.subject"):
        assert goal_min[path] == 1, path


# --- each kind of violation, with its path ------------------------------------------------


def test_minimum_cardinality_top_level() -> None:
    task = recovery_task()
    del task["owner"]
    issues = issues_of(task, RECOVERY_TASK)
    assert expressions(issues) == {"Task.owner"}
    assert issues[0].code == "required"
    assert "at least 1" in issues[0].diagnostics


def test_minimum_cardinality_of_repeating_elements() -> None:
    plan = recovery_care_plan()
    del plan["instantiatesCanonical"]
    communication = recovery_communication(payload=[])
    assert expressions(issues_of(plan, RECOVERY_CARE_PLAN)) == {"CarePlan.instantiatesCanonical"}
    assert expressions(issues_of(communication, RECOVERY_COMMUNICATION)) == {
        "Communication.payload"
    }


def test_nested_cardinality_is_counted_per_parent() -> None:
    plan = recovery_care_plan()
    del plan["text"]["status"]
    assert expressions(issues_of(plan, RECOVERY_CARE_PLAN)) == set()  # text.status: no min
    profile = load_profile(
        _definition(
            "Task",
            [{"id": "Task.restriction.period", "path": "Task.restriction.period", "min": 1}],
        )
    )
    task = recovery_task(restriction={"repetitions": 1})
    issues = validate_against_profile(task, profile)
    assert expressions(issues) == {"Task.restriction.period"}
    ok = recovery_task(restriction={"period": {"end": "2026-06-01"}})
    assert validate_against_profile(ok, profile) == []
    assert validate_against_profile(recovery_task(), profile) == []  # no restriction: no check


def test_maximum_cardinality() -> None:
    profile = load_profile(
        _definition("CarePlan", [{"id": "CarePlan.goal", "path": "CarePlan.goal", "max": "1"}])
    )
    plan = recovery_care_plan(goal=[{"reference": "Goal/g1"}, {"reference": "Goal/g2"}])
    issues = validate_against_profile(plan, profile)
    assert expressions(issues) == {"CarePlan.goal"}
    assert "at most 1" in issues[0].diagnostics


def test_fixed_value() -> None:
    task = recovery_task(intent="order")
    issues = issues_of(task, RECOVERY_TASK)
    assert expressions(issues) == {"Task.intent"}
    assert '"plan"' in issues[0].diagnostics
    plan = recovery_care_plan(intent="proposal")
    assert expressions(issues_of(plan, RECOVERY_CARE_PLAN)) == {"CarePlan.intent"}


def test_assess_plan_slice_is_required() -> None:
    plan = recovery_care_plan(category=[SNOMED_CATEGORY])
    issues = issues_of(plan, RECOVERY_CARE_PLAN)
    assert expressions(issues) == {"CarePlan.category"}
    assert "AssessPlan" in issues[0].diagnostics
    assert "careplan-category|assess-plan" in issues[0].diagnostics
    no_category = recovery_care_plan()
    del no_category["category"]
    messages = [i.diagnostics for i in issues_of(no_category, RECOVERY_CARE_PLAN)]
    assert len(messages) == 2  # the element's min and the slice's min


def test_slice_pattern_matches_a_coding_among_others() -> None:
    both = {
        "coding": [
            {"system": "http://snomed.info/sct", "code": "736366004"},
            {
                "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                "code": "assess-plan",
                "display": "Assessment and Plan of Treatment",
            },
        ],
        "text": "Assessment and plan",
    }
    assert issues_of(recovery_care_plan(category=[both]), RECOVERY_CARE_PLAN) == []
    wrong_system = {"coding": [{"system": "http://example.org", "code": "assess-plan"}]}
    plan = recovery_care_plan(category=[wrong_system])
    assert expressions(issues_of(plan, RECOVERY_CARE_PLAN)) == {"CarePlan.category"}


def test_slice_maximum() -> None:
    plan = recovery_care_plan(
        category=[factories.ASSESS_PLAN, copy.deepcopy(factories.ASSESS_PLAN)]
    )
    issues = issues_of(plan, RECOVERY_CARE_PLAN)
    assert expressions(issues) == {"CarePlan.category"}
    assert "at most 1" in issues[0].diagnostics


def test_closed_slicing_refuses_other_items() -> None:
    definition = _definition(
        "CarePlan",
        [
            {
                "id": "CarePlan.category",
                "path": "CarePlan.category",
                "slicing": {
                    "discriminator": [{"type": "pattern", "path": "$this"}],
                    "rules": "closed",
                },
            },
            {
                "id": "CarePlan.category:AssessPlan",
                "path": "CarePlan.category",
                "sliceName": "AssessPlan",
                "patternCodeableConcept": factories.ASSESS_PLAN,
            },
        ],
    )
    issues = validate_against_profile(recovery_care_plan(), load_profile(definition))
    assert expressions(issues) == {"CarePlan.category[1]"}


def test_pattern_on_an_element() -> None:
    definition = _definition(
        "Communication",
        [
            {
                "id": "Communication.category",
                "path": "Communication.category",
                "patternCodeableConcept": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/communication-category",
                            "code": "instruction",
                        }
                    ]
                },
            }
        ],
    )
    issues = validate_against_profile(recovery_communication(), load_profile(definition))
    assert expressions(issues) == {"Communication.category[0]"}
    assert "communication-category|instruction" in issues[0].diagnostics


def test_reference_target_type() -> None:
    task = recovery_task(owner={"reference": "Practitioner/dr1"})
    issues = issues_of(task, RECOVERY_TASK)
    assert expressions(issues) == {"Task.owner"}
    assert "Patient, RelatedPerson" in issues[0].diagnostics
    plan = recovery_care_plan(subject={"reference": "Group/g1"})
    assert expressions(issues_of(plan, RECOVERY_CARE_PLAN)) == {"CarePlan.subject"}
    based_on = recovery_communication(basedOn=[{"reference": "ServiceRequest/s1"}])
    assert expressions(issues_of(based_on, RECOVERY_COMMUNICATION)) == {"Communication.basedOn[0]"}


def test_reference_forms() -> None:
    for owner in (
        {"reference": "http://ehr.example.org/fhir/Patient/p1"},
        {"reference": "Patient/p1/_history/3"},
        {"type": "RelatedPerson", "identifier": {"value": "caregiver-7"}},
    ):
        assert issues_of(recovery_task(owner=owner), RECOVERY_TASK) == [], owner
    contained = recovery_task(
        contained=[
            {"resourceType": "RelatedPerson", "id": "c1", "patient": {"reference": "Patient/p1"}}
        ],
        owner={"reference": "#c1"},
    )
    assert issues_of(contained, RECOVERY_TASK) == []
    unknown = issues_of(recovery_task(owner={"reference": "urn:uuid:1234"}), RECOVERY_TASK)
    assert [(i.severity, i.expression) for i in unknown] == [("warning", "Task.owner")]


def test_choice_type_restriction() -> None:
    goal = recovery_goal()
    del goal["startDate"]
    goal["startCodeableConcept"] = {"text": "after discharge"}
    issues = issues_of(goal, RECOVERY_GOAL)
    assert expressions(issues) == {"Goal.startCodeableConcept"}
    assert "Goal.startDate" not in issues[0].diagnostics
    assert "startDate" in issues[0].diagnostics


def test_required_binding_to_a_known_value_set() -> None:
    plan = recovery_care_plan(text={**NARRATIVE, "status": "extensions"})
    issues = issues_of(plan, RECOVERY_CARE_PLAN)
    assert expressions(issues) == {"CarePlan.text.status"}
    assert issues[0].code == "code-invalid"


def test_wrong_resource_type() -> None:
    issues = issues_of(recovery_goal(), RECOVERY_TASK)
    assert [i.expression for i in issues] == ["Goal"]


def test_every_violation_is_listed() -> None:
    task = recovery_task(intent="order", basedOn=[])
    del task["owner"]
    del task["description"]
    assert expressions(issues_of(task, RECOVERY_TASK)) == {
        "Task.intent",
        "Task.owner",
        "Task.description",
        "Task.basedOn",
    }


def test_malformed_content_does_not_break_the_validator() -> None:
    plan = recovery_care_plan(category="assess-plan", text="a narrative", subject=["x"])
    issues = issues_of(plan, RECOVERY_CARE_PLAN)
    assert "CarePlan.category" in expressions(issues)


def test_check_declared_profiles_skips_unknown_and_reports_known() -> None:
    task = recovery_task()
    del task["owner"]
    assert expressions(check_declared_profiles(task)) == {"Task.owner"}
    task["meta"] = {"profile": ["http://example.org/StructureDefinition/other"]}
    assert check_declared_profiles(task) == []
    assert unchecked_profiles(task) == ["http://example.org/StructureDefinition/other"]
    versioned = recovery_task(meta={"profile": [RECOVERY_TASK + "|0.1.0"]})
    del versioned["owner"]
    assert expressions(check_declared_profiles(versioned)) == {"Task.owner"}


# --- profiles the validator refuses to load ----------------------------------------------


def _definition(resource_type: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": f"https://careplan-fhir.org/fhir/StructureDefinition/test-{resource_type.lower()}",
        "name": "Test",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": resource_type,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "derivation": "constraint",
        "differential": {"element": [{"id": resource_type, "path": resource_type}, *elements]},
    }


@pytest.mark.parametrize(
    "element",
    [
        {"id": "Task.owner", "path": "Task.owner", "constraint": [{"key": "x-1"}]},
        {
            "id": "Task.input",
            "path": "Task.input",
            "slicing": {"discriminator": [{"type": "type", "path": "value"}], "rules": "open"},
        },
        {"id": "Task.input:a.value[x]", "path": "Task.input.value[x]"},
        {
            "id": "Task.owner",
            "path": "Task.owner",
            "type": [{"code": "Reference", "targetProfile": ["http://example.org/SD/x"]}],
        },
        {
            "id": "Task.status",
            "path": "Task.status",
            "binding": {"strength": "required", "valueSet": "http://example.org/ValueSet/x"},
        },
        {"id": "Goal.status", "path": "Goal.status"},
    ],
)
def test_unenforceable_profiles_are_refused(element: dict[str, Any]) -> None:
    with pytest.raises(ProfileUnusable):
        load_profile(_definition("Task", [element]))
