"""patch with JSON Patch (https://hl7.org/fhir/R4/http.html#patch, RFC 6902)."""

from __future__ import annotations

from typing import Any

import jsonpatch
from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.errors import (
    InvalidRequest,
    PreconditionFailed,
    ResourceNotFound,
    UnsupportedMediaType,
)
from careplan_fhir.fhir import jsonio

from .authorization import guarded_find
from .context import (
    BodyDep,
    ContextDep,
    FhirContext,
    check_resource,
    check_type,
    find_by_criteria,
    if_match_version,
)
from .formats import media_type
from .update import update_resource
from .write_result import WriteResult, write_response

router = APIRouter()

JSON_PATCH = "application/json-patch+json"


def parse_patch(body: bytes, content_type: str | None) -> list[Any]:
    media = media_type(content_type)
    if media != JSON_PATCH:
        raise UnsupportedMediaType(f"PATCH needs Content-Type {JSON_PATCH}, not {content_type!r}")
    try:
        operations = jsonio.loads(body)
    except jsonio.JsonError as exc:
        raise InvalidRequest(f"The JSON Patch is not valid JSON: {exc}") from None
    if not isinstance(operations, list):
        raise InvalidRequest("A JSON Patch document is a JSON array of operations")
    return operations


def patch_resource(
    ctx: FhirContext,
    resource_type: str,
    resource_id: str,
    operations: list[Any],
    if_match: int | None,
) -> WriteResult:
    """Apply ``operations`` to the current version and store the result as a new version."""
    if guarded_find(ctx, resource_type, resource_id, "patch")[1] is None:
        raise ResourceNotFound(f"{resource_type}/{resource_id} is not known")
    current = ctx.repository.read(resource_type, resource_id)
    if if_match is not None and if_match != current.version:
        raise PreconditionFailed(
            f"{resource_type}/{resource_id} is at version {current.version}, not {if_match}"
        )
    assert current.raw is not None
    try:
        patched = jsonpatch.JsonPatch(operations).apply(jsonio.loads(current.raw))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
        raise InvalidRequest(f"The JSON Patch cannot be applied: {exc}") from None
    if not isinstance(patched, dict):
        raise InvalidRequest("The JSON Patch does not leave a resource")
    check_resource(patched, resource_type, resource_id)
    return update_resource(ctx, patched, resource_id, current.version)


@router.patch("/{resource_type}/{resource_id}", summary="patch")
def patch(resource_type: str, resource_id: str, ctx: ContextDep, body: BodyDep) -> Response:
    check_type(resource_type)
    operations = parse_patch(body, ctx.header("content-type"))
    if_match = if_match_version(ctx)
    ctx.begin_write()
    result = patch_resource(ctx, resource_type, resource_id, operations, if_match)
    ctx.commit()
    return write_response(ctx, result)


@router.patch("/{resource_type}", summary="conditional patch")
def patch_conditional(resource_type: str, ctx: ContextDep, body: BodyDep) -> Response:
    check_type(resource_type)
    operations = parse_patch(body, ctx.header("content-type"))
    if_match = if_match_version(ctx)
    ctx.begin_write()
    matches = find_by_criteria(ctx, resource_type, ctx.request.url.query, interaction="patch")
    if len(matches) != 1:
        raise PreconditionFailed(
            f"Conditional patch criteria match {len(matches)} {resource_type} resources; need 1"
        )
    result = patch_resource(ctx, resource_type, matches[0].id, operations, if_match)
    ctx.commit()
    return write_response(ctx, result)
