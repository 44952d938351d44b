"""``$validate`` through HTTP (https://hl7.org/fhir/R4/resource-operation-validate.html)."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.fhir.profiles import (
    RECOVERY_CARE_PLAN,
    RECOVERY_TASK,
    US_CORE_CARE_PLAN,
    meta_profiles,
)

from . import factories
from .test_profiles_validator import recovery_care_plan, recovery_goal, recovery_task

JSON = {"Content-Type": "application/fhir+json"}


def parameters(resource: dict[str, Any] | None, **values: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    if resource is not None:
        entries.append({"name": "resource", "resource": resource})
    for name, value in values.items():
        key = "valueCanonical" if name == "profile" else "valueCode"
        entries.append({"name": name, key: value})
    return {"resourceType": "Parameters", "parameter": entries}


def validate(
    client: TestClient, path: str, body: dict[str, Any] | None, **query: str
) -> tuple[int, dict[str, Any]]:
    response = client.post(f"/fhir/{path}/$validate", json=body, params=query, headers=JSON)
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    validate_resource(outcome)
    return response.status_code, outcome


def errors(outcome: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")]


def error_expressions(outcome: dict[str, Any]) -> set[str]:
    return {e for i in errors(outcome) for e in i.get("expression", [])}


def test_valid_resource_gives_one_information_issue(client: TestClient) -> None:
    status, outcome = validate(client, "Patient", factories.patient())
    assert status == 200
    assert len(outcome["issue"]) == 1
    (only,) = outcome["issue"]
    assert (only["severity"], only["code"]) == ("information", "informational")
    assert only["diagnostics"].startswith("valid")


def test_valid_against_a_named_profile_in_parameters(client: TestClient) -> None:
    body = parameters(recovery_care_plan(), profile=RECOVERY_CARE_PLAN)
    status, outcome = validate(client, "CarePlan", body)
    assert status == 200
    assert errors(outcome) == []
    summary = outcome["issue"][0]
    assert summary["severity"] == "information"
    assert RECOVERY_CARE_PLAN in summary["diagnostics"]
    # The US Core profile it declares is not held here: said, not failed.
    (note,) = outcome["issue"][1:]
    assert note["severity"] == "information"
    assert note["diagnostics"].startswith(US_CORE_CARE_PLAN)
    assert "checked through RecoveryCarePlan" in note["diagnostics"]
    assert note["expression"] == ["CarePlan.meta.profile[1]"]
    other = recovery_care_plan(meta={"profile": ["http://example.org/StructureDefinition/x"]})
    _, outcome = validate(client, "CarePlan", other)
    assert [i["severity"] for i in outcome["issue"]] == ["information", "information"]
    assert "does not hold" in outcome["issue"][1]["diagnostics"]


def test_base_spec_violation_is_listed_with_200(client: TestClient) -> None:
    status, outcome = validate(client, "Task", recovery_task(status="bogus"))
    assert status == 200
    assert errors(outcome)
    assert "Task.status" in error_expressions(outcome)
    assert not any(
        i["severity"] == "information" and i["diagnostics"].startswith("valid")
        for i in outcome["issue"]
    )


def test_care_plan_without_assess_plan_category(client: TestClient) -> None:
    plan = recovery_care_plan(category=[{"text": "Recovery"}])
    del plan["meta"]
    status, outcome = validate(client, "CarePlan", parameters(plan, profile=RECOVERY_CARE_PLAN))
    assert status == 200
    assert error_expressions(outcome) == {"CarePlan.category"}
    assert any("AssessPlan" in i["diagnostics"] for i in errors(outcome))


def test_task_without_owner_by_declared_profile(client: TestClient) -> None:
    task = recovery_task()
    del task["owner"]
    status, outcome = validate(client, "Task", task)  # raw body, meta.profile declares it
    assert status == 200
    assert error_expressions(outcome) == {"Task.owner"}


def test_profile_in_the_url_with_a_raw_body(client: TestClient) -> None:
    task = recovery_task(meta=None, intent="order")
    del task["meta"]
    _, plain = validate(client, "Task", task)
    assert errors(plain) == []  # no profile asked, none declared: base rules only
    status, outcome = validate(client, "Task", task, profile=RECOVERY_TASK)
    assert status == 200
    assert error_expressions(outcome) == {"Task.intent"}


def test_base_and_profile_issues_together(client: TestClient) -> None:
    task = recovery_task(status="bogus")
    del task["owner"]
    _, outcome = validate(client, "Task", task)
    assert {"Task.status", "Task.owner"} <= error_expressions(outcome)


def test_unknown_profile_is_a_request_error(client: TestClient) -> None:
    body = parameters(factories.patient(), profile="http://example.org/StructureDefinition/x")
    status, outcome = validate(client, "Patient", body)
    assert status == 400
    assert outcome["issue"][0]["code"] == "not-supported"
    # US Core's own definitions are not held either: the spec asks for an error.
    status, _ = validate(client, "CarePlan", recovery_care_plan(), profile=US_CORE_CARE_PLAN)
    assert status == 400


def test_request_errors(client: TestClient) -> None:
    goal = recovery_goal()
    assert validate(client, "Task", goal)[0] == 400  # type differs from the URL
    assert validate(client, "Goal", goal, profile=RECOVERY_TASK)[0] == 400  # profile's type
    assert validate(client, "Goal", goal, mode="bogus")[0] == 400
    assert validate(client, "Goal", goal, mode="update")[0] == 400  # needs an instance
    assert validate(client, "Goal", parameters(None))[0] == 400  # no resource
    bad_parameter = {"resourceType": "Parameters", "parameter": [{"name": "x", "valueString": "y"}]}
    assert validate(client, "Goal", bad_parameter)[0] == 400
    assert validate(client, "NotAType", goal)[0] == 404
    response = client.post(
        "/fhir/Goal/$validate", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415


def test_instance_modes(client: TestClient) -> None:
    created = client.post("/fhir/Patient", json=factories.patient(), headers=JSON).json()
    patient_id = created["id"]
    status, outcome = validate(client, f"Patient/{patient_id}", parameters(None, mode="delete"))
    assert status == 200 and errors(outcome) == []
    assert validate(client, "Patient/none", parameters(None, mode="delete"))[0] == 404

    same = {**created, "gender": "male"}
    status, outcome = validate(client, f"Patient/{patient_id}", parameters(same, mode="update"))
    assert status == 200 and errors(outcome) == []
    other = {**created, "id": "other"}
    _, outcome = validate(client, f"Patient/{patient_id}", parameters(other, mode="update"))
    assert error_expressions(outcome) == {"Patient.id"}


def test_profile_mode_checks_the_stored_resource(client: TestClient) -> None:
    task = recovery_task()
    del task["meta"]
    del task["owner"]
    stored = client.post("/fhir/Task", json=task, headers=JSON).json()
    body = parameters(None, mode="profile", profile=RECOVERY_TASK)
    status, outcome = validate(client, f"Task/{stored['id']}", body)
    assert status == 200
    assert error_expressions(outcome) == {"Task.owner"}
    assert validate(client, f"Task/{stored['id']}", parameters(None, mode="profile"))[0] == 400


def test_validate_stores_nothing(client: TestClient) -> None:
    for body in (recovery_care_plan(), parameters(recovery_care_plan(), mode="create")):
        assert validate(client, "CarePlan", body)[0] == 200
    assert (
        validate(client, "CarePlan/cp9", parameters(recovery_care_plan(id="cp9"), mode="update"))[0]
        == 200
    )
    assert client.get("/fhir/CarePlan").json()["total"] == 0
    assert client.get("/fhir/CarePlan/cp9").status_code == 404
    assert client.get("/fhir/_history").json().get("entry", []) == []


def test_xml_body(client: TestClient) -> None:
    xml = b'<Patient xmlns="http://hl7.org/fhir"><gender value="female"/></Patient>'
    response = client.post(
        "/fhir/Patient/$validate", content=xml, headers={"Content-Type": "application/fhir+xml"}
    )
    assert response.status_code == 200
    bogus = b'<Patient xmlns="http://hl7.org/fhir"><gender value="bogus"/></Patient>'
    response = client.post(
        "/fhir/Patient/$validate",
        content=bogus,
        headers={"Content-Type": "application/fhir+xml", "Accept": "application/fhir+json"},
    )
    assert response.status_code == 200
    assert errors(response.json())


def test_capability_statement_lists_validate_and_profiles(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for resource in resources.values():
        names = {o["name"]: o["definition"] for o in resource["operation"]}
        assert names["validate"] == "http://hl7.org/fhir/OperationDefinition/Resource-validate"
    assert resources["CarePlan"]["supportedProfile"] == meta_profiles("CarePlan")
    assert RECOVERY_TASK in resources["Task"]["supportedProfile"]
    assert "supportedProfile" not in resources["Patient"]
    assert "import" in {o["name"] for o in resources["PlanDefinition"]["operation"]}
