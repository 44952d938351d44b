"""Authentication of every FHIR request: a bearer token, verified, becomes an :class:`Access`.

https://hl7.org/fhir/smart-app-launch/app-launch.html#access-protected-resources and RFC 6750:
requests under ``/fhir`` carry ``Authorization: Bearer <JWT>``. A missing or invalid token is
answered here with 401, ``WWW-Authenticate: Bearer`` and an OperationOutcome, before any
interaction runs. The CapabilityStatement (``GET /fhir/metadata``) is public, as the SMART
discovery flow needs it. What a valid token allows is decided per interaction
(:mod:`careplan_fhir.rest.authorization`).

Paths outside ``/fhir`` (the token endpoint, ``.well-known``, the portal) authenticate their
own way and pass through untouched.
"""

from __future__ import annotations

import functools
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from careplan_fhir.errors import NotAuthorized
from careplan_fhir.fhir.outcome import issue, operation_outcome
from careplan_fhir.settings import Settings

from .access import ANONYMOUS, SCOPE_KEY, UNRESTRICTED, Access, kind_of
from .tokens import AccessToken, FileJwks, Issuer, JwksSource, StaticJwks, TokenVerifier, UrlJwks

logger = logging.getLogger(__name__)

_ACCESS_CACHE_SIZE = 4096
_PUBLIC = frozenset({"/fhir/metadata", "/fhir/.well-known/smart-configuration"})
_CONTENT_TYPE = b"application/fhir+json;charset=utf-8"


def access_from_token(token: AccessToken) -> Access:
    """The caller a verified token stands for."""
    return Access(
        kind=kind_of(token.scopes, token.patient, token.fhir_user),
        scopes=token.scopes,
        client_id=token.client_id,
        subject=token.subject,
        fhir_user=token.fhir_user,
        patient=token.patient,
        encounter=token.encounter,
        scope_text=str(token.scopes),
        token_id=token.token_id,
        issuer=token.issuer,
    )


def trusted_issuers(settings: Settings, own_jwks: dict[str, object]) -> list[Issuer]:
    """The server's own issuer (its signing key) and the configured external ones."""
    issuers = [Issuer(settings.auth_issuer, StaticJwks(own_jwks))]
    for trusted in settings.auth_trusted_issuers:
        source: JwksSource
        if trusted.jwks_file:
            source = FileJwks(Path(trusted.jwks_file))
        elif trusted.jwks_uri:
            source = UrlJwks(trusted.jwks_uri)
        else:
            raise ValueError(
                f"trusted issuer {trusted.issuer!r} has neither jwks_uri nor jwks_file"
            )
        issuers.append(Issuer(trusted.issuer, source))
    return issuers


def fhir_base(scope: Scope, settings: Settings) -> str:
    """The FHIR base URL tokens must name as audience: configured, or this request's."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    host = next((value for name, value in scope["headers"] if name == b"host"), None)
    server = scope.get("server")
    return _request_base(
        scope.get("scheme", "http"),
        host,
        tuple(server) if server else None,
        scope.get("root_path", ""),
    )


@functools.lru_cache(maxsize=256)
def _request_base(
    scheme: str, host: bytes | None, server: tuple[Any, ...] | None, root_path: str
) -> str:
    """The FHIR base of requests with these parts, as Starlette's ``Request.base_url`` has it.

    Computed once per (scheme, Host, server, root path): building a Request and a URL for every
    request cost more than verifying its (cached) token.
    """
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": scheme,
        "server": server,
        "root_path": root_path,
        "path": root_path + "/",
        "query_string": b"",
        "headers": [(b"host", host)] if host is not None else [],
    }
    return str(Request(scope).base_url).rstrip("/") + "/fhir"


class Authenticate:
    """ASGI middleware: verify the bearer token of each FHIR request."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings,
        verifier: TokenVerifier | None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.verifier = verifier
        self.extra_audiences: Sequence[str] = tuple(settings.auth_audiences)
        #: The Access of each recently verified token, by the verifier's (cached) token object:
        #: a client's requests share one Access and its memoised decisions.
        self._accesses: OrderedDict[int, tuple[AccessToken, Access]] = OrderedDict()
        #: Configured base URL and audiences, when they do not depend on the request.
        self._fixed_audiences: tuple[str, ...] | None = (
            (settings.base_url.rstrip("/"), *self.extra_audiences) if settings.base_url else None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path != "/fhir" and not path.startswith("/fhir/"):
            await self.app(scope, receive, send)
            return
        if self.verifier is None:
            scope[SCOPE_KEY] = UNRESTRICTED
            await self.app(scope, receive, send)
            return
        header = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value
                break
        if not header:
            if path in _PUBLIC:
                scope[SCOPE_KEY] = ANONYMOUS
                await self.app(scope, receive, send)
                return
            scope[SCOPE_KEY] = ANONYMOUS
            await _refuse(send, "login", "This request needs a bearer token (SMART on FHIR)", None)
            return
        kind, _, credentials = header.decode("latin-1").partition(" ")
        token = credentials.strip()
        if kind.lower() != "bearer" or not token:
            scope[SCOPE_KEY] = ANONYMOUS
            await _refuse(
                send,
                "login",
                "The Authorization header must be 'Bearer <token>'",
                "invalid_request",
            )
            return
        audiences = self._fixed_audiences or (
            fhir_base(scope, self.settings),
            *self.extra_audiences,
        )
        try:
            verified = self.verifier.verify(token, audiences=audiences)
        except NotAuthorized as exc:
            scope[SCOPE_KEY] = ANONYMOUS
            logger.info("bearer token refused on %s %s: %s", scope["method"], path, exc.message)
            await _refuse(send, "security", exc.message, "invalid_token")
            return
        scope[SCOPE_KEY] = self._access_of(verified)
        await self.app(scope, receive, send)

    def _access_of(self, verified: AccessToken) -> Access:
        """The Access of a verified token, built once per token the verifier caches."""
        hit = self._accesses.get(id(verified))
        if hit is not None and hit[0] is verified:
            return hit[1]
        access = access_from_token(verified)
        self._accesses[id(verified)] = (verified, access)
        while len(self._accesses) > _ACCESS_CACHE_SIZE:
            self._accesses.popitem(last=False)
        return access


async def _refuse(send: Send, code: str, message: str, error: str | None) -> None:
    """401 with an OperationOutcome and the RFC 6750 challenge."""
    body = orjson.dumps(operation_outcome([issue(message, code=code)]))
    challenge = 'Bearer realm="careplan-fhir"'
    if error:
        description = message.replace('"', "'").replace("\\", "/")
        challenge += f', error="{error}", error_description="{description}"'
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", _CONTENT_TYPE),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", challenge.encode("latin-1", "replace")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_verifier(
    settings: Settings, own_jwks: dict[str, object], now: Callable[[], datetime]
) -> TokenVerifier | None:
    """The verifier for ``settings``; None when authorization is turned off."""
    if not settings.auth_enabled:
        return None
    return TokenVerifier(trusted_issuers(settings, own_jwks), now=now)
