"""One patient can never reach another's data, by any interaction (through HTTP, both backends).

Patient A holds a ``patient/*.cruds`` token for herself. Patient B's records exist next to hers.
Every way in (read, vread, search with and without ``patient``, includes, history, batch and
transaction entries, conditional interactions, operations, the fast paths) must answer as if
B's records did not exist, or refuse, and leave nothing written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import (
    care_plan,
    communication,
    encounter,
    goal,
    observation,
    patient,
    plan_definition,
    provenance,
    task,
)
from tests.tokens import bearer, mint_token

VITAL_SIGNS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


class World:
    """Two patients' records, stored by a system client, and a token for each patient."""

    def __init__(self, client: TestClient, key_file: Path) -> None:
        self.client = client
        self.key_file = key_file
        for name in ("a", "b"):
            put(client, patient(id=f"p{name}"))
            put(client, encounter(f"p{name}", id=f"enc-{name}"))
            put(client, goal(f"p{name}", id=f"goal-{name}"))
            put(
                client,
                care_plan(f"p{name}", id=f"plan-{name}", goal=[{"reference": f"Goal/goal-{name}"}]),
            )
            put(client, task(f"p{name}", f"plan-{name}", id=f"task-{name}"))
            put(client, communication(f"p{name}", id=f"comm-{name}"))
            put(
                client,
                observation(
                    f"p{name}",
                    id=f"obs-{name}",
                    identifier=[{"system": "urn:test", "value": f"obs-{name}"}],
                ),
            )
            put(client, provenance(f"Patient/p{name}", id=f"prov-{name}"))
        put(client, plan_definition(id="template"))
        self.a = bearer(self.token("patient/*.cruds", patient="pa"))

    def token(self, scope: str, **claims: Any) -> str:
        return mint_token(self.key_file, scope, subject="portal-app", **claims)

    def count(self, resource_type: str) -> int:
        """How many there are, seen by the system client (the truth)."""
        response = self.client.get(f"/fhir/{resource_type}", params={"_summary": "count"})
        assert response.status_code == 200
        return int(response.json()["total"])

    def as_a(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = {**kwargs.pop("headers", {}), **self.a}
        return self.client.request(method, url, headers=headers, **kwargs)


def put(client: TestClient, resource: dict[str, Any]) -> None:
    response = client.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert response.status_code in (200, 201), response.text


def ids(bundle: dict[str, Any], mode: str | None = None) -> set[str]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if mode is None or e.get("search", {}).get("mode") == mode
    }


def assert_outcome(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.fixture
def world(client: TestClient, signing_key_file: Path) -> World:
    return World(client, signing_key_file)


# -- reads --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "Patient/pb",
        "CarePlan/plan-b",
        "Goal/goal-b",
        "Task/task-b",
        "Observation/obs-b",
        "Communication/comm-b",
        "Encounter/enc-b",
        "Provenance/prov-b",
    ],
)
def test_reading_another_patients_resource_is_404(world: World, path: str) -> None:
    assert_outcome(world.as_a("GET", f"/fhir/{path}"), 404)
    assert_outcome(world.as_a("GET", f"/fhir/{path}/_history/1"), 404)
    assert_outcome(world.as_a("GET", f"/fhir/{path}/_history"), 404)
    own = path.replace("pb", "pa").replace("-b", "-a")
    assert world.as_a("GET", f"/fhir/{own}").status_code == 200
    assert world.as_a("GET", f"/fhir/{own}/_history/1").status_code == 200
    assert world.as_a("GET", f"/fhir/{own}/_history").status_code == 200


def test_read_with_json_accept_takes_the_guarded_path_too(world: World) -> None:
    # The plain-read fast path serves system tokens; a patient's read must still be checked.
    response = world.as_a(
        "GET", "/fhir/CarePlan/plan-b", headers={"Accept": "application/fhir+json"}
    )
    assert_outcome(response, 404)


def test_shared_definitions_are_readable(world: World) -> None:
    assert world.as_a("GET", "/fhir/PlanDefinition/template").status_code == 200


def test_an_older_version_of_a_moved_record_stays_hidden(world: World) -> None:
    """A record filed under B, then corrected to A: A sees it now, never B's version."""
    put(world.client, observation("pb", id="moved"))
    put(world.client, observation("pa", id="moved", status="amended"))
    assert world.as_a("GET", "/fhir/Observation/moved").status_code == 200
    assert_outcome(world.as_a("GET", "/fhir/Observation/moved/_history/1"), 404)
    assert world.as_a("GET", "/fhir/Observation/moved/_history/2").status_code == 200
    history = world.as_a("GET", "/fhir/Observation/moved/_history").json()
    versions = [e["resource"]["meta"]["versionId"] for e in history["entry"] if "resource" in e]
    assert versions == ["2"]


