"""vread (https://hl7.org/fhir/R4/http.html#vread): one version of a resource."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from .authorization import guarded_vread
from .context import ContextDep, check_type, resource_headers
from .transforms import shape_resource

router = APIRouter()


@router.get("/{resource_type}/{resource_id}/_history/{version_id}", summary="vread")
def vread(resource_type: str, resource_id: str, version_id: str, ctx: ContextDep) -> Response:
    check_type(resource_type)
    stored = guarded_vread(ctx, resource_type, resource_id, version_id)
    assert stored.raw is not None
    return ctx.respond(shape_resource(ctx.request, stored.raw), 200, resource_headers(stored))
