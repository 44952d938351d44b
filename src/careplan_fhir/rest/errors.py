"""One table from failure to HTTP status; every failure leaves as an OperationOutcome."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from careplan_fhir import errors
from careplan_fhir.fhir.models import ResourceInvalid
from careplan_fhir.fhir.outcome import issue, operation_outcome

from .formats import render_response

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.FhirError], int] = {
    errors.InvalidRequest: 400,
    errors.NotAuthorized: 401,
    errors.Forbidden: 403,
    errors.ResourceNotFound: 404,
    errors.MethodNotAllowed: 405,
    errors.NotAcceptable: 406,
    errors.ResourceConflict: 409,
    errors.ResourceGone: 410,
    errors.PreconditionFailed: 412,
    errors.PayloadTooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.Unprocessable: 422,
    errors.ServiceOverloaded: 503,
}

_ISSUE_CODE_BY_HTTP_STATUS = {404: "not-found", 405: "not-supported", 400: "invalid"}


def status_for(error: errors.FhirError) -> int:
    for error_class in type(error).__mro__:
        if error_class in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[error_class]
    return 500


def outcome_response(request: Request, status: int, issues: list[dict[str, object]]) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="careplan-fhir"'} if status == 401 else None
    return render_response(request, operation_outcome(issues), status, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an OperationOutcome."""

    async def fhir_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.FhirError)
        issues = exc.issues or [issue(exc.message, code=exc.issue_code)]
        return outcome_response(request, status_for(exc), issues)

    async def invalid_resource(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ResourceInvalid)
        issues = [
            issue(i.diagnostics, code=i.code, severity=i.severity, expression=i.expression or None)
            for i in exc.issues
        ]
        return outcome_response(request, 422, issues)

    async def request_invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        issues = [
            issue(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}", code="invalid")
            for e in exc.errors()
        ]
        return outcome_response(request, 400, issues)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = _ISSUE_CODE_BY_HTTP_STATUS.get(exc.status_code, "processing")
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"No FHIR interaction at {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not supported on {request.url.path}"
        return outcome_response(request, exc.status_code, [issue(message, code=code)])

    async def unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return outcome_response(
            request, 500, [issue("Internal server error; nothing was changed", code="exception")]
        )

    app.add_exception_handler(errors.FhirError, fhir_error)
    app.add_exception_handler(ResourceInvalid, invalid_resource)
    app.add_exception_handler(RequestValidationError, request_invalid)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
