"""``POST /fhir/Encounter/{id}/$attach-care-plan`` over HTTP: store once, retry, race, refuse."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.settings import Settings
from tests.factories import encounter
from tests.plan_setup import attach, attach_body, create, fever, search, set_up

PLAN_TYPES = ("CarePlan", "Goal", "Task", "Communication", "Provenance")


def issues_of(response: Any, status: int) -> list[dict[str, Any]]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    issues: list[dict[str, Any]] = body["issue"]
    return issues


def count(client: TestClient, resource_type: str) -> int:
    total: int = client.get(f"/fhir/{resource_type}?_summary=count").json()["total"]
    return total


def nothing_stored(client: TestClient) -> bool:
    return all(count(client, kind) == 0 for kind in PLAN_TYPES)


def test_attach_stores_plan_goals_tasks_communication_and_provenance(client: TestClient) -> None:
    setup = set_up(client)
    response = attach(client, setup.encounter_id, attach_body(setup))
    assert response.status_code == 201, response.text
    bundle = response.json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    plan = resources[0]
    assert plan["resourceType"] == "CarePlan"
    assert response.headers["location"].endswith(f"/CarePlan/{plan['id']}/_history/1")
    assert plan["status"] == "active"
    assert plan["encounter"] == {"reference": f"Encounter/{setup.encounter_id}"}
    assert plan["subject"] == {"reference": f"Patient/{setup.patient_id}"}
    assert plan["instantiatesCanonical"] == [setup.canonical]
    assert plan["author"] == {"reference": f"Practitioner/{setup.practitioner_id}"}
    # Relative timing starts at the discharge (the encounter's period.end).
    assert plan["period"]["start"].startswith("2026-03-01T10:00:00")

    found = search(client, f"CarePlan?encounter=Encounter/{setup.encounter_id}")
    assert [p["id"] for p in found] == [plan["id"]]
    tasks = search(client, f"Task?based-on=CarePlan/{plan['id']}")
    assert tasks and {t["status"] for t in tasks} == {"requested"}
    task_refs = {a["reference"]["reference"] for a in plan["activity"] if "reference" in a}
    assert task_refs == {f"Task/{t['id']}" for t in tasks}
    goals = search(client, f"Goal?patient=Patient/{setup.patient_id}")
    assert {f"Goal/{g['id']}" for g in goals} == {g["reference"] for g in plan["goal"]}
    communications = search(client, f"Communication?based-on=CarePlan/{plan['id']}")
    assert len(communications) == 1
    assert "38.0 °C" in str(communications[0]["payload"])
    warning = next(
        a["detail"]["description"] for a in plan["activity"] if "Fever" in str(a.get("detail"))
    )
    assert "38.0 °C (100.4 °F)" in warning

    provenances = search(client, f"Provenance?target=CarePlan/{plan['id']}")
    assert len(provenances) == 1
    provenance = provenances[0]
    targets = {t["reference"].split("/_history/")[0] for t in provenance["target"]}
    stored = {f"{r['resourceType']}/{r['id']}" for r in resources[:-1]}
    assert targets == stored
    assert provenance["agent"][0]["who"] == {"reference": f"Practitioner/{setup.practitioner_id}"}
    assert provenance["entity"][0]["what"]["reference"] == setup.canonical
    assert provenance["activity"]["coding"][0]["code"] == "CREATE"
    assert resources[-1]["id"] == provenance["id"]


def test_the_same_call_again_returns_the_stored_plan(client: TestClient) -> None:
    setup = set_up(client)
    first = attach(client, setup.encounter_id, attach_body(setup))
    assert first.status_code == 201, first.text
    counts = {kind: count(client, kind) for kind in PLAN_TYPES}
    again = attach(client, setup.encounter_id, attach_body(setup))
    assert again.status_code == 200, again.text
    assert again.headers["location"] == first.headers["location"]
    ids = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in first.json()["entry"]]
    assert sorted(ids) == sorted(
        (e["resource"]["resourceType"], e["resource"]["id"]) for e in again.json()["entry"]
    )
    assert {kind: count(client, kind) for kind in PLAN_TYPES} == counts
    # By template id the call is the same call too.
    by_id = attach_body(setup)
    by_id["parameter"][0] = {
        "name": "planDefinition",
        "valueReference": {"reference": f"PlanDefinition/{setup.template_id}"},
    }
    assert attach(client, setup.encounter_id, by_id).status_code == 200


def test_two_concurrent_calls_store_one_plan(
    settings: Settings, system_headers: dict[str, str]
) -> None:
    # uuid ids: the shared fixture's id generator is not meant for several threads at once.
    app = create_app(settings, new_id=lambda: uuid.uuid4().hex)
    with TestClient(app, headers=system_headers) as client:
        setup = set_up(client)
        body = attach_body(setup)
        with ThreadPoolExecutor(max_workers=4) as pool:
            responses = list(pool.map(lambda _: attach(client, setup.encounter_id, body), range(4)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 200, 201], [r.text for r in responses]
        assert len({r.headers["location"] for r in responses}) == 1
        plans = search(client, f"CarePlan?encounter=Encounter/{setup.encounter_id}")
        assert len(plans) == 1
        tasks = search(client, f"Task?based-on=CarePlan/{plans[0]['id']}")
        assert count(client, "Task") == len(tasks) > 0
        assert count(client, "Provenance") == 1
        assert count(client, "Communication") == 1


def test_unknown_encounter_is_404(client: TestClient) -> None:
    setup = set_up(client)
    issues = issues_of(attach(client, "nope", attach_body(setup)), 404)
    assert "Encounter/nope" in issues[0]["diagnostics"]
    assert nothing_stored(client)


def test_encounter_without_patient_subject_is_422(client: TestClient) -> None:
    setup = set_up(client)
    orphan = create(client, encounter(None))
    issues = issues_of(attach(client, orphan, attach_body(setup)), 422)
    assert issues[0]["expression"] == ["Encounter.subject"]
    assert nothing_stored(client)


def test_unknown_template_is_404(client: TestClient) -> None:
    setup = set_up(client)
    body = attach_body(setup, canonical="http://example.org/PlanDefinition/none|1")
    issues_of(attach(client, setup.encounter_id, body), 404)
    body = attach_body(setup, canonical=setup.canonical.replace("0.1.0", "9.9"))
    issues_of(attach(client, setup.encounter_id, body), 404)
    assert nothing_stored(client)


def test_draft_and_retired_templates_are_422(client: TestClient) -> None:
    setup = set_up(client)
    template = client.get(f"/fhir/PlanDefinition/{setup.template_id}").json()
    for status in ("draft", "retired"):
        template["status"] = status
        assert client.put(f"/fhir/PlanDefinition/{setup.template_id}", json=template).is_success
        issues = issues_of(attach(client, setup.encounter_id, attach_body(setup)), 422)
        assert status in issues[0]["diagnostics"]
    assert nothing_stored(client)


def test_missing_or_wrong_clinician_parameter_is_422_naming_it(client: TestClient) -> None:
    setup = set_up(client)
    walking = {"name": "walking_after", "valueQuantity": {"value": 2, "code": "d"}}
    for values, expected in (
        ([walking], "fever_threshold"),
        ([fever("38.0", "kg")], "fever_threshold"),
        ([fever("55")], "fever_threshold"),
        ([fever(), {"name": "bath_after", "valueString": "x"}], "bath_after"),
    ):
        issues = issues_of(attach(client, setup.encounter_id, attach_body(setup, *values)), 422)
        assert expected in {e for i in issues for e in i.get("expression", [])}, issues
        assert expected in issues[0]["diagnostics"] or any(
            expected in i["diagnostics"] for i in issues
        )
    assert nothing_stored(client)


def test_malformed_requests_are_400_and_unknown_practitioner_422(client: TestClient) -> None:
    setup = set_up(client)
    body = attach_body(setup)
    del body["parameter"][0]
    issues = issues_of(attach(client, setup.encounter_id, body), 400)
    assert "planDefinition" in issues[0]["diagnostics"]
    body = attach_body(setup)
    body["parameter"][1]["valueReference"] = {"reference": "Patient/x"}
    issues_of(attach(client, setup.encounter_id, body), 400)
    issues = issues_of(
        attach(client, setup.encounter_id, attach_body(setup, practitioner_id="ghost")), 422
    )
    assert issues[0]["expression"] == ["practitioner"]
    not_parameters = client.post(
        f"/fhir/Encounter/{setup.encounter_id}/$attach-care-plan", json={"resourceType": "Basic"}
    )
    issues_of(not_parameters, 400)
    assert nothing_stored(client)


def test_encounter_conditions_become_addresses(client: TestClient) -> None:
    setup = set_up(client)
    condition = create(
        client,
        {
            "resourceType": "Condition",
            "code": {"text": "Vertebral compression fracture"},
            "subject": {"reference": f"Patient/{setup.patient_id}"},
        },
    )
    encounter_id = create(
        client,
        encounter(
            setup.patient_id,
            diagnosis=[{"condition": {"reference": f"Condition/{condition}"}}],
        ),
    )
    response = attach(client, encounter_id, attach_body(setup))
    assert response.status_code == 201, response.text
    plan = response.json()["entry"][0]["resource"]
    assert plan["addresses"] == [{"reference": f"Condition/{condition}"}]


def test_attach_is_listed_in_the_capability_statement(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    names = {o["name"] for o in resources["Encounter"]["operation"]}
    assert "attach-care-plan" in names
    assert "revoke" in {o["name"] for o in resources["CarePlan"]["operation"]}


def test_stored_plan_declares_and_meets_its_profiles(client: TestClient) -> None:
    setup = set_up(client)
    response = attach(client, setup.encounter_id, attach_body(setup))
    assert response.status_code == 201, response.text
    for entry in response.json()["entry"]:
        resource = entry["resource"]
        kind = resource["resourceType"]
        if kind == "Provenance":
            continue
        stored = client.get(f"/fhir/{kind}/{resource['id']}").json()
        profiles = stored["meta"]["profile"]
        assert any(
            p.startswith("https://careplan-fhir.org/fhir/StructureDefinition/") for p in profiles
        )
        checked = client.post(f"/fhir/{kind}/$validate", json=stored)
        assert checked.status_code == 200
        outcome = checked.json()
        assert [i for i in outcome["issue"] if i["severity"] in ("error", "fatal")] == [], outcome
