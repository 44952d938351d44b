"""Every write gets a Provenance unless the client supplied one (https://hl7.org/fhir/R4/provenance.html).

Through HTTP on both backends: create, update, patch and delete each store, in the same
transaction, a Provenance whose target is the version written and whose activity names the
interaction; ``_revinclude=Provenance:target`` and ``Provenance?target=`` find them; an
``X-Provenance`` header, or a transaction's own Provenance entry, replaces the automatic one;
writing a Provenance or an AuditEvent adds none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from careplan_fhir.audit.events import CLIENT_SYSTEM
from careplan_fhir.audit.provenance import DATA_OPERATION, PARTICIPANT_TYPE
from careplan_fhir.fhir.models import validate_resource
from tests.audit_setup import AuditedServer, audited_server, audited_settings
from tests.factories import care_plan, observation, patient, provenance, task
from tests.plan_setup import LEAFLET

FHIR_JSON = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture
def server(database_url: str, signing_key_file: Path) -> Iterator[AuditedServer]:
    with audited_server(audited_settings(database_url, signing_key_file), signing_key_file) as s:
        yield s


def provenances(server: AuditedServer, query: str = "") -> list[dict[str, Any]]:
    return server.search(f"/fhir/Provenance?_count=100&_sort=_lastUpdated{query}")


def targets(found: list[dict[str, Any]]) -> list[str]:
    return [t["reference"] for p in found for t in p["target"]]


def activity(found: dict[str, Any]) -> tuple[str, str]:
    (coding,) = found["activity"]["coding"]
    assert coding["system"] == DATA_OPERATION
    return coding["code"], coding["display"]


def test_create_update_patch_and_delete_each_leave_a_provenance(server: AuditedServer) -> None:
    client, system = server.client, server.system
    created = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON})
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    updated = client.put(
        f"/fhir/Patient/{pid}",
        json={**patient(), "id": pid, "gender": "male"},
        headers={**system, **FHIR_JSON},
    )
    assert updated.status_code == 200, updated.text
    patched = client.patch(
        f"/fhir/Patient/{pid}",
        content=json.dumps([{"op": "replace", "path": "/gender", "value": "other"}]),
        headers={**system, **JSON_PATCH},
    )
    assert patched.status_code == 200, patched.text
    assert client.delete(f"/fhir/Patient/{pid}", headers=system).status_code == 200

    found = provenances(server)

    assert targets(found) == [f"Patient/{pid}/_history/{v}" for v in (1, 2, 3, 4)]
    assert [activity(p) for p in found] == [
        ("CREATE", "create"),
        ("UPDATE", "revise"),
        ("UPDATE", "revise"),
        ("DELETE", "delete"),
    ]
    assert [p["agent"][0]["type"]["coding"][0]["code"] for p in found] == [
        "author",
        "author",
        "author",
        "performer",
    ]
    for item in found:
        (agent,) = item["agent"]
        assert agent["type"]["coding"][0]["system"] == PARTICIPANT_TYPE
        assert agent["who"] == {"identifier": {"system": CLIENT_SYSTEM, "value": "ehr-system"}}
        assert "onBehalfOf" not in agent
        assert "reason" not in item and "extension" not in item
        validate_resource(item)
    # recorded is when the version was written
    versions = client.get(f"/fhir/Patient/{pid}/_history", headers=system).json()["entry"]
    written = sorted(e["resource"]["meta"]["lastUpdated"] for e in versions if "resource" in e)
    assert [p["recorded"] for p in found][:3] == written


def test_revinclude_and_target_search_find_versioned_targets(server: AuditedServer) -> None:
    client, system = server.client, server.system
    pid = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON}).json()["id"]
    client.put(
        f"/fhir/Patient/{pid}", json={**patient(), "id": pid}, headers={**system, **FHIR_JSON}
    )
    other = client.post("/fhir/Patient", json=patient(), headers={**system, **FHIR_JSON}).json()

    assert len(server.search(f"/fhir/Provenance?target=Patient/{pid}")) == 2
    assert len(server.search(f"/fhir/Provenance?target=Patient/{other['id']}")) == 1
    assert len(server.search(f"/fhir/Provenance?patient={pid}")) == 2
    server.sink.flush()
    bundle = client.get(
        f"/fhir/Patient?_id={pid}&_revinclude=Provenance:target", headers=system
    ).json()
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert sorted(targets(included)) == [f"Patient/{pid}/_history/1", f"Patient/{pid}/_history/2"]


def test_x_provenance_header_replaces_the_automatic_one(server: AuditedServer) -> None:
    supplied = provenance(
        agent=[{"who": {"reference": "Practitioner/dr9"}}],
        recorded="2026-02-28T12:00:00Z",
    )
    del supplied["target"]
    response = server.client.post(
        "/fhir/Observation",
        json=observation("p1"),
        headers={**server.system, **FHIR_JSON, "X-Provenance": json.dumps(supplied)},
    )
    assert response.status_code == 201, response.text
    oid = response.json()["id"]

    (found,) = provenances(server)

    assert found["target"] == [{"reference": f"Observation/{oid}/_history/1"}]
    assert found["agent"] == [{"who": {"reference": "Practitioner/dr9"}}]
    assert found["recorded"] == "2026-02-28T12:00:00Z"


def test_x_provenance_percent_encoded_on_update(server: AuditedServer) -> None:
    from urllib.parse import quote

    supplied = {
        "resourceType": "Provenance",
        "recorded": "2026-02-28T12:00:00Z",
        "agent": [{"who": {"display": "Ward clerk"}}],
    }
    response = server.client.put(
        "/fhir/Patient/p5",
        json={**patient(), "id": "p5"},
        headers={**server.system, **FHIR_JSON, "X-Provenance": quote(json.dumps(supplied))},
    )
    assert response.status_code == 201, response.text
    (found,) = provenances(server)
    assert found["target"] == [{"reference": "Patient/p5/_history/1"}]
    assert found["agent"] == [{"who": {"display": "Ward clerk"}}]


@pytest.mark.parametrize(
    "header",
    [
        json.dumps(provenance("Patient/x")),  # a target: the server sets it
        '{"resourceType": "Patient"}',
        "not json",
        json.dumps({"resourceType": "Provenance", "recorded": "yesterday", "agent": []}),
    ],
)
def test_an_unusable_x_provenance_writes_nothing(server: AuditedServer, header: str) -> None:
    response = server.client.post(
        "/fhir/Observation",
        json=observation("p1"),
        headers={**server.system, **FHIR_JSON, "X-Provenance": header},
    )
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert server.search("/fhir/Observation") == []
    assert provenances(server) == []


def test_a_transaction_with_its_own_provenance_gets_no_duplicate(server: AuditedServer) -> None:
    pat, obs = (
        "urn:uuid:0d9c1f00-0000-4000-8000-000000000001",
        "urn:uuid:0d9c1f00-0000-4000-8000-000000000002",
    )
    reading = observation("x", subject={"reference": pat})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": pat,
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": obs,
                "resource": reading,
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "resource": provenance(pat, agent=[{"who": {"reference": "Practitioner/dr9"}}]),
                "request": {"method": "POST", "url": "Provenance"},
            },
        ],
    }
    response = server.client.post("/fhir", json=bundle, headers=server.system)
    assert response.status_code == 200, response.text
    locations = [e["response"]["location"] for e in response.json()["entry"]]
    patient_ref = locations[0].split("/_history/")[0]
    observation_ref = locations[1].split("/_history/")[0]

    found = provenances(server)

    # The client's Provenance covers the Patient; the Observation gets the automatic one;
    # the client's Provenance itself gets none.
    assert len(found) == 2
    by_target = {t: p for p in found for t in targets([p])}
    assert by_target[patient_ref]["agent"] == [{"who": {"reference": "Practitioner/dr9"}}]
    assert by_target[f"{observation_ref}/_history/1"]["agent"][0]["who"]["identifier"] == {
        "system": CLIENT_SYSTEM,
        "value": "ehr-system",
    }


def test_writing_a_provenance_or_an_audit_event_adds_no_provenance(server: AuditedServer) -> None:
    client, system = server.client, server.system
    response = client.post(
        "/fhir/Provenance", json=provenance("Patient/p1"), headers={**system, **FHIR_JSON}
    )
    assert response.status_code == 201, response.text
    event = json.loads(
        (Path(__file__).parent / "data/hl7-r4-examples/AuditEvent-example-rest.json").read_text()
    )
    assert (
        client.put("/fhir/AuditEvent/example-rest", json=event, headers=system).status_code == 201
    )
    (only,) = provenances(server)
    assert only["id"] == response.json()["id"]


def test_a_patient_confined_write_is_on_the_patients_behalf(server: AuditedServer) -> None:
    client = server.client
    client.put("/fhir/Patient/p3", json={**patient(), "id": "p3"}, headers=server.system)
    portal = server.headers("patient/Observation.cr", patient="p3", client_id="portal")
    response = client.post(
        "/fhir/Observation", json=observation("p3"), headers={**portal, **FHIR_JSON}
    )
    assert response.status_code == 201, response.text

    (found,) = server.search(f"/fhir/Provenance?target=Observation/{response.json()['id']}")

    (agent,) = found["agent"]
    assert agent["who"] == {"identifier": {"system": CLIENT_SYSTEM, "value": "portal"}}
    assert agent["onBehalfOf"] == {"reference": "Patient/p3"}
    validate_resource(found)


def test_a_user_is_the_agent(server: AuditedServer) -> None:
    clinician = server.headers("user/*.cruds", fhir_user="Practitioner/dr1", client_id="ehr-app")
    response = server.client.post(
        "/fhir/Patient", json=patient(), headers={**clinician, **FHIR_JSON}
    )
    assert response.status_code == 201, response.text
    (found,) = provenances(server)
    assert found["agent"][0]["who"] == {"reference": "Practitioner/dr1"}


def test_a_conditional_create_that_finds_a_match_writes_nothing(server: AuditedServer) -> None:
    client, system = server.client, server.system
    first = client.post(
        "/fhir/Patient",
        json=patient(identifier=[{"system": "urn:mrn", "value": "42"}]),
        headers={**system, **FHIR_JSON},
    )
    assert first.status_code == 201
    again = client.post(
        "/fhir/Patient",
        json=patient(identifier=[{"system": "urn:mrn", "value": "42"}]),
        headers={**system, **FHIR_JSON, "If-None-Exist": "identifier=urn:mrn|42"},
    )
    assert again.status_code == 200, again.text
    assert len(provenances(server)) == 1


def test_versions_written_by_hooks_get_their_provenance(server: AuditedServer) -> None:
    """A Task's status rolls up to its CarePlan (rest/hooks.py): that CarePlan version too."""
    client, system = server.client, {**server.system, **FHIR_JSON}
    plan = care_plan("p1", id="cp1", activity=[{"reference": {"reference": "Task/t1"}}])
    assert client.put("/fhir/CarePlan/cp1", json=plan, headers=system).status_code == 201
    step = task("p1", "cp1", id="t1")
    assert client.put("/fhir/Task/t1", json=step, headers=system).status_code == 201
    step["status"] = "in-progress"
    assert client.put("/fhir/Task/t1", json=step, headers=system).status_code == 200
    # requested, then in-progress: two roll-ups
    assert client.get("/fhir/CarePlan/cp1", headers=system).json()["meta"]["versionId"] == "3"

    found = provenances(server)

    assert targets(found) == [
        "CarePlan/cp1/_history/1",
        "Task/t1/_history/1",
        "CarePlan/cp1/_history/2",
        "Task/t1/_history/2",
        "CarePlan/cp1/_history/3",
    ]
    assert activity(found[-1]) == ("UPDATE", "revise")


def test_every_artifact_of_an_import_gets_its_provenance(server: AuditedServer) -> None:
    response = server.client.post(
        "/fhir/PlanDefinition/$import?version=0.1.0",
        content=LEAFLET.read_text(),
        headers={**server.system, "Content-Type": "text/plain"},
    )
    assert response.status_code == 201, response.text
    stored = [e["resource"] for e in response.json()["entry"]]
    assert len(stored) >= 2

    found = provenances(server)

    assert sorted(targets(found)) == sorted(
        f"{r['resourceType']}/{r['id']}/_history/1" for r in stored
    )
    assert {activity(p) for p in found} == {("CREATE", "create")}