# -- search -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource_type", ["CarePlan", "Goal", "Task", "Observation", "Communication", "Patient"]
)
def test_search_without_patient_sees_only_own(world: World, resource_type: str) -> None:
    bundle = world.as_a("GET", f"/fhir/{resource_type}").json()
    assert bundle["total"] == 1
    assert all(i.split("/")[1] in ("pa",) or i.endswith("-a") for i in ids(bundle))
    count = world.as_a("GET", f"/fhir/{resource_type}", params={"_summary": "count"}).json()
    assert count["total"] == 1
    assert world.count(resource_type) == 2  # B's is there, just not for A


def test_search_naming_another_patient_finds_nothing(world: World) -> None:
    for params in ({"patient": "pb"}, {"subject": "Patient/pb"}, {"_id": "plan-b"}):
        bundle = world.as_a("GET", "/fhir/CarePlan", params=params).json()
        assert bundle["total"] == 0, params
        assert ids(bundle) == set()
    posted = world.as_a(
        "POST",
        "/fhir/CarePlan/_search",
        content="patient=pb",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert posted.json()["total"] == 0


def test_paging_never_counts_other_patients(world: World) -> None:
    for n in range(3):
        put(world.client, observation("pb", id=f"b-extra-{n}"))
    bundle = world.as_a("GET", "/fhir/Observation", params={"_count": "1"}).json()
    assert bundle["total"] == 1
    assert not [link for link in bundle["link"] if link["relation"] == "next"]


def test_includes_across_patients_are_dropped(world: World) -> None:
    # A's plan points at B's goal (a mistake); B's Task is based on A's plan.
    put(
        world.client,
        care_plan(
            "pa", id="plan-a", goal=[{"reference": "Goal/goal-a"}, {"reference": "Goal/goal-b"}]
        ),
    )
    put(world.client, task("pb", "plan-a", id="task-b-on-a"))
    included = world.as_a(
        "GET",
        "/fhir/CarePlan",
        params={"_include": "CarePlan:goal", "_revinclude": "Task:based-on"},
    ).json()
    assert ids(included, "include") == {"Goal/goal-a", "Task/task-a"}
    seen_by_system = world.client.get(
        "/fhir/CarePlan",
        params={"_id": "plan-a", "_include": "CarePlan:goal", "_revinclude": "Task:based-on"},
    ).json()
    assert {"Goal/goal-b", "Task/task-b-on-a"} <= ids(seen_by_system, "include")


def test_revinclude_provenance_keeps_to_the_compartment(world: World) -> None:
    bundle = world.as_a("GET", "/fhir/Patient", params={"_revinclude": "Provenance:target"}).json()
    assert ids(bundle) == {"Patient/pa", "Provenance/prov-a"}


def test_type_and_system_history_are_refused_to_a_patient(world: World) -> None:
    assert_outcome(world.as_a("GET", "/fhir/CarePlan/_history"), 403)
    assert_outcome(world.as_a("GET", "/fhir/_history"), 403)


# -- writes -------------------------------------------------------------------------------------


def test_creating_for_another_patient_is_403_and_writes_nothing(world: World) -> None:
    before = world.count("Observation")
    assert_outcome(world.as_a("POST", "/fhir/Observation", json=observation("pb")), 403)
    assert world.count("Observation") == before
    created = world.as_a("POST", "/fhir/Observation", json=observation("pa"))
    assert created.status_code == 201
    assert world.count("Observation") == before + 1


def test_updating_deleting_patching_another_patients_resource_is_404(world: World) -> None:
    assert_outcome(
        world.as_a("PUT", "/fhir/Observation/obs-b", json=observation("pa", id="obs-b")), 404
    )
    assert_outcome(world.as_a("DELETE", "/fhir/Observation/obs-b"), 404)
    assert_outcome(
        world.as_a(
            "PATCH",
            "/fhir/Observation/obs-b",
            json=[{"op": "replace", "path": "/status", "value": "cancelled"}],
            headers={"Content-Type": "application/json-patch+json"},
        ),
        404,
    )
    stored = world.client.get("/fhir/Observation/obs-b").json()
    assert (stored["meta"]["versionId"], stored["subject"]["reference"]) == ("1", "Patient/pb")


def test_giving_away_own_record_is_refused(world: World) -> None:
    moved = observation("pb", id="obs-a")
    assert_outcome(world.as_a("PUT", "/fhir/Observation/obs-a", json=moved), 403)
    stored = world.client.get("/fhir/Observation/obs-a").json()
    assert (stored["meta"]["versionId"], stored["subject"]["reference"]) == ("1", "Patient/pa")


def test_create_on_update_with_another_patients_subject_is_refused(world: World) -> None:
    response = world.as_a("PUT", "/fhir/Observation/new-one", json=observation("pb", id="new-one"))
    assert_outcome(response, 403)
    assert world.client.get("/fhir/Observation/new-one").status_code == 404


def test_a_patient_ticks_off_her_task_but_changes_nothing_else(world: World) -> None:
    done = task("pa", "plan-a", id="task-a", status="completed")
    assert world.as_a("PUT", "/fhir/Task/task-a", json=done).status_code == 200
    reassigned = task("pa", "plan-a", id="task-a", status="completed", description="Nothing")
    assert_outcome(world.as_a("PUT", "/fhir/Task/task-a", json=reassigned), 403)
    assert world.client.get("/fhir/Task/task-a").json()["meta"]["versionId"] == "2"


def test_conditional_interactions_cannot_find_another_patients_records(world: World) -> None:
    # If-None-Exist matching B's Observation: A's create goes ahead (B's is not a match).
    created = world.as_a(
        "POST",
        "/fhir/Observation",
        json=observation("pa"),
        headers={"If-None-Exist": "identifier=urn:test|obs-b"},
    )
    assert created.status_code == 201
    assert created.headers["location"].split("/")[-3] != "obs-b"
    # Conditional delete with criteria matching only B's: nothing deleted.
    deleted = world.as_a("DELETE", "/fhir/Observation", params={"identifier": "urn:test|obs-b"})
    assert deleted.status_code in (200, 204)
    assert world.client.get("/fhir/Observation/obs-b").status_code == 200
    # Conditional update aimed at B's, with B as the subject: refused, nothing written.
    before = world.count("Observation")
    response = world.as_a(
        "PUT",
        "/fhir/Observation",
        params={"identifier": "urn:test|obs-b"},
        json=observation("pb"),
    )
    assert_outcome(response, 403)
    assert world.count("Observation") == before


# -- batch and transaction ------------------------------------------------------------------------


def test_transaction_touching_another_patient_fails_whole(world: World) -> None:
    before = world.count("Observation")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation("pa"), "request": {"method": "POST", "url": "Observation"}},
            {"resource": observation("pb"), "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = world.as_a("POST", "/fhir", json=bundle)
    assert response.status_code == 403, response.text
    assert world.count("Observation") == before
    reading = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation("pa"), "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": "CarePlan/plan-b"}},
        ],
    }
    assert world.as_a("POST", "/fhir", json=reading).status_code == 404
    assert world.count("Observation") == before


