"""search-type by GET and POST (https://hl7.org/fhir/R4/http.html#search, search.html)."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.errors import UnsupportedMediaType
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.outcome import issue, operation_outcome
from careplan_fhir.storage.search import SearchRequest, SearchResult, parse_search, run_search

from .authorization import filter_included, guard_search
from .bundles import bundle_bytes, entry_bytes
from .context import BodyDep, ContextDep, FhirContext, check_type
from .formats import media_type
from .transforms import subset

router = APIRouter()

_NOT_IN_LINKS = {"_after", "_before", "_format", "_pretty"}


def search_request(
    ctx: FhirContext, resource_type: str, params: list[tuple[str, str]]
) -> SearchRequest:
    """The parsed search, with the criteria authorization adds (refused here if no scope
    allows it)."""
    settings = ctx.settings
    request = parse_search(
        resource_type,
        params,
        base_url=ctx.base_url,
        default_count=settings.default_page_size,
        max_count=settings.max_page_size,
        strict=ctx.prefer("handling") == "strict",
    )
    guard_search(ctx, request)
    return request


def search_bundle(ctx: FhirContext, resource_type: str, params: list[tuple[str, str]]) -> bytes:
    """Run a search and return the searchset Bundle's JSON bytes."""
    request = search_request(ctx, resource_type, params)
    result = run_search(ctx.repository, request)
    result.included = filter_included(ctx, result.included)
    return result_bundle(ctx, params, request, result)


def result_bundle(
    ctx: FhirContext, params: list[tuple[str, str]], request: SearchRequest, result: SearchResult
) -> bytes:
    """The searchset Bundle's JSON bytes of ``result``, a page of ``request`` (made from the
    query parameters ``params``)."""
    resource_type = request.resource_type
    # Links carry only the parameters the search used (search.html#self): not the ignored ones.
    unused = _NOT_IN_LINKS | set(request.ignored)
    link_params = [(k, v) for k, v in params if k not in unused]
    search_url = f"{ctx.base_url}/{resource_type}"

    def link(extra: list[tuple[str, str]]) -> str:
        query = urlencode(link_params + extra)
        return f"{search_url}?{query}" if query else search_url

    cursor: list[tuple[str, str]] = []
    if request.after is not None:
        cursor = [("_after", dict(params)["_after"])]
    elif request.before is not None:
        cursor = [("_before", dict(params)["_before"])]
    links = [{"relation": "self", "url": link(cursor)}]
    if cursor:
        links.append({"relation": "first", "url": link([])})
    if result.next_cursor:
        links.append({"relation": "next", "url": link([("_after", result.next_cursor)])})
    if result.previous_cursor:
        links.append({"relation": "previous", "url": link([("_before", result.previous_cursor)])})
    head: dict[str, object] = {"resourceType": "Bundle", "type": "searchset"}
    if result.total is not None:
        head["total"] = result.total
    head["link"] = links
    entries = []
    subsetting = request.summary in ("true", "text", "data") or bool(request.elements)
    for mode, resources in (("match", result.matches), ("include", result.included)):
        for stored in resources:
            assert stored.raw is not None
            content: bytes | dict[str, object] = stored.raw
            if subsetting:
                content = subset(jsonio.loads(stored.raw), request.summary, request.elements)
            entries.append(entry_bytes(ctx.url_of(stored), content, search={"mode": mode}))
    if request.ignored:
        outcome = operation_outcome(
            [
                issue(
                    f"Search parameter {name!r} is not supported by {resource_type}; ignored",
                    code="not-supported",
                    severity="warning",
                )
                for name in request.ignored
            ]
        )
        entries.append(entry_bytes(None, outcome, search={"mode": "outcome"}))
    return bundle_bytes(head, entries)


@router.get("/{resource_type}", summary="search-type")
def search_get(resource_type: str, ctx: ContextDep) -> Response:
    check_type(resource_type)
    params = parse_qsl(ctx.request.url.query, keep_blank_values=True)
    return ctx.respond(search_bundle(ctx, resource_type, params))


@router.post("/{resource_type}/_search", summary="search-type (POST)")
def search_post(resource_type: str, ctx: ContextDep, body: BodyDep) -> Response:
    check_type(resource_type)
    media = media_type(ctx.header("content-type"))
    if body and media != "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            "POST _search takes application/x-www-form-urlencoded parameters"
        )
    params = parse_qsl(ctx.request.url.query, keep_blank_values=True)
    params += parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    return ctx.respond(search_bundle(ctx, resource_type, params))
