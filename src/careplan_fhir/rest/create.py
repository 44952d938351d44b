"""create and conditional create (https://hl7.org/fhir/R4/http.html#create, #ccreate)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.audit.provenance import record_write_provenance
from careplan_fhir.errors import PreconditionFailed

from .authorization import guard_write_after, guard_write_before
from .context import (
    BodyDep,
    ContextDep,
    FhirContext,
    check_resource,
    check_type,
    find_by_criteria,
    parse_document,
)
from .hooks import run_after_create
from .write_result import WriteResult, write_response

router = APIRouter()


def create_resource(
    ctx: FhirContext,
    document: dict[str, Any],
    if_none_exist: str | None = None,
    *,
    resource_id: str | None = None,
) -> WriteResult:
    """Store ``document`` as a new resource; with ``If-None-Exist``, only when nothing matches.

    ``resource_id`` is an id the server chose beforehand (a transaction's ``urn:uuid:`` entries).
    """
    resource_type = document["resourceType"]
    decision = guard_write_before(ctx, resource_type, "create", None)
    if if_none_exist:
        matches = find_by_criteria(ctx, resource_type, if_none_exist, interaction="create")
        if len(matches) == 1:
            return WriteResult(200, matches[0], "A matching resource exists; nothing created")
        if len(matches) > 1:
            raise PreconditionFailed(
                f"If-None-Exist {if_none_exist!r} matches more than one {resource_type}"
            )
    stored = ctx.repository.create(document, resource_id=resource_id)
    guard_write_after(ctx, decision, stored)
    record_write_provenance(ctx, stored, "CREATE")
    run_after_create(ctx, document, stored)
    return WriteResult(201, stored, f"Created {resource_type}/{stored.id}")


@router.post("/{resource_type}", summary="create")
def create(resource_type: str, ctx: ContextDep, body: BodyDep) -> Response:
    check_type(resource_type)
    document = check_resource(parse_document(body, ctx.header("content-type")), resource_type)
    ctx.begin_write()
    result = create_resource(ctx, document, ctx.header("if-none-exist"))
    ctx.commit()
    return write_response(ctx, result)
