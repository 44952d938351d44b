"""Token introspection, ``POST /auth/introspect`` (RFC 7662; SMART's profile:
https://hl7.org/fhir/smart-app-launch/token-introspection.html).

The caller authenticates with a bearer token of its own that this server accepts (any scope;
RFC 7662 §2.1 leaves the method to the server); without one the answer is 401. The form's
``token`` is then described: ``active: true`` with its claims (``scope``, ``client_id``,
``sub``, ``exp``, ``iat``, ``iss``, ``aud``, ``patient``, ``fhirUser``), or just
``active: false`` for anything that does not verify (expired, forged, another audience).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careplan_fhir.auth.backend_services import OAuthError

from .oauth import (
    NO_STORE,
    backend_services,
    json_response,
    oauth_error_response,
    read_form,
    urls_of,
)

router = APIRouter()


@router.post("/auth/introspect", summary="Token introspection (RFC 7662)")
async def introspect(request: Request) -> Response:
    try:
        machinery = backend_services(request)
        urls = urls_of(request)
        authorization = request.headers.get("authorization")
        allowed = await run_in_threadpool(machinery.authorized_caller, authorization, urls)
        if not allowed:
            raise OAuthError(
                "invalid_token", "Introspection needs a valid bearer token of this server", 401
            )
        form = await read_form(request)
        answer = await run_in_threadpool(machinery.introspect, form, urls)
    except OAuthError as error:
        return oauth_error_response(error)
    return json_response(answer, headers=NO_STORE)
