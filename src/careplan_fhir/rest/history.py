"""history: instance, type and system (https://hl7.org/fhir/R4/http.html#history)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.errors import InvalidRequest
from careplan_fhir.fhir.dates import DateFormatError, format_instant, parse_range

from .authorization import filter_versions, guard_history
from .bundles import bundle_bytes, entry_bytes
from .context import ContextDep, FhirContext, check_type

router = APIRouter()

_STATUS_BY_METHOD = {
    "POST": "201 Created",
    "PUT": "200 OK",
    "PATCH": "200 OK",
    "DELETE": "204 No Content",
}


def _int_param(ctx: FhirContext, name: str, default: int) -> int:
    value = ctx.request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise InvalidRequest(f"{name} must be a non-negative integer")
    return int(value)


def history_bundle(ctx: FhirContext, resource_type: str | None, resource_id: str | None) -> bytes:
    query = ctx.request.query_params
    since = at = None
    try:
        if "_since" in query:
            since = parse_range(query["_since"])[0]
        if "_at" in query:
            at = parse_range(query["_at"])[1]
    except DateFormatError as exc:
        raise InvalidRequest(str(exc)) from None
    count = min(
        _int_param(ctx, "_count", ctx.settings.default_page_size), ctx.settings.max_page_size
    )
    offset = _int_param(ctx, "_offset", 0)
    snapshot = query.get("_snapshot")
    # Negative too: AuditEvents moved from the main database are numbered at 0 and below
    # (storage/audit_move.py), and the trail's history pins the largest key.
    if snapshot is not None and not snapshot.removeprefix("-").isdigit():
        raise InvalidRequest("_snapshot must be an integer")
    decision = guard_history(ctx, resource_type, resource_id)
    versions, total, upto = ctx.repository.history(
        resource_type,
        resource_id,
        since=since,
        at=at,
        count=count,
        offset=offset,
        upto_pk=int(snapshot) if snapshot else None,
    )
    versions = filter_versions(ctx, decision, versions)
    path = "/".join(p for p in (resource_type, resource_id) if p)
    url = f"{ctx.base_url}/{path}/_history" if path else f"{ctx.base_url}/_history"
    keep = [
        (k, v)
        for k, v in query.multi_items()
        if k not in ("_offset", "_snapshot", "_format", "_pretty")
    ]

    def link(page_offset: int) -> str:
        return (
            url + "?" + urlencode(keep + [("_snapshot", str(upto)), ("_offset", str(page_offset))])
        )

    links = [{"relation": "self", "url": link(offset)}]
    if offset + count < total:
        links.append({"relation": "next", "url": link(offset + count)})
    if offset > 0:
        links.append({"relation": "previous", "url": link(max(0, offset - count))})
    entries = []
    for version in versions:
        resource_url = f"{ctx.base_url}/{version.resource_type}/{version.id}"
        request_url = (
            version.resource_type
            if version.method == "POST"
            else f"{version.resource_type}/{version.id}"
        )
        entries.append(
            entry_bytes(
                resource_url,
                version.raw,
                request={"method": version.method, "url": request_url},
                response={
                    "status": _STATUS_BY_METHOD.get(version.method, "200 OK"),
                    "etag": version.etag,
                    "lastModified": format_instant(version.last_updated_aware),
                },
            )
        )
    head = {"resourceType": "Bundle", "type": "history", "total": total, "link": links}
    return bundle_bytes(head, entries)


@router.get("/_history", summary="history-system")
def history_system(ctx: ContextDep) -> Response:
    return ctx.respond(history_bundle(ctx, None, None))


@router.get("/{resource_type}/_history", summary="history-type")
def history_type(resource_type: str, ctx: ContextDep) -> Response:
    check_type(resource_type)
    return ctx.respond(history_bundle(ctx, resource_type, None))


@router.get("/{resource_type}/{resource_id}/_history", summary="history-instance")
def history_instance(resource_type: str, resource_id: str, ctx: ContextDep) -> Response:
    check_type(resource_type)
    return ctx.respond(history_bundle(ctx, resource_type, resource_id))
