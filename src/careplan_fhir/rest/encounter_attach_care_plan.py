"""``POST /Encounter/{id}/$attach-care-plan``: apply a recovery template and store the plan, once.

An operation of this project (https://hl7.org/fhir/R4/operations.html), defined by
``profiles/OperationDefinition-Encounter-attach-care-plan.json``. The body is a Parameters
resource:

* ``planDefinition``: the template, ``valueCanonical`` ``url|version`` (or ``url``: its newest
  active version), or ``valueReference`` ``PlanDefinition/{id}``; it must be active;
* ``practitioner``: ``valueReference`` to the Practitioner (or PractitionerRole) attaching it;
* ``organization`` (optional): ``valueReference``;
* ``parameters`` (optional): a nested Parameters ``resource`` (or ``part``) with the template's
  clinician values, e.g. ``fever_threshold`` ``valueQuantity`` 38.0 ``Cel``.

The plan (CarePlan, Goals, Tasks, Communication) and a Provenance are stored in one
transaction by :mod:`careplan_fhir.workflows.attach_care_plan`. The answer is a Bundle
(collection, CarePlan first) with ``Location`` of the CarePlan: 201 when stored now, 200 when
an earlier identical call (same encounter, template url and version) stored it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.workflows.attach_care_plan import (
    AttachOutcome,
    AttachRequest,
    TemplateRef,
    attach_care_plan,
    parameters_from_resource,
)

from .authorization import guarded_read, require_unrestricted
from .bundles import bundle_bytes, entry_bytes
from .context import BodyDep, ContextDep, FhirContext, parse_document, resource_headers

router = APIRouter()

#: What an attach writes: the caller must be allowed to create each for any patient.
ATTACHED_TYPES = ("CarePlan", "Goal", "Task", "Communication", "Provenance")

_PARAMETER_NAMES = ("planDefinition", "practitioner", "organization", "parameters")


def read_attach_request(encounter_id: str, body: bytes, content_type: str | None) -> AttachRequest:
    """The call's inputs from its Parameters body; 400 for a malformed one."""
    parameters = parse_document(body, content_type)
    if parameters.get("resourceType") != "Parameters":
        raise InvalidRequest(
            f"Expected a Parameters resource, not {parameters.get('resourceType')!r}"
        )
    validate_resource(parameters)
    values: dict[str, dict[str, Any]] = {}
    for parameter in parameters.get("parameter", []):
        name = parameter.get("name")
        if name not in _PARAMETER_NAMES:
            raise InvalidRequest(
                f"Unknown parameter {name!r}; $attach-care-plan takes "
                + ", ".join(_PARAMETER_NAMES)
            )
        if name in values:
            raise InvalidRequest(f"Parameter {name!r} is given more than once")
        values[name] = parameter
    return AttachRequest(
        encounter_id=encounter_id,
        template=_template(values.get("planDefinition")),
        practitioner=_reference(values.get("practitioner"), "practitioner", required=True) or "",
        organization=_reference(values.get("organization"), "organization", required=False),
        parameters=_clinician_values(values.get("parameters")),
    )


def _template(parameter: dict[str, Any] | None) -> TemplateRef:
    if parameter is None:
        raise InvalidRequest("Parameter 'planDefinition' is required")
    for key in ("valueCanonical", "valueUri", "valueString"):
        if isinstance(parameter.get(key), str) and parameter[key].strip():
            return TemplateRef.parse(parameter[key])
    reference = (parameter.get("valueReference") or {}).get("reference")
    if isinstance(reference, str) and reference.startswith("PlanDefinition/"):
        return TemplateRef.parse(reference)
    raise InvalidRequest(
        "Parameter 'planDefinition' needs valueCanonical (url|version) or valueReference"
        " (PlanDefinition/id)"
    )


def _reference(parameter: dict[str, Any] | None, name: str, *, required: bool) -> str | None:
    if parameter is None:
        if required:
            raise InvalidRequest(f"Parameter {name!r} is required")
        return None
    reference = (parameter.get("valueReference") or {}).get("reference")
    if not isinstance(reference, str) or not reference.strip():
        raise InvalidRequest(f"Parameter {name!r} needs valueReference with a reference")
    return reference.strip()


def _clinician_values(parameter: dict[str, Any] | None) -> dict[str, Any]:
    if parameter is None:
        return {}
    nested = parameter.get("resource")
    if isinstance(nested, dict):
        if nested.get("resourceType") != "Parameters":
            raise InvalidRequest("Parameter 'parameters' must hold a Parameters resource")
        return parameters_from_resource(nested)
    if "part" in parameter:
        return parameters_from_resource({"parameter": parameter["part"]})
    raise InvalidRequest("Parameter 'parameters' needs a Parameters resource (or parts)")


def attach_response(ctx: FhirContext, outcome: AttachOutcome) -> Response:
    """The plan as a Bundle (collection), CarePlan first; Location of the CarePlan."""
    headers = resource_headers(outcome.care_plan)
    headers["Location"] = ctx.url_of(outcome.care_plan, versioned=True)
    entries = [entry_bytes(ctx.url_of(s), s.raw) for s in outcome.resources]
    bundle = bundle_bytes({"resourceType": "Bundle", "type": "collection"}, entries)
    return ctx.respond(bundle, 201 if outcome.created else 200, headers)


@router.post("/Encounter/{encounter_id}/$attach-care-plan", summary="Encounter $attach-care-plan")
def encounter_attach_care_plan(encounter_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    require_unrestricted(
        ctx,
        "create",
        ATTACHED_TYPES,
        "$attach-care-plan (it writes a plan for the encounter's patient)",
    )
    request = read_attach_request(encounter_id, body, ctx.header("content-type"))
    ctx.begin_write()  # before any read: SQLite cannot turn a read transaction into a write
    guarded_read(ctx, "Encounter", encounter_id)
    outcome = attach_care_plan(
        ctx.repository, request, now=ctx.services.now(), new_id=ctx.services.new_id
    )
    ctx.commit()
    return attach_response(ctx, outcome)
