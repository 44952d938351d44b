"""The outcome of a write and its HTTP response, honouring ``Prefer: return=``.

https://hl7.org/fhir/R4/http.html#ops (Location, ETag, Last-Modified) and
https://hl7.org/fhir/R4/http.html#return
(``Prefer: return=minimal|representation|OperationOutcome``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi.responses import Response

from careplan_fhir.fhir.outcome import issue, operation_outcome
from careplan_fhir.storage.repository import StoredResource

from .context import FhirContext, resource_headers


@dataclass(frozen=True)
class WriteResult:
    """What a create, update, patch or delete did."""

    status: int
    stored: StoredResource | None
    message: str

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(
            [issue(self.message, code="informational", severity="information")]
        )


def write_headers(ctx: FhirContext, result: WriteResult) -> dict[str, str]:
    if result.stored is None or result.stored.deleted:
        return {"ETag": result.stored.etag} if result.stored else {}
    headers = resource_headers(result.stored)
    headers["Location"] = ctx.url_of(result.stored, versioned=True)
    return headers


def write_response(ctx: FhirContext, result: WriteResult) -> Response:
    headers = write_headers(ctx, result)
    preference = ctx.prefer("return") or "representation"
    if preference == "minimal":
        return Response(status_code=result.status, headers=headers)
    if preference == "operationoutcome" or result.stored is None or result.stored.raw is None:
        return ctx.respond(result.outcome(), result.status, headers)
    return ctx.respond(result.stored.raw, result.status, headers)
