"""``GET /fhir/metadata`` tells the truth: what it lists works."""

from __future__ import annotations

from fastapi.testclient import TestClient

from careplan_fhir.fhir.models import SERVED_TYPES

SAMPLE_VALUES = {
    "token": "x",
    "reference": "Patient/x",
    "date": "ge2026-01-01",
    "string": "x",
    "uri": "http://example.org/x",
    "quantity": "5",
}


def test_capability_statement_shape(client: TestClient) -> None:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    assert "application/fhir+xml" in statement["format"]
    assert statement["kind"] == "instance"
    rest = statement["rest"][0]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}
    assert sorted(r["type"] for r in rest["resource"]) == sorted(SERVED_TYPES)
    care_plan = next(r for r in rest["resource"] if r["type"] == "CarePlan")
    names = {p["name"] for p in care_plan["searchParam"]}
    for required in (
        "patient",
        "subject",
        "encounter",
        "status",
        "category",
        "date",
        "intent",
        "goal",
        "instantiates-canonical",
        "activity-reference",
        "based-on",
        "replaces",
        "_id",
        "_lastUpdated",
    ):
        assert required in names
    assert "CarePlan:goal" in care_plan["searchInclude"]
    assert "Provenance:target" in care_plan["searchRevInclude"]
    task = next(r for r in rest["resource"] if r["type"] == "Task")
    due = next(p for p in task["searchParam"] if p["name"] == "due-date")
    assert due["definition"].endswith("SearchParameter/Task-due-date")


def test_every_advertised_search_parameter_is_understood(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    strict = {"Prefer": "handling=strict"}
    for resource in statement["rest"][0]["resource"]:
        for param in resource["searchParam"]:
            value = SAMPLE_VALUES[param["type"]]
            url = f"/fhir/{resource['type']}?{param['name']}={value}"
            response = client.get(url, headers=strict)
            assert response.status_code == 200, (url, response.text)
            assert response.json()["total"] == 0
        for include in resource.get("searchInclude", []):
            response = client.get(f"/fhir/{resource['type']}?_include={include}", headers=strict)
            assert response.status_code == 200, (include, response.text)


def test_the_audit_trail_advertises_no_includes_and_refuses_them(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    (audit,) = [r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent"]
    assert "searchInclude" not in audit and "searchRevInclude" not in audit
    assert {p["name"] for p in audit["searchParam"]} >= {"date", "patient", "agent", "entity"}
    for url in (
        "/fhir/AuditEvent?_include=AuditEvent:agent",
        "/fhir/CarePlan?_revinclude=AuditEvent:entity",
        "/fhir/Provenance?_include=Provenance:target:AuditEvent",
    ):
        response = client.get(url)
        assert response.status_code == 400, (url, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"


def test_every_advertised_interaction_is_routed(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    for resource in statement["rest"][0]["resource"]:
        codes = {i["code"] for i in resource["interaction"]}
        kind = resource["type"]
        if "search-type" in codes:
            assert client.get(f"/fhir/{kind}").status_code == 200
        if "history-type" in codes:
            assert client.get(f"/fhir/{kind}/_history").status_code == 200
        if "read" in codes:
            assert client.get(f"/fhir/{kind}/none").status_code == 404
        if "history-instance" in codes:
            assert client.get(f"/fhir/{kind}/none/_history").status_code == 404


def test_capability_statement_is_a_valid_resource(client: TestClient) -> None:
    from careplan_fhir.fhir.models import validate_resource

    validate_resource(client.get("/fhir/metadata").json())
