"""read (https://hl7.org/fhir/R4/http.html#read): the stored bytes, as stored."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from .authorization import guarded_read
from .context import ContextDep, check_type, resource_headers
from .transforms import shape_resource

router = APIRouter()


@router.get("/{resource_type}/{resource_id}", summary="read")
def read(resource_type: str, resource_id: str, ctx: ContextDep) -> Response:
    check_type(resource_type)
    stored = guarded_read(ctx, resource_type, resource_id)
    headers = resource_headers(stored)
    if_none_match = ctx.header("if-none-match")
    if if_none_match and if_none_match.strip() == stored.etag:
        return Response(status_code=304, headers=headers)
    assert stored.raw is not None
    return ctx.respond(shape_resource(ctx.request, stored.raw), 200, headers)
