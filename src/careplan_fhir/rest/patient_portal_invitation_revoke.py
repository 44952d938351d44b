"""``POST /Patient/{id}/$portal-invitation-revoke``: withdraw a patient's portal links.

An operation of this project (https://hl7.org/fhir/R4/operations.html), defined by
``profiles/OperationDefinition-Patient-portal-invitation-revoke.json`` (``docs/portal.md``).
The body is empty (every invitation of the patient still in force) or a Parameters resource
with ``invitation`` (``valueString``, the id ``$portal-invitation`` returned). Revoked links
open no session, and the sessions they started end at their next request. The answer is a
Parameters resource with ``revoked`` (how many were revoked now; revoking twice gives 0).
The caller needs what ``$portal-invitation`` needs (403) and must see the Patient (404).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import utc_now
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.portal.invitations import revoke_invitations

from .authorization import guarded_read
from .context import BodyDep, ContextDep, parse_document
from .patient_portal_invitation import require_may_invite

router = APIRouter()


def requested_invitation(body: bytes, content_type: str | None) -> str | None:
    """The one invitation to revoke, or None for all of the patient's."""
    if not body.strip():
        return None
    parameters = parse_document(body, content_type)
    if parameters.get("resourceType") != "Parameters":
        raise InvalidRequest("Expected a Parameters resource (optional 'invitation')")
    validate_resource(parameters)
    chosen = None
    for parameter in parameters.get("parameter", []):
        value = parameter.get("valueString")
        if parameter.get("name") != "invitation" or not isinstance(value, str) or chosen:
            raise InvalidRequest(
                "$portal-invitation-revoke takes one optional parameter: invitation (valueString)"
            )
        chosen = value
    return chosen


@router.post(
    "/Patient/{patient_id}/$portal-invitation-revoke", summary="Patient $portal-invitation-revoke"
)
def patient_portal_invitation_revoke(patient_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    invitation_id = requested_invitation(body, ctx.header("content-type"))
    require_may_invite(ctx, "Revoking a patient's portal invitations")
    ctx.begin_write()
    guarded_read(ctx, "Patient", patient_id)
    count = revoke_invitations(ctx.connection, patient_id, utc_now(), invitation_id)
    ctx.commit()
    answer = {
        "resourceType": "Parameters",
        "parameter": [{"name": "revoked", "valueInteger": count}],
    }
    return ctx.respond(jsonio.dumps(answer))
