"""The token endpoint, ``POST /auth/token``: SMART Backend Services
(https://hl7.org/fhir/smart-app-launch/backend-services.html#obtaining-an-access-token).

A registered client posts ``grant_type=client_credentials``, ``scope``,
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and
``client_assertion`` (a JWT it signed, RFC 7523 §2.2) as a form; the answer is an access token
(RFC 6749 §5.1) or an OAuth error (RFC 6749 §5.2). The work is
:meth:`careplan_fhir.auth.backend_services.BackendServices.issue_token`.
"""

from __future__ import annotations

import jwt
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careplan_fhir.audit.events import CLIENT_KEY
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


@router.post("/auth/token", include_in_schema=True, summary="SMART Backend Services token")
async def token(request: Request) -> Response:
    try:
        form = await read_form(request)
        machinery = backend_services(request)
        # A client's JWKS may be fetched over the network: not on the event loop.
        answer = await run_in_threadpool(machinery.issue_token, form, urls_of(request))
    except OAuthError as error:
        return oauth_error_response(error)
    # The audit trail names the client that was issued a token (we signed it a moment ago).
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    request.scope[CLIENT_KEY] = claims.get("client_id")
    return json_response(answer, headers=NO_STORE)
