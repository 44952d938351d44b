"""``PlanDefinition/$apply`` over HTTP: type and instance level, GET and POST, errors, no writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplan_fhir.apply.engine import TEMPLATE_ACTION_URL
from careplan_fhir.fhir.models import validate_resource

from . import factories

LEAFLET = Path(__file__).parent.parent / "examples" / "guidance" / "kyphoplasty.md"
VERTEBROPLASTY = Path(__file__).parent.parent / "examples" / "guidance" / "vertebroplasty.txt"
APPLY = "/fhir/PlanDefinition/$apply"
JSON = {"Content-Type": "application/fhir+json"}
COUNTED = (
    "CarePlan",
    "Goal",
    "Task",
    "Communication",
    "PlanDefinition",
    "ActivityDefinition",
    "Patient",
    "Encounter",
)


def create(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    resource_id: str = response.json()["id"]
    return resource_id


def import_template(client: TestClient, path: Path, *, activate: bool = True) -> dict[str, Any]:
    content_type = "text/markdown" if path.suffix == ".md" else "text/plain"
    response = client.post(
        "/fhir/PlanDefinition/$import",
        content=path.read_bytes(),
        headers={"Content-Type": f"{content_type}; charset=utf-8"},
    )
    assert response.status_code == 201, response.text
    plan: dict[str, Any] = response.json()["entry"][0]["resource"]
    if activate:
        plan = {k: v for k, v in plan.items() if k != "meta"} | {"status": "active"}
        updated = client.put(f"/fhir/PlanDefinition/{plan['id']}", json=plan)
        assert updated.status_code == 200, updated.text
    return plan


def encounter(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "IMP",
            "display": "inpatient encounter",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": "2026-02-27T08:00:00Z", "end": "2026-03-01T10:00:00Z"},
    }


def parameters(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parts)}


def fever(value: float, unit: str = "Cel") -> dict[str, Any]:
    return {
        "name": "parameters",
        "resource": parameters(
            {
                "name": "fever_threshold",
                "valueQuantity": {
                    "value": value,
                    "system": "http://unitsofmeasure.org",
                    "code": unit,
                },
            }
        ),
    }


def counts(client: TestClient) -> dict[str, int]:
    return {kind: client.get(f"/fhir/{kind}").json()["total"] for kind in COUNTED}


def outcome(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i.get("diagnostics", "") for i in body["issue"])


@pytest.fixture
def setup(client: TestClient) -> dict[str, str]:
    patient_id = create(client, factories.patient())
    return {"patient": patient_id, "encounter": create(client, encounter(patient_id))}


def check_plan(care_plan: dict[str, Any], patient_id: str) -> None:
    validate_resource(care_plan)
    assert care_plan["resourceType"] == "CarePlan"
    assert "id" not in care_plan
    assert care_plan["status"] == "active"
    assert care_plan["intent"] == "plan"
    assert care_plan["subject"] == {"reference": f"Patient/{patient_id}"}
    contained = care_plan["contained"]
    kinds = {r["resourceType"] for r in contained}
    assert kinds == {"Goal", "Task", "Communication"}
    ids = {f"#{r['id']}" for r in contained}
    assert {g["reference"] for g in care_plan["goal"]} <= ids
    for activity in care_plan["activity"]:
        if "reference" in activity:
            assert activity["reference"]["reference"] in ids
    for resource in contained:
        if resource["resourceType"] in ("Task", "Communication"):
            assert resource["basedOn"] == [{"reference": "#"}]


def test_type_level_post_with_encounter(client: TestClient, setup: dict[str, str]) -> None:
    plan = import_template(client, VERTEBROPLASTY)
    practitioner = create(client, {"resourceType": "Practitioner", "name": [{"family": "Okafor"}]})
    body = parameters(
        {"name": "planDefinition", "valueReference": {"reference": f"PlanDefinition/{plan['id']}"}},
        {"name": "subject", "valueString": f"Patient/{setup['patient']}"},
        {"name": "encounter", "valueString": f"Encounter/{setup['encounter']}"},
        {"name": "practitioner", "valueString": f"Practitioner/{practitioner}"},
        fever(38.0),
    )
    before = counts(client)
    response = client.post(APPLY, json=body, headers=JSON)
    assert response.status_code == 200, response.text
    care_plan = response.json()
    check_plan(care_plan, setup["patient"])
    assert care_plan["encounter"] == {"reference": f"Encounter/{setup['encounter']}"}
    assert care_plan["author"] == {"reference": f"Practitioner/{practitioner}"}
    assert care_plan["instantiatesCanonical"] == [f"{plan['url']}|{plan['version']}"]
    # Relative timing counts from the discharge (Encounter.period.end).
    assert care_plan["period"]["start"] == "2026-03-01T10:00:00Z"
    assert "38.0 °C (100.4 °F)" in care_plan["text"]["div"]
    tasks = [r for r in care_plan["contained"] if r["resourceType"] == "Task"]
    shower = next(
        t
        for t in tasks
        if "shower after 24 hours" in t["description"]
        and any(e["url"] == TEMPLATE_ACTION_URL for e in t["extension"])
    )
    assert shower["executionPeriod"]["start"] == "2026-03-02T10:00:00Z"
    assert shower["requester"] == {"reference": f"Practitioner/{practitioner}"}
    prohibitions = [a for a in care_plan["activity"] if a.get("detail", {}).get("doNotPerform")]
    assert prohibitions
    assert counts(client) == before


def test_type_level_by_url_and_instance_level_get(
    client: TestClient, setup: dict[str, str]
) -> None:
    plan = import_template(client, VERTEBROPLASTY)
    before = counts(client)
    by_url = client.post(
        APPLY,
        json=parameters(
            {"name": "url", "valueUri": plan["url"]},
            {"name": "version", "valueString": plan["version"]},
            {"name": "subject", "valueString": f"Patient/{setup['patient']}"},
            fever(100.4, "[degF]"),
        ),
        headers=JSON,
    )
    assert by_url.status_code == 200, by_url.text
    check_plan(by_url.json(), setup["patient"])
    assert "100.4 °F (38.0 °C)" in by_url.json()["text"]["div"]

    instance = client.get(
        f"/fhir/PlanDefinition/{plan['id']}/$apply",
        params={
            "subject": f"Patient/{setup['patient']}",
            "encounter": setup["encounter"],
            "fever_threshold": "38.5Cel",
        },
    )
    assert instance.status_code == 200, instance.text
    care_plan = instance.json()
    check_plan(care_plan, setup["patient"])
    assert "38.5 °C (101.3 °F)" in care_plan["text"]["div"]

    type_get = client.get(
        APPLY,
        params={
            "planDefinition": f"PlanDefinition/{plan['id']}",
            "subject": setup["patient"],
            "fever_threshold": "101[degF]",
        },
    )
    assert type_get.status_code == 200, type_get.text
    assert "101.0 °F (38.3 °C)" in type_get.json()["text"]["div"]

    instance_post = client.post(
        f"/fhir/PlanDefinition/{plan['id']}/$apply",
        json=parameters({"name": "subject", "valueString": setup["patient"]}, fever(38.0)),
        headers=JSON,
    )
    assert instance_post.status_code == 200, instance_post.text
    assert counts(client) == before


def test_template_without_clinician_parameters(client: TestClient, setup: dict[str, str]) -> None:
    plan = import_template(client, LEAFLET)
    response = client.get(
        f"/fhir/PlanDefinition/{plan['id']}/$apply", params={"subject": setup["patient"]}
    )
    assert response.status_code == 200, response.text
    check_plan(response.json(), setup["patient"])


def test_missing_and_wrong_fever_threshold_are_422(
    client: TestClient, setup: dict[str, str]
) -> None:
    plan = import_template(client, VERTEBROPLASTY)
    url = f"/fhir/PlanDefinition/{plan['id']}/$apply"
    subject = {"name": "subject", "valueString": f"Patient/{setup['patient']}"}
    before = counts(client)
    missing = client.post(url, json=parameters(subject), headers=JSON)
    assert "fever_threshold" in outcome(missing, 422)
    wrong_unit = client.post(url, json=parameters(subject, fever(38.0, "K")), headers=JSON)
    text = outcome(wrong_unit, 422)
    assert "fever_threshold" in text
    assert "'K'" in text
    wrong_type = client.get(url, params={"subject": setup["patient"], "fever_threshold": "hot"})
    assert "fever_threshold" in outcome(wrong_type, 422)
    unknown = client.get(
        url, params={"subject": setup["patient"], "fever_threshold": "38Cel", "fevr": "1"}
    )
    assert "fevr" in outcome(unknown, 422)
    assert counts(client) == before


def test_draft_template_is_refused(client: TestClient, setup: dict[str, str]) -> None:
    plan = import_template(client, VERTEBROPLASTY, activate=False)
    response = client.get(
        f"/fhir/PlanDefinition/{plan['id']}/$apply",
        params={"subject": setup["patient"], "fever_threshold": "38.0Cel"},
    )
    assert "draft" in outcome(response, 422)


def test_request_errors(client: TestClient, setup: dict[str, str]) -> None:
    plan = import_template(client, VERTEBROPLASTY)
    url = f"/fhir/PlanDefinition/{plan['id']}/$apply"
    assert "subject" in outcome(client.get(url, params={"fever_threshold": "38Cel"}), 400)
    assert outcome(client.get("/fhir/PlanDefinition/none/$apply", params={"subject": "x"}), 404)
    unknown_url = client.get(APPLY, params={"url": "http://example.org/none", "subject": "p"})
    assert "http://example.org/none" in outcome(unknown_url, 404)
    unknown_patient = client.get(url, params={"subject": "nobody", "fever_threshold": "38Cel"})
    assert "subject" in outcome(unknown_patient, 422)
    other = create(client, factories.patient())
    wrong_encounter = client.get(
        url,
        params={"subject": other, "encounter": setup["encounter"], "fever_threshold": "38Cel"},
    )
    assert "encounter" in outcome(wrong_encounter, 422)
    assert outcome(client.get(APPLY, params={"subject": setup["patient"]}), 400)
    nested_by_get = client.get(url, params={"subject": setup["patient"], "parameters": "x"})
    assert "parameters" in outcome(nested_by_get, 400)
    bad_name = client.post(
        url, json=parameters({"name": "fever_threshold", "valueString": "38Cel"}), headers=JSON
    )
    assert "fever_threshold" in outcome(bad_name, 400)


def test_capability_statement_lists_apply(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    plan = next(r for r in statement["rest"][0]["resource"] if r["type"] == "PlanDefinition")
    names = {o["name"] for o in plan["operation"]}
    assert "apply" in names
