"""The two forms of the compartment rule agree: SQL on the index, and a resource's own references.

Every HL7 R4 example this server stores is loaded; for each patient any of them references, the
resources the SQL criterion finds must be exactly those whose content says they belong to that
patient.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from careplan_fhir.auth.compartment import (
    COMPARTMENT_PARAMS,
    compartment_predicate,
    document_in_compartment,
    in_compartment_type,
)
from careplan_fhir.fhir.search_parameters import OWN_STORAGE, parameters_for
from careplan_fhir.storage.search import resource_table
from tests.factories import care_plan, observation, task
from tests.tokens import TEST_BASE

EXAMPLES = Path(__file__).parent / "data" / "hl7-r4-examples"
_PATIENT_REFERENCE = re.compile(r'"reference"\s*:\s*"(?:[^"]*/)?Patient/([A-Za-z0-9\-.]{1,64})"')


def test_every_compartment_parameter_is_indexed_as_a_reference() -> None:
    for resource_type, names in COMPARTMENT_PARAMS.items():
        params = parameters_for(resource_type)
        for name in names:
            assert params[name].type == "reference", (resource_type, name)


def test_definitions_are_outside_the_compartment() -> None:
    for resource_type in ("PlanDefinition", "Questionnaire", "Practitioner", "Organization"):
        assert not in_compartment_type(resource_type)
    assert in_compartment_type("Patient")
    assert in_compartment_type("Task")


def _store_examples(client: TestClient) -> list[dict[str, Any]]:
    stored = []
    for path in sorted(EXAMPLES.glob("*.json")):
        document = json.loads(path.read_bytes())
        response = client.put(f"/fhir/{document['resourceType']}/{document['id']}", json=document)
        if response.status_code in (200, 201):
            stored.append(response.json())
    extra = [
        care_plan(
            "p1", id="cp-other-base", subject={"reference": "http://elsewhere/fhir/Patient/p1"}
        ),
        care_plan("p1", id="cp-own-base", subject={"reference": f"{TEST_BASE}/Patient/p1"}),
        task("p1", id="task-owned", **{"for": {"reference": "Patient/p2"}}),
        observation("p2", id="obs-performer", performer=[{"reference": "Patient/p1"}]),
    ]
    for document in extra:
        response = client.put(f"/fhir/{document['resourceType']}/{document['id']}", json=document)
        assert response.status_code == 201, response.text
        stored.append(response.json())
    return stored


def test_sql_and_content_agree_on_every_example(client: TestClient) -> None:
    stored = _store_examples(client)
    assert len(stored) > 200
    patients = {"p1", "p2"}
    for document in stored:
        patients.update(_PATIENT_REFERENCE.findall(json.dumps(document)))
    engine = client.app.state.services.engine  # type: ignore[attr-defined]
    resource = resource_table()
    types = sorted({d["resourceType"] for d in stored})
    checked = 0
    with engine.connect() as connection:
        for patient_id in sorted(patients):
            for resource_type in types:
                if not in_compartment_type(resource_type) or resource_type in OWN_STORAGE:
                    # The audit trail has its own table and is for system clients only: no
                    # patient-confined search ever reaches it.
                    continue
                by_sql = set(
                    connection.execute(
                        select(resource.c.res_id).where(
                            resource.c.res_type == resource_type,
                            compartment_predicate(resource_type, patient_id, TEST_BASE),
                        )
                    ).scalars()
                )
                by_content = {
                    d["id"]
                    for d in stored
                    if d["resourceType"] == resource_type
                    and document_in_compartment(d, patient_id, TEST_BASE)
                }
                assert by_sql == by_content, (patient_id, resource_type)
                checked += len(by_sql)
    assert checked > 20  # the examples really do put resources in compartments


def test_foreign_base_references_are_not_local(client: TestClient) -> None:
    stored = {d["id"]: d for d in _store_examples(client)}
    assert not document_in_compartment(stored["cp-other-base"], "p1", TEST_BASE)
    assert document_in_compartment(stored["cp-own-base"], "p1", TEST_BASE)
    assert document_in_compartment(stored["task-owned"], "p1", TEST_BASE)  # owner
    assert document_in_compartment(stored["task-owned"], "p2", TEST_BASE)  # for
    assert document_in_compartment(stored["obs-performer"], "p1", TEST_BASE)
