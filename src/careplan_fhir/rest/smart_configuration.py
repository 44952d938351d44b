"""Discovery: ``GET [base]/.well-known/smart-configuration`` (SMART App Launch v2, Conformance:
https://hl7.org/fhir/smart-app-launch/conformance.html#metadata) and the server's public keys,
``GET /.well-known/jwks.json`` (RFC 7517 §5).

The document tells the truth: this server has a token endpoint for SMART Backend Services
(``client_credentials`` with ``private_key_jwt``) and introspection, and no authorization
endpoint, so it lists no launch, public-client or refresh-token capabilities and no response
types. The capabilities it lists are the ones implemented
(https://hl7.org/fhir/smart-app-launch/conformance.html#capabilities):

* ``client-confidential-asymmetric``: the token endpoint authenticates clients with a JWT
  signed by one of their registered keys;
* ``permission-v2`` and ``permission-v1``: both scope syntaxes are accepted
  (``system/Observation.rs`` and ``system/Observation.read``).

It is served at the server's root (``/.well-known/smart-configuration``) and, where the
specification puts it, relative to the FHIR base (``/fhir/.well-known/smart-configuration``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from careplan_fhir.auth.backend_services import ASSERTION_ALGORITHMS, GRANT_TYPE, ServerUrls

from .oauth import json_response, services_of, urls_of

router = APIRouter()

CAPABILITIES = ("client-confidential-asymmetric", "permission-v2", "permission-v1")
#: What a client may ask the token endpoint for (narrowed to its registration when granted).
SCOPES_SUPPORTED = ("system/*.cruds", "system/*.rs", "system/*.read", "system/*.write")


def smart_configuration_document(issuer: str, urls: ServerUrls) -> dict[str, Any]:
    """The ``.well-known/smart-configuration`` JSON for these endpoints."""
    return {
        "issuer": issuer,
        "jwks_uri": urls.jwks_uri,
        "token_endpoint": urls.token_endpoint,
        "introspection_endpoint": urls.introspection_endpoint,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        "grant_types_supported": [GRANT_TYPE],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "response_types_supported": [],
        "capabilities": list(CAPABILITIES),
    }


@router.get("/.well-known/smart-configuration", summary="SMART configuration")
@router.get("/fhir/.well-known/smart-configuration", include_in_schema=False)
async def smart_configuration(request: Request) -> Response:
    services = services_of(request)
    document = smart_configuration_document(services.settings.auth_issuer, urls_of(request))
    return json_response(document)


@router.get("/.well-known/jwks.json", summary="The server's public signing keys")
async def jwks(request: Request) -> Response:
    key = services_of(request).signing_key
    return json_response(key.jwks() if key is not None else {"keys": []})
