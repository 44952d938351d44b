"""Factories for FHIR resources used in tests (small, valid, overridable)."""

from __future__ import annotations

from typing import Any

ASSESS_PLAN = {
    "coding": [
        {
            "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
            "code": "assess-plan",
        }
    ]
}


def patient(**overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": "Rivera", "given": ["Sam"]}],
        "gender": "female",
        "birthDate": "1961-04-12",
    }
    resource.update(overrides)
    return resource


def care_plan(patient_id: str, **overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "category": [ASSESS_PLAN],
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": "2026-03-01"},
    }
    resource.update(overrides)
    return resource


def goal(patient_id: str, text: str = "Pain is under control", **overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": text},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    resource.update(overrides)
    return resource


def task(patient_id: str, plan_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "plan",
        "description": "Check the incision for redness",
        "for": {"reference": f"Patient/{patient_id}"},
        "owner": {"reference": f"Patient/{patient_id}"},
    }
    if plan_id:
        resource["basedOn"] = [{"reference": f"CarePlan/{plan_id}"}]
    resource.update(overrides)
    return resource


def plan_definition(**overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "PlanDefinition",
        "status": "active",
        "url": "http://example.org/fhir/PlanDefinition/knee-recovery",
        "version": "1.0",
        "name": "KneeRecovery",
        "title": "Recovery after knee replacement",
    }
    resource.update(overrides)
    return resource


def provenance(*targets: str, **overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": target} for target in targets],
        "recorded": "2026-03-01T09:00:00Z",
        "agent": [{"who": {"display": "Care coordinator"}}],
    }
    resource.update(overrides)
    return resource


def communication(patient_id: str, **overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "subject": {"reference": f"Patient/{patient_id}"},
        "payload": [{"contentString": "How is the pain today?"}],
    }
    resource.update(overrides)
    return resource


def observation(patient_id: str, **overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "72514-3"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }
    resource.update(overrides)
    return resource


def encounter(patient_id: str | None, **overrides: Any) -> dict[str, Any]:
    """A finished inpatient stay; ``period.end`` is the discharge time."""
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "IMP",
            "display": "inpatient encounter",
        },
        "period": {"start": "2026-02-27T08:00:00Z", "end": "2026-03-01T10:00:00Z"},
    }
    if patient_id is not None:
        resource["subject"] = {"reference": f"Patient/{patient_id}"}
    resource.update(overrides)
    return resource


def practitioner(**overrides: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Practitioner",
        "name": [{"family": "Okafor", "given": ["Ada"], "prefix": ["Dr."]}],
    }
    resource.update(overrides)
    return resource
