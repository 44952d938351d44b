"""What the OAuth endpoints (``/auth/*``, ``/.well-known/*``) share: form bodies and JSON answers.

These endpoints speak OAuth 2.0, not FHIR: their bodies are ``application/json`` and their
errors RFC 6749 §5.2 error objects, never OperationOutcomes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from fastapi.responses import Response

from careplan_fhir.auth.backend_services import BackendServices, OAuthError, ServerUrls, server_urls
from careplan_fhir.errors import PayloadTooLarge

from .context import Services, read_body

#: RFC 6749 §5.1: token responses (and anything carrying token data) must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def backend_services(request: Request) -> BackendServices:
    """The token endpoint's machinery (built by ``create_app``)."""
    machinery = services_of(request).backend_services
    if machinery is None:
        raise OAuthError("temporarily_unavailable", "Token services are not configured", 503)
    return machinery


def urls_of(request: Request) -> ServerUrls:
    return server_urls(services_of(request).settings.base_url, str(request.base_url))


def json_response(
    content: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, headers=headers, media_type="application/json"
    )


def oauth_error_response(error: OAuthError) -> Response:
    headers = dict(NO_STORE)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="careplan-fhir"'
    return json_response(error.body(), error.status, headers)


async def read_form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (RFC 6749 §4.4.2), size-limited."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded")
    try:
        body = await read_body(request)
    except PayloadTooLarge as exc:
        raise OAuthError("invalid_request", exc.message, 413) from None
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body.strip())
        )
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "The body is not a valid form") from None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    return form
