"""batch and transaction (https://hl7.org/fhir/R4/http.html#transaction).

A transaction runs in one database transaction: every entry succeeds or nothing is written.
Entries are processed in the spec's order (DELETE, POST, PUT/PATCH, GET/HEAD); ``urn:uuid:``
fullUrls and conditional references (``Patient?identifier=...``) are resolved before any write.
A batch runs each entry on its own savepoint and reports each entry's outcome.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import APIRouter
from fastapi.responses import Response

from careplan_fhir.audit.events import note_interaction
from careplan_fhir.audit.provenance import note_bundle_provenance
from careplan_fhir.errors import FhirError, InvalidRequest, PreconditionFailed
from careplan_fhir.fhir.dates import format_instant
from careplan_fhir.fhir.models import ResourceInvalid
from careplan_fhir.fhir.outcome import issue, operation_outcome
from careplan_fhir.storage.repository import StoredResource, parse_version_tag

from .authorization import guarded_read, guarded_vread
from .bundles import bundle_bytes, entry_bytes
from .context import (
    BodyDep,
    ContextDep,
    FhirContext,
    check_resource,
    check_type,
    find_by_criteria,
    parse_document,
)
from .create import create_resource
from .delete import delete_resource
from .errors import status_for
from .patch import patch_resource
from .search_type import search_bundle
from .update import conditional_update, update_resource
from .write_result import WriteResult

router = APIRouter()

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified"}


@dataclass
class _Entry:
    index: int
    method: str
    url: str
    request: dict[str, Any]
    resource: dict[str, Any] | None
    full_url: str | None


class EntryFailed(FhirError):
    """An entry of a transaction failed; the whole transaction is rolled back."""

    def __init__(self, index: int, cause: FhirError | ResourceInvalid) -> None:
        self.cause = cause
        self.index = index
        if isinstance(cause, ResourceInvalid):
            issues = [
                issue(
                    f"entry[{index}]: {i.diagnostics}",
                    code=i.code,
                    expression=f"Bundle.entry[{index}].resource",
                )
                for i in cause.issues
            ]
            message = str(cause)
        else:
            issues = [
                issue(
                    f"entry[{index}]: {i.get('diagnostics', '')}",
                    code=str(i.get("code", "processing")),
                )
                for i in (cause.issues or [])
            ] or [issue(f"entry[{index}]: {cause.message}", code=cause.issue_code)]
            message = cause.message
        super().__init__(message, issues=issues)


def _status_of(cause: FhirError | ResourceInvalid) -> int:
    return 422 if isinstance(cause, ResourceInvalid) else status_for(cause)


def _parse_entries(bundle: dict[str, Any]) -> list[_Entry]:
    entries = []
    for index, raw in enumerate(bundle.get("entry") or []):
        request = raw.get("request")
        if not isinstance(request, dict) or "method" not in request or "url" not in request:
            raise InvalidRequest(f"Bundle.entry[{index}] has no request.method and request.url")
        method = str(request["method"]).upper()
        if method not in _ORDER:
            raise InvalidRequest(f"Bundle.entry[{index}].request.method {method!r} is unknown")
        entries.append(
            _Entry(
                index,
                method,
                str(request["url"]).lstrip("/"),
                request,
                raw.get("resource"),
                raw.get("fullUrl"),
            )
        )
    return entries


def _split_url(ctx: FhirContext, url: str) -> tuple[list[str], str]:
    if url.startswith(ctx.base_url + "/"):
        url = url[len(ctx.base_url) + 1 :]
    parts = urlsplit(url)
    return [p for p in parts.path.split("/") if p], parts.query


def _rewrite_references(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        result = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in mapping:
                result[key] = mapping[item]
            else:
                result[key] = _rewrite_references(item, mapping)
        return result
    if isinstance(value, list):
        return [_rewrite_references(item, mapping) for item in value]
    return value


def _conditional_references(value: Any, found: set[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and "?" in item:
                found.add(item)
            else:
                _conditional_references(item, found)
    elif isinstance(value, list):
        for item in value:
            _conditional_references(item, found)


def _patch_operations(entry: _Entry) -> list[Any]:
    resource = entry.resource or {}
    if resource.get("resourceType") != "Binary" or "data" not in resource:
        raise InvalidRequest(
            f"Bundle.entry[{entry.index}]: PATCH takes a Binary holding a JSON Patch"
        )
    from .patch import parse_patch

    data = base64.b64decode(resource["data"])
    return parse_patch(data, resource.get("contentType"))


def _execute(
    ctx: FhirContext, entry: _Entry, assigned_id: str | None = None
) -> tuple[WriteResult | None, bytes | None]:
    """Run one entry; returns a write result, or the bytes of a read/search response."""
    path, query = _split_url(ctx, entry.url)
    if not path:
        raise InvalidRequest(f"Bundle.entry[{entry.index}].request.url is empty")
    resource_type = check_type(path[0])
    if_match = entry.request.get("ifMatch")
    version = parse_version_tag(if_match) if if_match else None
    if entry.method == "POST":
        document = _checked(entry, resource_type, None)
        result = create_resource(
            ctx, document, entry.request.get("ifNoneExist"), resource_id=assigned_id
        )
        return result, None
    if entry.method == "PUT":
        if len(path) == 2:
            document = _checked(entry, resource_type, path[1])
            return update_resource(ctx, document, path[1], version), None
        document = _checked(entry, resource_type, None)
        return conditional_update(ctx, document, query, version), None
    if entry.method == "PATCH":
        operations = _patch_operations(entry)
        if len(path) == 2:
            return patch_resource(ctx, resource_type, path[1], operations, version), None
        matches = find_by_criteria(ctx, resource_type, query, interaction="patch")
        if len(matches) != 1:
            raise PreconditionFailed(f"PATCH criteria match {len(matches)} resources; need 1")
        return patch_resource(ctx, resource_type, matches[0].id, operations, version), None
    if entry.method == "DELETE":
        if len(path) == 2:
            return delete_resource(ctx, resource_type, path[1], version), None
        matches = find_by_criteria(ctx, resource_type, query, interaction="delete")
        if len(matches) > 1:
            raise PreconditionFailed("Conditional delete criteria match more than one resource")
        if not matches:
            return WriteResult(200, None, "Nothing matched; nothing deleted"), None
        return delete_resource(ctx, resource_type, matches[0].id), None
    # GET / HEAD
    if len(path) == 1:
        return None, search_bundle(ctx, resource_type, parse_qsl(query, keep_blank_values=True))
    if len(path) == 2:
        stored = guarded_read(ctx, resource_type, path[1])
        return WriteResult(200, stored, "read"), None
    if len(path) == 4 and path[2] == "_history":
        stored = guarded_vread(ctx, resource_type, path[1], path[3])
        return WriteResult(200, stored, "vread"), None
    raise InvalidRequest(f"Bundle.entry[{entry.index}]: unsupported GET {entry.url!r}")


def _checked(entry: _Entry, resource_type: str, resource_id: str | None) -> dict[str, Any]:
    if not isinstance(entry.resource, dict):
        raise InvalidRequest(f"Bundle.entry[{entry.index}] has no resource")
    return check_resource(entry.resource, resource_type, resource_id)


def _response_entry(
    ctx: FhirContext, result: WriteResult | None, search: bytes | None, representation: bool
) -> bytes:
    if search is not None:
        return entry_bytes(None, search, response={"status": "200 OK"})
    assert result is not None
    stored: StoredResource | None = result.stored
    response: dict[str, Any] = {
        "status": f"{result.status} {_REASONS.get(result.status, '')}".strip()
    }
    if stored is not None:
        response["etag"] = stored.etag
        # Bundle.entry.response.lastModified is an instant, not an HTTP date (bundle.html).
        response["lastModified"] = format_instant(stored.last_updated_aware)
        if not stored.deleted:
            response["location"] = f"{stored.resource_type}/{stored.id}/_history/{stored.version}"
    show = representation or result.message in ("read", "vread")
    body = stored.raw if stored is not None and show and not stored.deleted else None
    full_url = ctx.url_of(stored) if stored is not None and not stored.deleted else None
    return entry_bytes(full_url, body, response=response)


def _error_entry(cause: FhirError | ResourceInvalid, index: int) -> bytes:
    status = _status_of(cause)
    failed = EntryFailed(index, cause)
    return entry_bytes(
        None,
        None,
        response={"status": str(status), "outcome": operation_outcome(failed.issues or [])},
    )


def run_transaction(ctx: FhirContext, entries: list[_Entry], representation: bool) -> bytes:
    # 1. Give every created resource its id up front, so references can point at it.
    mapping: dict[str, str] = {}
    assigned: dict[int, str] = {}
    for entry in entries:
        if entry.full_url and entry.full_url.startswith("urn:") and entry.resource:
            path, _ = _split_url(ctx, entry.url)
            if entry.method == "POST":
                if entry.request.get("ifNoneExist"):
                    matches = find_by_criteria(
                        ctx, path[0], entry.request["ifNoneExist"], interaction="create"
                    )
                    if len(matches) == 1:
                        mapping[entry.full_url] = f"{path[0]}/{matches[0].id}"
                        continue
                new_id = ctx.services.new_id()
                assigned[entry.index] = new_id
                mapping[entry.full_url] = f"{path[0]}/{new_id}"
            elif entry.method == "PUT" and len(path) == 2:
                mapping[entry.full_url] = f"{path[0]}/{path[1]}"
    # 2. Resolve conditional references.
    conditional: set[str] = set()
    for entry in entries:
        _conditional_references(entry.resource, conditional)
    for reference in conditional:
        target_type, _, criteria = reference.partition("?")
        matches = find_by_criteria(ctx, check_type(target_type), criteria)
        if len(matches) != 1:
            raise PreconditionFailed(
                f"Conditional reference {reference!r} matches {len(matches)} resources; need 1"
            )
        mapping[reference] = f"{target_type}/{matches[0].id}"
    for entry in entries:
        if entry.resource is not None and mapping:
            entry.resource = _rewrite_references(entry.resource, mapping)
    note_bundle_provenance(ctx, (entry.resource for entry in entries))
    # 3. Run the entries in the spec's order; answer in the bundle's order.
    responses: dict[int, bytes] = {}
    for entry in sorted(entries, key=lambda e: (_ORDER[e.method], e.index)):
        try:
            write, search = _execute(ctx, entry, assigned.get(entry.index))
        except (FhirError, ResourceInvalid) as cause:
            raise EntryFailed(entry.index, cause) from None
        responses[entry.index] = _response_entry(ctx, write, search, representation)
    return bundle_bytes(
        {"resourceType": "Bundle", "type": "transaction-response"},
        [responses[e.index] for e in entries],
    )


def run_batch(ctx: FhirContext, entries: list[_Entry], representation: bool) -> bytes:
    note_bundle_provenance(ctx, (entry.resource for entry in entries))
    responses = []
    for entry in entries:
        try:
            with ctx.savepoint():
                write, search = _execute(ctx, entry)
            responses.append(_response_entry(ctx, write, search, representation))
        except (FhirError, ResourceInvalid) as cause:
            responses.append(_error_entry(cause, entry.index))
    return bundle_bytes({"resourceType": "Bundle", "type": "batch-response"}, responses)


@router.post("/", summary="batch/transaction")
def batch_or_transaction(ctx: ContextDep, body: BodyDep) -> Response:
    bundle = parse_document(body, ctx.header("content-type"))
    if bundle.get("resourceType") != "Bundle":
        raise InvalidRequest("POST to the base takes a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise InvalidRequest(f"Bundle.type must be batch or transaction, not {kind!r}")
    note_interaction(ctx.request.scope, kind)
    entries = _parse_entries(bundle)
    representation = (ctx.prefer("return") or "representation") == "representation"
    ctx.begin_write()
    if kind == "transaction":
        try:
            body_bytes = run_transaction(ctx, entries, representation)
        except EntryFailed as failed:
            ctx.rollback()
            raise _with_status(failed) from None
        except FhirError:
            ctx.rollback()
            raise
    else:
        body_bytes = run_batch(ctx, entries, representation)
    ctx.commit()
    return ctx.respond(body_bytes)


def _with_status(failed: EntryFailed) -> FhirError:
    """Re-raise a failed entry as its cause's class so the error table picks the status."""
    cause = failed.cause
    if isinstance(cause, ResourceInvalid):
        from careplan_fhir.errors import Unprocessable

        return Unprocessable(failed.message, issues=failed.issues)
    error = type(cause)(failed.message, issues=failed.issues)
    return error
