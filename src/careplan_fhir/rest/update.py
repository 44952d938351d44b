"""update, create-on-update and conditional update (https://hl7.org/fhir/R4/http.html#update)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.audit.provenance import record_write_provenance
from careplan_fhir.errors import InvalidRequest, PreconditionFailed
from careplan_fhir.fhir import jsonio

from .authorization import check_patient_task_change, guard_write_after, guard_write_before
from .context import (
    BodyDep,
    ContextDep,
    FhirContext,
    check_resource,
    check_type,
    find_by_criteria,
    if_match_version,
    parse_document,
)
from .hooks import run_after_update
from .write_result import WriteResult, write_response

router = APIRouter()


def update_resource(
    ctx: FhirContext, document: dict[str, Any], resource_id: str, if_match: int | None
) -> WriteResult:
    """Store a new version of ``resource_id`` (or create it with that id)."""
    resource_type = document["resourceType"]
    current = ctx.repository.find(resource_type, resource_id)
    creating = current is None or current.deleted
    decision = guard_write_before(ctx, resource_type, "create" if creating else "update", current)
    if current is not None and not creating and current.raw is not None:
        check_patient_task_change(ctx.access, decision, jsonio.loads(current.raw), document)
    stored, created = ctx.repository.update(document, resource_id, if_match=if_match)
    guard_write_after(ctx, decision, stored)
    record_write_provenance(ctx, stored, "CREATE" if created else "UPDATE")
    run_after_update(ctx, document, stored)
    if created:
        return WriteResult(201, stored, f"Created {stored.resource_type}/{resource_id}")
    return WriteResult(200, stored, f"Updated {stored.resource_type}/{resource_id}")


def conditional_update(
    ctx: FhirContext, document: dict[str, Any], criteria: str, if_match: int | None
) -> WriteResult:
    """PUT with search criteria: 0 matches creates, 1 updates, more is 412."""
    resource_type = document["resourceType"]
    matches = find_by_criteria(ctx, resource_type, criteria, interaction="update")
    if len(matches) > 1:
        raise PreconditionFailed(f"{criteria!r} matches more than one {resource_type}")
    body_id = document.get("id")
    if not matches:
        if body_id:
            return update_resource(ctx, document, body_id, if_match)
        from .create import create_resource  # create imports update's neighbours

        return create_resource(ctx, document)
    if body_id and body_id != matches[0].id:
        raise InvalidRequest(
            f"The body's id {body_id!r} differs from the matching resource's {matches[0].id!r}"
        )
    return update_resource(ctx, document, matches[0].id, if_match)


@router.put("/{resource_type}/{resource_id}", summary="update")
def update(resource_type: str, resource_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    check_type(resource_type)
    document = check_resource(
        parse_document(body, ctx.header("content-type")), resource_type, resource_id
    )
    if_match = if_match_version(ctx)
    ctx.begin_write()
    result = update_resource(ctx, document, resource_id, if_match)
    ctx.commit()
    return write_response(ctx, result)


@router.put("/{resource_type}", summary="conditional update")
def update_conditional(resource_type: str, ctx: ContextDep, body: BodyDep) -> Response:
    check_type(resource_type)
    document = check_resource(parse_document(body, ctx.header("content-type")), resource_type)
    if_match = if_match_version(ctx)
    ctx.begin_write()
    result = conditional_update(ctx, document, ctx.request.url.query, if_match)
    ctx.commit()
    return write_response(ctx, result)