def test_batch_entries_are_each_checked(world: World) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "CarePlan/plan-b"}},
            {"request": {"method": "GET", "url": "CarePlan/plan-a"}},
            {"request": {"method": "GET", "url": "CarePlan?patient=pb"}},
            {"request": {"method": "GET", "url": "CarePlan/plan-b/_history/1"}},
            {"request": {"method": "DELETE", "url": "CarePlan/plan-b"}},
        ],
    }
    response = world.as_a("POST", "/fhir", json=bundle)
    assert response.status_code == 200
    statuses = [e["response"]["status"].split()[0] for e in response.json()["entry"]]
    assert statuses == ["404", "200", "200", "404", "404"]
    assert response.json()["entry"][2]["resource"]["total"] == 0
    assert world.client.get("/fhir/CarePlan/plan-b").status_code == 200


# -- operations ---------------------------------------------------------------------------------


def test_apply_for_another_patient_is_refused(world: World) -> None:
    url = "/fhir/PlanDefinition/template/$apply"
    response = world.as_a("GET", url, params={"subject": "Patient/pb"})
    assert_outcome(response, 422)  # exactly as for a patient who does not exist
    assert response.json()["issue"][0]["diagnostics"] == "subject: Patient/pb is not known here"
    assert world.as_a("GET", url, params={"subject": "Patient/pa"}).status_code == 200


def test_attach_and_import_are_not_for_patients(world: World) -> None:
    before = world.count("CarePlan")
    response = world.as_a(
        "POST",
        "/fhir/Encounter/enc-a/$attach-care-plan",
        json={"resourceType": "Parameters", "parameter": []},
    )
    assert_outcome(response, 403)
    assert world.count("CarePlan") == before
    imported = world.as_a(
        "POST",
        "/fhir/PlanDefinition/$import",
        content=b"Going home\n\nRest.",
        headers={"Content-Type": "text/plain"},
    )
    assert_outcome(imported, 403)


def test_revoking_another_patients_plan_is_404(world: World) -> None:
    assert_outcome(world.as_a("POST", "/fhir/CarePlan/plan-b/$revoke"), 404)
    assert world.client.get("/fhir/CarePlan/plan-b").json()["status"] == "active"


