"""batch and transaction Bundles (https://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi.testclient import TestClient

from tests.factories import care_plan, goal, patient, task


def entry(
    method: str,
    url: str,
    resource: dict[str, Any] | None = None,
    full_url: str | None = None,
    **request: str,
) -> dict[str, Any]:
    item: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        item["resource"] = resource
    if full_url:
        item["fullUrl"] = full_url
    return item


def bundle(kind: str, *entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_resolves_urn_uuid_references(client: TestClient) -> None:
    pat, plan = (
        "urn:uuid:7f3c2a51-0000-4000-8000-000000000001",
        "urn:uuid:7f3c2a51-0000-4000-8000-000000000002",
    )
    plan_resource = care_plan("x")
    plan_resource["subject"] = {"reference": pat}
    plan_resource["goal"] = [{"reference": "urn:uuid:7f3c2a51-0000-4000-8000-000000000003"}]
    goal_resource = goal("x")
    goal_resource["subject"] = {"reference": pat}
    task_resource = task("x")
    task_resource["for"] = {"reference": pat}
    task_resource["owner"] = {"reference": pat}
    task_resource["basedOn"] = [{"reference": plan}]
    response = client.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("POST", "Task", task_resource),
            entry("POST", "CarePlan", plan_resource, plan),
            entry("POST", "Goal", goal_resource, "urn:uuid:7f3c2a51-0000-4000-8000-000000000003"),
            entry("POST", "Patient", patient(), pat),
        ),
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created"] * 4
    # Bundle.entry.response.lastModified is an instant (the stored meta.lastUpdated).
    for answered in result["entry"]:
        stored = client.get(f"/fhir/{answered['response']['location']}").json()
        assert answered["response"]["lastModified"] == stored["meta"]["lastUpdated"]
    locations = [e["response"]["location"] for e in result["entry"]]
    patient_ref = locations[3].split("/_history")[0]
    plan_ref = locations[1].split("/_history")[0]
    stored_task = client.get(f"/fhir/{locations[0].split('/_history')[0]}").json()
    assert stored_task["for"]["reference"] == patient_ref
    assert stored_task["basedOn"][0]["reference"] == plan_ref
    stored_plan = client.get(f"/fhir/{plan_ref}").json()
    assert stored_plan["subject"]["reference"] == patient_ref
    assert stored_plan["goal"][0]["reference"] == locations[2].split("/_history")[0]
    found = client.get(f"/fhir/CarePlan?patient={patient_ref}").json()
    assert found["total"] == 1


def test_transaction_is_all_or_nothing(client: TestClient) -> None:
    response = client.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("POST", "Patient", patient()),
            entry("POST", "Task", task("id1", status="bogus")),
        ),
    )
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "entry[1]" in outcome["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_transaction_failure_status_follows_the_cause(client: TestClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"))
    response = client.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("POST", "Patient", patient()),
            entry("PUT", "Patient/p1", patient(id="p1", gender="male"), ifMatch='W/"7"'),
        ),
    )
    assert response.status_code == 412
    assert client.get("/fhir/Patient").json()["total"] == 1
    assert client.get("/fhir/Patient/p1").json()["gender"] == "female"


def test_transaction_processing_order_and_conditional_reference(client: TestClient) -> None:
    client.put("/fhir/Patient/old", json=patient(id="old"))
    client.put(
        "/fhir/Patient/known",
        json=patient(id="known", identifier=[{"system": "urn:mrn", "value": "42"}]),
    )
    plan = care_plan("x")
    plan["subject"] = {"reference": "Patient?identifier=urn:mrn|42"}
    response = client.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("GET", "Patient/old"),  # reads run last: after the delete, so 410
            entry("POST", "CarePlan", plan),
            entry("DELETE", "Patient/old"),
        ),
    )
    # GET of a deleted resource inside a transaction fails the transaction as a whole.
    assert response.status_code == 410
    assert client.get("/fhir/Patient/old").status_code == 200
    response = client.post(
        "/fhir",
        json=bundle(
            "transaction",
            entry("GET", "CarePlan?patient=known"),
            entry("POST", "CarePlan", plan),
            entry("DELETE", "Patient/old"),
        ),
    )
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert entries[0]["resource"]["type"] == "searchset"
    assert entries[0]["resource"]["total"] == 1  # the search saw the POST: it ran after it
    assert entries[1]["resource"]["subject"]["reference"] == "Patient/known"
    assert client.get("/fhir/Patient/old").status_code == 410


def test_conditional_reference_must_match_once(client: TestClient) -> None:
    plan = care_plan("x")
    plan["subject"] = {"reference": "Patient?identifier=urn:mrn|none"}
    response = client.post("/fhir", json=bundle("transaction", entry("POST", "CarePlan", plan)))
    assert response.status_code == 412
    assert client.get("/fhir/CarePlan").json()["total"] == 0


def test_transaction_conditional_create_and_patch(client: TestClient) -> None:
    identified = patient(identifier=[{"system": "urn:mrn", "value": "7"}])
    tx = bundle(
        "transaction",
        entry(
            "POST",
            "Patient",
            identified,
            "urn:uuid:0d4f0c8e-1111-4000-8000-000000000001",
            ifNoneExist="identifier=urn:mrn|7",
        ),
    )
    first = client.post("/fhir", json=tx).json()
    second = client.post("/fhir", json=tx).json()
    assert first["entry"][0]["response"]["status"] == "201 Created"
    assert second["entry"][0]["response"]["status"] == "200 OK"
    assert client.get("/fhir/Patient").json()["total"] == 1
    patch = [{"op": "replace", "path": "/gender", "value": "male"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(patch).encode()).decode(),
    }
    patient_id = first["entry"][0]["response"]["location"].split("/")[1]
    patched = client.post(
        "/fhir", json=bundle("transaction", entry("PATCH", f"Patient/{patient_id}", binary))
    )
    assert patched.status_code == 200, patched.text
    assert client.get(f"/fhir/Patient/{patient_id}").json()["gender"] == "male"


def test_batch_entries_succeed_or_fail_alone(client: TestClient) -> None:
    response = client.post(
        "/fhir",
        json=bundle(
            "batch",
            entry("POST", "Patient", patient()),
            entry("POST", "Task", task("id1", status="bogus")),
            entry("GET", "Patient/missing"),
            entry("PUT", "Patient/b1", patient(id="b1")),
        ),
    )
    assert response.status_code == 200
    result = response.json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1] == "422"
    assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert statuses[2] == "404"
    assert statuses[3] == "201 Created"
    assert client.get("/fhir/Patient").json()["total"] == 2


def test_bundle_errors(client: TestClient) -> None:
    assert client.post("/fhir", json=patient()).status_code == 400
    assert (
        client.post("/fhir", json={"resourceType": "Bundle", "type": "collection"}).status_code
        == 400
    )
    no_request = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patient()}],
    }
    assert client.post("/fhir", json=no_request).status_code == 400
    unknown = bundle(
        "transaction", entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "x"}})
    )
    assert client.post("/fhir", json=unknown).status_code == 404


def test_prefer_minimal_transaction_has_no_resources(client: TestClient) -> None:
    response = client.post(
        "/fhir/",
        json=bundle("transaction", entry("POST", "Patient", patient())),
        headers={"Prefer": "return=minimal"},
    )
    assert response.status_code == 200
    only = response.json()["entry"][0]
    assert "resource" not in only
    assert only["response"]["location"].startswith("Patient/")
