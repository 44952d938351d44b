"""Exceptions of the domain; :mod:`careplan_fhir.rest.errors` maps each to an HTTP status.

Hierarchy::

    FhirError
    ├── InvalidRequest        400  malformed input, bad search parameter
    ├── NotAuthorized         401
    ├── Forbidden             403
    ├── ResourceNotFound      404
    ├── MethodNotAllowed      405
    ├── NotAcceptable         406
    ├── ResourceConflict      409  concurrent change, id clash
    ├── ResourceGone          410  deleted
    ├── PreconditionFailed    412  stale If-Match, ambiguous conditional
    ├── PayloadTooLarge       413
    ├── UnsupportedMediaType  415
    ├── Unprocessable         422  valid JSON that is not a valid resource
    └── ServiceOverloaded     503
"""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """A failure that leaves the server as an OperationOutcome."""

    issue_code = "processing"

    def __init__(self, message: str, *, issues: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.issues = issues


class InvalidRequest(FhirError):
    issue_code = "invalid"


class NotAuthorized(FhirError):
    issue_code = "login"


class Forbidden(FhirError):
    issue_code = "forbidden"


class ResourceNotFound(FhirError):
    issue_code = "not-found"


class MethodNotAllowed(FhirError):
    issue_code = "not-supported"


class NotAcceptable(FhirError):
    issue_code = "not-supported"


class ResourceConflict(FhirError):
    issue_code = "conflict"


class ResourceGone(FhirError):
    issue_code = "deleted"


class PreconditionFailed(FhirError):
    issue_code = "conflict"


class PayloadTooLarge(FhirError):
    issue_code = "too-costly"


class UnsupportedMediaType(FhirError):
    issue_code = "not-supported"


class Unprocessable(FhirError):
    issue_code = "invalid"


class ServiceOverloaded(FhirError):
    issue_code = "transient"