def test_validate_of_another_patients_stored_resource_is_404(world: World) -> None:
    response = world.as_a("POST", "/fhir/Observation/obs-b/$validate", params={"mode": "delete"})
    assert response.status_code == 404


# -- scopes -------------------------------------------------------------------------------------


def test_a_narrow_scope_refuses_other_types_and_interactions(world: World) -> None:
    narrow = bearer(world.token("patient/Observation.rs", patient="pa"))
    assert world.client.get("/fhir/Observation", headers=narrow).json()["total"] == 1
    assert_outcome(world.client.get("/fhir/CarePlan", headers=narrow), 403)
    assert_outcome(world.client.get("/fhir/CarePlan/plan-a", headers=narrow), 403)
    before = world.count("Observation")
    assert_outcome(
        world.client.post("/fhir/Observation", json=observation("pa"), headers=narrow), 403
    )
    assert world.count("Observation") == before


def test_granular_scope_filters_by_its_query(world: World) -> None:
    vital = {"coding": [{"system": VITAL_SIGNS.split("|")[0], "code": "vital-signs"}]}
    put(world.client, observation("pa", id="temp-a", category=[vital]))
    granular = bearer(world.token(f"patient/Observation.rs?category={VITAL_SIGNS}", patient="pa"))
    bundle = world.client.get("/fhir/Observation", headers=granular).json()
    assert ids(bundle) == {"Observation/temp-a"}
    assert world.client.get("/fhir/Observation/temp-a", headers=granular).status_code == 200
    assert_outcome(world.client.get("/fhir/Observation/obs-a", headers=granular), 404)


def test_patient_scope_without_patient_context_reaches_nothing(world: World) -> None:
    contextless = bearer(world.token("patient/*.rs"))
    assert_outcome(world.client.get("/fhir/CarePlan/plan-a", headers=contextless), 403)
    assert_outcome(world.client.get("/fhir/CarePlan", headers=contextless), 403)


def test_user_scope_of_a_patient_user_is_confined(world: World) -> None:
    as_user = bearer(world.token("user/*.rs", fhir_user="Patient/pa"))
    assert world.client.get("/fhir/CarePlan", headers=as_user).json()["total"] == 1
    assert_outcome(world.client.get("/fhir/CarePlan/plan-b", headers=as_user), 404)


def test_practitioner_user_scope_sees_every_patient(world: World) -> None:
    clinician = bearer(world.token("user/*.rs", fhir_user="Practitioner/doc"))
    assert world.client.get("/fhir/CarePlan", headers=clinician).json()["total"] == 2
    assert world.client.get("/fhir/CarePlan/plan-b", headers=clinician).status_code == 200
    assert_outcome(
        world.client.post("/fhir/CarePlan", json=care_plan("pa"), headers=clinician), 403
    )


def test_audit_trail_is_not_for_patients_or_users(world: World) -> None:
    assert_outcome(world.as_a("GET", "/fhir/AuditEvent"), 403)
    clinician = bearer(world.token("user/*.cruds", fhir_user="Practitioner/doc"))
    assert_outcome(world.client.get("/fhir/AuditEvent", headers=clinician), 403)
    assert world.client.get("/fhir/AuditEvent").status_code == 200


def test_patients_cannot_write_shared_definitions(world: World) -> None:
    before = world.count("PlanDefinition")
    assert_outcome(world.as_a("POST", "/fhir/PlanDefinition", json=plan_definition()), 403)
    assert world.count("PlanDefinition") == before


def test_the_audit_trail_is_append_only_even_for_system_clients(client: TestClient) -> None:
    event = {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "recorded": "2026-03-01T09:00:00Z",
        "agent": [{"requestor": True, "who": {"display": "EHR"}}],
        "source": {"observer": {"display": "EHR"}},
    }
    created = client.post("/fhir/AuditEvent", json=event)
    assert created.status_code == 201, created.text
    event_id = created.json()["id"]
    assert_outcome(client.put(f"/fhir/AuditEvent/{event_id}", json={**event, "id": event_id}), 403)
    assert_outcome(client.delete(f"/fhir/AuditEvent/{event_id}"), 403)
    assert client.get(f"/fhir/AuditEvent/{event_id}").json()["meta"]["versionId"] == "1"
    metadata = client.get("/fhir/metadata").json()["rest"][0]["resource"]
    audit = next(r for r in metadata if r["type"] == "AuditEvent")
    codes = {i["code"] for i in audit["interaction"]}
    assert {"create", "read", "search-type"} <= codes
    assert not codes & {"update", "patch", "delete"}
