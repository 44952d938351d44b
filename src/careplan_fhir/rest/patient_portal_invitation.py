"""``POST /Patient/{id}/$portal-invitation``: a signed, expiring link to the patient portal.

An operation of this project (https://hl7.org/fhir/R4/operations.html), defined by
``profiles/OperationDefinition-Patient-portal-invitation.json``; the link, its token and the
sessions it starts are :mod:`careplan_fhir.portal.invitations` (``docs/portal.md``). The body
is empty or a Parameters resource with an optional ``validFor`` (``valueDuration``, UCUM ``s``,
``min``, ``h``, ``d`` or ``wk``; default ``CAREPLAN_PORTAL_INVITATION_SECONDS``, at most
``CAREPLAN_PORTAL_INVITATION_MAX_SECONDS``). The answer is a Parameters resource: ``url`` (the
link to send the patient), ``expires``, ``invitation`` (its id, to revoke just this one) and
``patient``; ``Cache-Control: no-store``, as the link is a credential.

Who may invite: nobody can hand out more than they hold. The session a link starts has the
scopes :data:`~careplan_fhir.auth.access.PATIENT_PORTAL_SCOPE` for one patient; the caller
must have each of those permissions for every patient (a clinician's ``user/*.cruds``, an EHR's
``system/*.rs system/Task.u system/QuestionnaireResponse.c system/Observation.c``), else 403,
and must see the Patient (404 otherwise).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.auth.access import PATIENT_PORTAL_SCOPE, PERMISSION_OF, SYSTEM_ONLY_TYPES
from careplan_fhir.auth.scopes import parse_scopes
from careplan_fhir.errors import InvalidRequest, Unprocessable
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant, utc_now
from careplan_fhir.fhir.models import SERVED_TYPES, validate_resource
from careplan_fhir.fhir.outcome import issue
from careplan_fhir.portal.invitations import create_invitation

from .authorization import guarded_read, require_unrestricted
from .context import BodyDep, ContextDep, FhirContext, parse_document

router = APIRouter()

_SECONDS_PER_UNIT = {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 604800}
_INTERACTION_OF = {letter: name for name, letter in PERMISSION_OF.items()}
_INTERACTION_OF.update({"r": "read", "s": "search-type"})


def portal_grants() -> list[tuple[str, str]]:
    """(interaction, resource type) for every permission a portal session holds."""
    grants: list[tuple[str, str]] = []
    for scope in parse_scopes(PATIENT_PORTAL_SCOPE).scopes:
        types = (
            [t for t in SERVED_TYPES if t not in SYSTEM_ONLY_TYPES]
            if scope.resource_type == "*"
            else [scope.resource_type]
        )
        for letter in sorted(scope.permissions):
            grants.extend((_INTERACTION_OF[letter], t) for t in types)
    return grants


def require_may_invite(ctx: FhirContext, what: str) -> None:
    """403 unless the caller holds, for every patient, everything a portal session gets."""
    for interaction, resource_type in portal_grants():
        require_unrestricted(ctx, interaction, [resource_type], what)


def portal_root(ctx: FhirContext) -> str:
    """The server's root URL (the FHIR base without ``/fhir``)."""
    return ctx.base_url.removesuffix("/fhir")


def requested_seconds(body: bytes, content_type: str | None, default: int, maximum: int) -> int:
    """The link's lifetime in seconds: ``validFor`` or the default; 422 beyond the maximum."""
    if not body.strip():
        return default
    parameters = parse_document(body, content_type)
    if parameters.get("resourceType") != "Parameters":
        raise InvalidRequest("Expected a Parameters resource (optional 'validFor')")
    validate_resource(parameters)
    seconds = default
    for parameter in parameters.get("parameter", []):
        if parameter.get("name") != "validFor" or "valueDuration" not in parameter:
            raise InvalidRequest(
                "$portal-invitation takes one optional parameter: validFor (valueDuration)"
            )
        seconds = _duration_seconds(parameter["valueDuration"])
    if seconds <= 0:
        raise _refused("validFor must be positive")
    if seconds > maximum:
        raise _refused(f"validFor may be at most {maximum} seconds on this server")
    return seconds


def _duration_seconds(duration: dict[str, Any]) -> int:
    code = duration.get("code") or duration.get("unit")
    if code not in _SECONDS_PER_UNIT:
        raise _refused("validFor needs a UCUM unit: s, min, h, d or wk")
    try:
        value = Decimal(str(duration.get("value")))
    except InvalidOperation:
        raise _refused("validFor needs a value") from None
    return int(value * _SECONDS_PER_UNIT[str(code)])


def _refused(message: str) -> Unprocessable:
    return Unprocessable(message, issues=[issue(message, code="invalid", expression="validFor")])


@router.post("/Patient/{patient_id}/$portal-invitation", summary="Patient $portal-invitation")
def patient_portal_invitation(patient_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    settings = ctx.settings
    seconds = requested_seconds(
        body,
        ctx.header("content-type"),
        settings.portal_invitation_seconds,
        settings.portal_invitation_max_seconds,
    )
    require_may_invite(ctx, "Inviting a patient to the portal")
    key = ctx.services.signing_key
    assert key is not None  # create_app loads it
    ctx.begin_write()
    guarded_read(ctx, "Patient", patient_id)
    access = ctx.access
    invitation = create_invitation(
        ctx.connection,
        key,
        issuer=settings.auth_issuer,
        patient_id=patient_id,
        lifetime=timedelta(seconds=seconds),
        now=utc_now(),
        issued_by=access.fhir_user or access.client_id or access.subject,
    )
    ctx.commit()
    answer = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "url",
                "valueUrl": f"{portal_root(ctx)}/portal/invitation?token={invitation.token}",
            },
            {"name": "expires", "valueInstant": format_instant(invitation.expires)},
            {"name": "invitation", "valueString": invitation.id},
            {"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}},
        ],
    }
    return ctx.respond(jsonio.dumps(answer), 200, {"Cache-Control": "no-store"})
