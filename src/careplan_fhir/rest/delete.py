"""delete and conditional delete (https://hl7.org/fhir/R4/http.html#delete)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.audit.provenance import record_write_provenance
from careplan_fhir.errors import PreconditionFailed

from .authorization import guard_write_before
from .context import ContextDep, FhirContext, check_type, find_by_criteria, if_match_version
from .write_result import WriteResult, write_response

router = APIRouter()


def delete_resource(
    ctx: FhirContext, resource_type: str, resource_id: str, if_match: int | None = None
) -> WriteResult:
    """Delete (a new version marking the resource deleted); deleting twice is fine."""
    current = ctx.repository.find(resource_type, resource_id)
    guard_write_before(ctx, resource_type, "delete", current)
    stored = ctx.repository.delete(resource_type, resource_id, if_match=if_match)
    if stored is None:
        return WriteResult(200, None, f"{resource_type}/{resource_id} was not there to delete")
    record_write_provenance(ctx, stored, "DELETE")
    return WriteResult(200, stored, f"Deleted {resource_type}/{resource_id}")


@router.delete("/{resource_type}/{resource_id}", summary="delete")
def delete(resource_type: str, resource_id: str, ctx: ContextDep) -> Response:
    check_type(resource_type)
    if_match = if_match_version(ctx)
    ctx.begin_write()
    result = delete_resource(ctx, resource_type, resource_id, if_match)
    ctx.commit()
    return write_response(ctx, result)


@router.delete("/{resource_type}", summary="conditional delete")
def delete_conditional(resource_type: str, ctx: ContextDep) -> Response:
    check_type(resource_type)
    ctx.begin_write()
    matches = find_by_criteria(ctx, resource_type, ctx.request.url.query, interaction="delete")
    if len(matches) > 1:
        raise PreconditionFailed(f"Conditional delete criteria match more than one {resource_type}")
    if not matches:
        result = WriteResult(200, None, f"No {resource_type} matched; nothing deleted")
    else:
        result = delete_resource(ctx, resource_type, matches[0].id)
    ctx.commit()
    return write_response(ctx, result)
