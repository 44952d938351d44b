"""Setting up an attach call over HTTP: an imported, active template, a patient, an encounter."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.factories import encounter, patient, practitioner

LEAFLET = Path(__file__).parent.parent / "examples" / "guidance" / "vertebroplasty.txt"
UCUM = "http://unitsofmeasure.org"


@dataclass
class Setup:
    template_id: str
    canonical: str
    patient_id: str
    encounter_id: str
    practitioner_id: str


def import_template(client: TestClient, text: str, version: str = "0.1.0") -> dict[str, Any]:
    """Import a leaflet as a draft and activate it; the active PlanDefinition."""
    response = client.post(
        f"/fhir/PlanDefinition/$import?version={version}",
        content=text,
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 201, response.text
    template: dict[str, Any] = response.json()["entry"][0]["resource"]
    template["status"] = "active"
    activated = client.put(f"/fhir/PlanDefinition/{template['id']}", json=template)
    assert activated.status_code == 200, activated.text
    return template


def create(client: TestClient, resource: dict[str, Any]) -> str:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def set_up(client: TestClient, **encounter_overrides: Any) -> Setup:
    template = import_template(client, LEAFLET.read_text())
    patient_id = create(client, patient())
    encounter_id = create(client, encounter(patient_id, **encounter_overrides))
    practitioner_id = create(client, practitioner())
    return Setup(
        template["id"],
        f"{template['url']}|{template['version']}",
        patient_id,
        encounter_id,
        practitioner_id,
    )


def fever(value: str = "38.0", code: str = "Cel") -> dict[str, Any]:
    return {
        "name": "fever_threshold",
        "valueQuantity": {"value": Decimal(value), "unit": code, "system": UCUM, "code": code},
    }


def attach_body(
    setup: Setup,
    *clinician: dict[str, Any],
    canonical: str | None = None,
    practitioner_id: str | None = None,
) -> dict[str, Any]:
    values = list(clinician) if clinician else [fever()]
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "planDefinition", "valueCanonical": canonical or setup.canonical},
            {
                "name": "practitioner",
                "valueReference": {
                    "reference": f"Practitioner/{practitioner_id or setup.practitioner_id}"
                },
            },
            {
                "name": "parameters",
                "resource": {"resourceType": "Parameters", "parameter": values},
            },
        ],
    }


def attach(client: TestClient, encounter_id: str, body: dict[str, Any]) -> Any:
    return client.post(f"/fhir/Encounter/{encounter_id}/$attach-care-plan", content=_dumps(body))


def _dumps(body: dict[str, Any]) -> bytes:
    from careplan_fhir.fhir import jsonio

    return jsonio.dumps(body)


def search(client: TestClient, query: str) -> list[dict[str, Any]]:
    response = client.get(f"/fhir/{query}&_count=200" if "?" in query else f"/fhir/{query}")
    assert response.status_code == 200, response.text
    return [
        e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"
    ]
