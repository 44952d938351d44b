"""``POST /CarePlan/{id}/$revoke``: revoke a plan; its open Tasks are cancelled, finished kept.

An operation of this project (https://hl7.org/fhir/R4/operations.html), defined by
``profiles/OperationDefinition-CarePlan-revoke.json``. The body is empty or a Parameters
resource with an optional ``reason`` (valueString). One transaction: a new CarePlan version
(status ``revoked``, open activities ``cancelled``, the reason as a note), then, through the
CarePlan update hook (:mod:`careplan_fhir.rest.hooks`), the open Tasks ``cancelled``. Updating
``CarePlan.status`` to ``revoked`` with PUT or PATCH cancels the Tasks the same way. Revoking a
revoked plan changes nothing (200); a completed or entered-in-error plan cannot be revoked (422).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.errors import InvalidRequest, Unprocessable
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.dates import format_instant
from careplan_fhir.fhir.models import validate_resource
from careplan_fhir.workflows import plan_lifecycle as lifecycle

from .authorization import guard_write_before, guarded_read
from .context import BodyDep, ContextDep, parse_document
from .update import update_resource
from .write_result import WriteResult, write_response

router = APIRouter()


def _reason(body: bytes, content_type: str | None) -> str | None:
    if not body.strip():
        return None
    parameters = parse_document(body, content_type)
    if parameters.get("resourceType") != "Parameters":
        raise InvalidRequest("Expected a Parameters resource (optional 'reason')")
    validate_resource(parameters)
    reason = None
    for parameter in parameters.get("parameter", []):
        if parameter.get("name") != "reason" or not isinstance(parameter.get("valueString"), str):
            raise InvalidRequest("$revoke takes one optional parameter: reason (valueString)")
        reason = parameter["valueString"]
    return reason


@router.post("/CarePlan/{plan_id}/$revoke", summary="CarePlan $revoke")
def care_plan_revoke(plan_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    reason = _reason(body, ctx.header("content-type")) or "Plan revoked"
    ctx.begin_write()
    current = guarded_read(ctx, "CarePlan", plan_id)
    guard_write_before(ctx, "CarePlan", "update", current)
    assert current.raw is not None
    plan = jsonio.loads(current.raw)
    status = plan.get("status")
    if status == "revoked":
        return write_response(ctx, WriteResult(200, current, "The plan is revoked already"))
    if status not in lifecycle.CURRENT_PLAN_STATUSES:
        raise Unprocessable(f"CarePlan/{plan_id} is {status}; only a plan in force is revoked")
    revoked = lifecycle.revoked_plan(plan, format_instant(ctx.services.now()), reason)
    validate_resource(revoked)
    result = update_resource(ctx, revoked, plan_id, current.version)
    ctx.commit()
    return write_response(ctx, result)
