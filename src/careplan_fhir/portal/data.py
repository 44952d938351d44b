"""The portal's reads and writes, each through the guarded interaction functions.

A page builds a :class:`~careplan_fhir.rest.context.FhirContext` for its request with the
caller's :class:`~careplan_fhir.auth.access.Access` in the request scope (where the FHIR API's
authentication middleware puts it), then reads with :class:`PortalReader`: searches get the
caller's compartment as criteria before they run (``guard_search``), reads answer 404 for what
is not the caller's (``guarded_read``), writes go through ``update_resource`` (scopes, the
patient's own Task progress only, the automatic Provenance, the Task roll-up). A patient editing
a URL to another patient's Task or plan gets the same 404 as for one that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from careplan_fhir.auth.access import SCOPE_KEY, Access
from careplan_fhir.errors import FhirError
from careplan_fhir.fhir import jsonio
from careplan_fhir.rest.authorization import guard_search, guarded_read
from careplan_fhir.rest.context import FhirContext, Services
from careplan_fhir.storage.search import parse_search, run_search

from .view_models import contact_references, reference_id

COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
_MAX = 1000


def portal_context(request: Request, access: Access) -> FhirContext:
    """The request's FHIR context, acting as ``access`` (the caller the portal verified)."""
    request.scope[SCOPE_KEY] = access
    services: Services = request.app.state.services
    return FhirContext(request, services)


class PortalReader:
    """Guarded reads of one request."""

    def __init__(self, ctx: FhirContext) -> None:
        self.ctx = ctx

    def search(self, resource_type: str, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The matches (first 1000) the caller may see."""
        ctx = self.ctx
        request = parse_search(
            resource_type,
            [*params, ("_count", str(_MAX))],
            base_url=ctx.base_url,
            default_count=_MAX,
            max_count=_MAX,
            strict=True,
        )
        request.total = "none"
        guard_search(ctx, request)
        result = run_search(ctx.repository, request)
        return [jsonio.loads(stored.raw) for stored in result.matches if stored.raw is not None]

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """The resource (404 when it is not the caller's, 410 when deleted)."""
        stored = guarded_read(self.ctx, resource_type, resource_id)
        assert stored.raw is not None
        document: dict[str, Any] = jsonio.loads(stored.raw)
        return document

    def resolve(self, reference: str) -> dict[str, Any] | None:
        """A local reference ``Type/id`` read if the caller may; None otherwise."""
        parts = reference.split("/")
        if len(parts) != 2 or not all(parts):
            return None
        try:
            return self.read(parts[0], parts[1])
        except FhirError:
            return None


@dataclass
class PatientRecord:
    """What the patient pages show: her record, active plans and everything they name."""

    patient: dict[str, Any] | None
    plans: list[dict[str, Any]]
    tasks: list[dict[str, Any]] = field(default_factory=list)
    goals: dict[str, dict[str, Any]] = field(default_factory=dict)
    education: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    resolved: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tasks_by_id(self) -> dict[str, dict[str, Any]]:
        return {str(t.get("id")): t for t in self.tasks}


def active_plans(reader: PortalReader, patient_id: str) -> list[dict[str, Any]]:
    plans = reader.search("CarePlan", [("subject", f"Patient/{patient_id}"), ("status", "active")])
    return sorted(plans, key=lambda p: str((p.get("period") or {}).get("start") or ""))


def load_record(
    reader: PortalReader,
    patient_id: str,
    *,
    plan_id: str | None = None,
    details: bool = False,
    contacts: bool = False,
) -> PatientRecord:
    """The patient, her active plans (or the one named) and their Tasks; with ``details``
    their Goals and education Communications, with ``contacts`` the care team's records."""
    patient = reader.resolve(f"Patient/{patient_id}")
    plans = [reader.read("CarePlan", plan_id)] if plan_id else active_plans(reader, patient_id)
    record = PatientRecord(patient, plans)
    if not plans:
        return record
    based_on = ",".join(f"CarePlan/{p['id']}" for p in plans)
    record.tasks = reader.search("Task", [("based-on", based_on)])
    if details:
        goal_ids = [
            goal_id
            for plan in plans
            for goal_id in (reference_id(g, "Goal") for g in plan.get("goal") or [])
            if goal_id
        ]
        if goal_ids:
            goals = reader.search("Goal", [("_id", ",".join(dict.fromkeys(goal_ids)))])
            record.goals = {str(g["id"]): g for g in goals}
        education = reader.search(
            "Communication",
            [("based-on", based_on), ("category", f"{COMMUNICATION_CATEGORY}|instruction")],
        )
        for communication in education:
            for reference in communication.get("basedOn") or []:
                plan_ref = reference_id(reference, "CarePlan")
                if plan_ref:
                    record.education.setdefault(plan_ref, []).append(communication)
    if contacts:
        for plan in plans:
            for reference in contact_references(plan):
                if reference not in record.resolved:
                    found = reader.resolve(reference)
                    if found is not None:
                        record.resolved[reference] = found
    return record
