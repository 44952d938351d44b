"""SMART Backend Services: the token endpoint's logic and token introspection.

* Token request (https://hl7.org/fhir/smart-app-launch/backend-services.html, "Obtaining an
  access token"): ``grant_type=client_credentials``, the client authenticated with a JWT it
  signed itself (``private_key_jwt``, RFC 7523 §2.2 and SMART's
  client-confidential-asymmetric profile,
  https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html): ``iss`` = ``sub``
  = the client id, ``aud`` = this token endpoint's URL, ``exp`` no more than five minutes
  ahead, a ``jti`` never seen before. The answer is a short-lived ``system/`` access token for
  the requested scopes that the client's registration allows.
* Errors are OAuth 2.0 error responses (RFC 6749 §5.2), not OperationOutcomes: a failed client
  authentication is ``invalid_client`` (401), as SMART requires.
* Token introspection (RFC 7662; SMART's profile:
  https://hl7.org/fhir/smart-app-launch/token-introspection.html).

Nothing here touches HTTP: the routes in :mod:`careplan_fhir.rest.auth_token` and
:mod:`careplan_fhir.rest.auth_introspect` parse the request and call in.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from careplan_fhir.errors import NotAuthorized
from careplan_fhir.fhir.dates import utc_now
from careplan_fhir.settings import Settings

from .clients import ClientRegistry, load_clients
from .keys import SigningKey, mint_access_token
from .scopes import ScopeSet, parse_scopes
from .tokens import TokenVerifier

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT_TYPE = "client_credentials"
#: SMART requires RS384 and ES384 support; RS256 and ES256 are accepted too.
ASSERTION_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256")
#: "exp: ... no more than five minutes in the future" (SMART Backend Services).
MAX_ASSERTION_LIFETIME = timedelta(minutes=5)
#: Tolerated clock difference between the client and this server.
CLOCK_SKEW = timedelta(seconds=30)


class OAuthError(Exception):
    """An OAuth 2.0 error response (RFC 6749 §5.2): ``error``, a description, a status."""

    def __init__(self, error: str, description: str, status: int | None = None) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status if status is not None else (401 if error == "invalid_client" else 400)

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class ReplayCache:
    """The ``jti`` of every client assertion accepted, kept until the assertion expires.

    Per process: with several workers, each keeps its own (see docs/security.md).
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._expiries: dict[tuple[str, str], datetime] = {}
        self._heap: list[tuple[datetime, tuple[str, str]]] = []
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def remember(self, client_id: str, jti: str, expires: datetime, now: datetime) -> bool:
        """Record ``jti``; False when it was seen before and has not expired yet."""
        key = (client_id, jti)
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, old = heapq.heappop(self._heap)
                if self._expiries.get(old, now) <= now:
                    self._expiries.pop(old, None)
            seen = self._expiries.get(key)
            if seen is not None and seen > now:
                return False
            if len(self._expiries) >= self.max_entries:
                raise OAuthError(
                    "temporarily_unavailable", "Too many token requests; retry shortly", 503
                )
            self._expiries[key] = expires
            heapq.heappush(self._heap, (expires, key))
            return True


@dataclass(frozen=True)
class ServerUrls:
    """Where this server's endpoints are, as clients must name them."""

    fhir_base: str
    token_endpoint: str
    introspection_endpoint: str
    jwks_uri: str
    smart_configuration: str


def server_urls(configured_base_url: str, request_root: str) -> ServerUrls:
    """The public URLs, from the configured FHIR base URL (``…/fhir``) or else the request's root.

    With a configured base URL the request's ``Host`` is never trusted: an assertion meant for
    another server must not become acceptable by sending it with that server's host name.
    """
    base = configured_base_url.rstrip("/")
    if base:
        root = base.removesuffix("/fhir") if base.endswith("/fhir") else base
    else:
        root = request_root.rstrip("/")
        base = root + "/fhir"
    return ServerUrls(
        fhir_base=base,
        token_endpoint=f"{root}/auth/token",
        introspection_endpoint=f"{root}/auth/introspect",
        jwks_uri=f"{root}/.well-known/jwks.json",
        smart_configuration=f"{base}/.well-known/smart-configuration",
    )


def _single(form: Mapping[str, list[str]], name: str) -> str:
    values = form.get(name, [])
    if len(values) > 1:
        # RFC 6749 §3.2: parameters MUST NOT be included more than once.
        raise OAuthError("invalid_request", f"Parameter {name!r} is given more than once")
    if not values or not values[0]:
        raise OAuthError("invalid_request", f"Missing parameter {name!r}")
    return values[0]


def _instant(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OAuthError("invalid_client", f"The assertion's {name!r} is not a NumericDate")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise OAuthError("invalid_client", f"The assertion's {name!r} is out of range") from None


@dataclass
class BackendServices:
    """The token endpoint and introspection, with the keys and clients they need."""

    signing_key: SigningKey
    clients: ClientRegistry
    issuer: str
    lifetime: timedelta
    #: Verifies bearer tokens for introspection (this server's key plus trusted issuers).
    verifier: TokenVerifier
    #: Extra accepted audiences of introspected tokens, besides the FHIR base.
    audiences: tuple[str, ...] = ()
    replay: ReplayCache = field(default_factory=ReplayCache)
    #: The wall clock: tokens are checked against it wherever they are used.
    now: Callable[[], datetime] = utc_now

    # -- the token endpoint -------------------------------------------------------------

    def issue_token(self, form: Mapping[str, list[str]], urls: ServerUrls) -> dict[str, Any]:
        """The token response for a parsed form body, or :class:`OAuthError`."""
        now = self.now()
        grant_type = _single(form, "grant_type")
        if grant_type != GRANT_TYPE:
            raise OAuthError(
                "unsupported_grant_type", f"Only grant_type={GRANT_TYPE} is supported here"
            )
        assertion_type = _single(form, "client_assertion_type")
        if assertion_type != CLIENT_ASSERTION_TYPE:
            raise OAuthError(
                "invalid_request", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}"
            )
        assertion = _single(form, "client_assertion")
        requested = _single(form, "scope")
        client_id = self.authenticate_client(assertion, urls.token_endpoint, now)
        if "client_id" in form and form["client_id"] != [client_id]:
            raise OAuthError("invalid_client", "client_id differs from the assertion's issuer")
        scope = self.grant_scope(client_id, requested)
        token = mint_access_token(
            self.signing_key,
            issuer=self.issuer,
            audience=urls.fhir_base,
            scope=scope,
            subject=client_id,
            client_id=client_id,
            lifetime=self.lifetime,
            now=now,
        )
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(self.lifetime.total_seconds()),
            "scope": scope,
        }

    def authenticate_client(self, assertion: str, token_endpoint: str, now: datetime) -> str:
        """The client id of a valid, unreplayed client assertion (else ``invalid_client``)."""
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError("invalid_client", "The client assertion is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in ASSERTION_ALGORITHMS:
            raise OAuthError(
                "invalid_client",
                f"Assertion algorithm {algorithm!r} is not accepted; use one of "
                + ", ".join(ASSERTION_ALGORITHMS),
            )
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or not client_id:
            raise OAuthError("invalid_client", "The assertion has no issuer (iss)")
        if unverified.get("sub") != client_id:
            raise OAuthError("invalid_client", "The assertion's sub must equal its iss")
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthError("invalid_client", "Unknown client")
        jku = header.get("jku")
        if jku is not None and jku != client.jwks_uri:
            raise OAuthError("invalid_client", "The assertion's jku is not the registered JWKS URL")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise OAuthError("invalid_client", "The assertion header has no kid")
        key = client.key_for(kid, algorithm)
        if key is None:
            raise OAuthError("invalid_client", "No registered key of the client has this kid")
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=[algorithm],
                audience=token_endpoint,
                issuer=client_id,
                # Times are checked below against the injected clock.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                },
            )
        except jwt.InvalidAudienceError:
            raise OAuthError(
                "invalid_client", f"The assertion's aud must be {token_endpoint}"
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise OAuthError("invalid_client", f"The assertion lacks {exc.claim!r}") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            raise OAuthError(
                "invalid_client", "The assertion's signature does not verify"
            ) from None
        expires = _instant(claims, "exp")
        assert expires is not None  # required above
        if expires <= now - CLOCK_SKEW:
            raise OAuthError("invalid_client", "The assertion has expired")
        if expires > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            raise OAuthError(
                "invalid_client", "The assertion's exp is more than five minutes ahead"
            )
        not_before = _instant(claims, "nbf")
        if not_before is not None and not_before > now + CLOCK_SKEW:
            raise OAuthError("invalid_client", "The assertion is not valid yet (nbf)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise OAuthError("invalid_client", "The assertion's jti must be a non-empty string")
        if not self.replay.remember(client_id, jti, max(expires, now) + CLOCK_SKEW, now):
            raise OAuthError("invalid_client", "This assertion's jti has been used already")
        return client_id

    def grant_scope(self, client_id: str, requested: str) -> str:
        """The requested ``system/`` scopes narrowed to the client's registration."""
        client = self.clients.get(client_id)
        assert client is not None
        parsed = parse_scopes(requested)
        if parsed.invalid:
            raise OAuthError(
                "invalid_scope", "Not SMART scopes: " + " ".join(sorted(parsed.invalid))
            )
        system = ScopeSet(scopes=tuple(s for s in parsed.scopes if s.context == "system"))
        granted = system.narrowed_to(client.scope)
        if not granted.scopes:
            raise OAuthError(
                "invalid_scope",
                "None of the requested scopes is a system/ scope this client is registered for",
            )
        return str(granted)

    # -- introspection ------------------------------------------------------------------

    def authorized_caller(self, authorization: str | None, urls: ServerUrls) -> bool:
        """Whether ``Authorization`` carries a valid bearer token (any scope) for this server."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return self._verified(token.strip(), urls) is not None

    def introspect(self, form: Mapping[str, list[str]], urls: ServerUrls) -> dict[str, Any]:
        """The RFC 7662 answer for the form's ``token``: its claims, or ``active: false``."""
        token = _single(form, "token")
        claims = self._verified(token, urls)
        if claims is None:
            return {"active": False}
        answer: dict[str, Any] = {"active": True, "token_type": "Bearer"}
        for name in ("scope", "client_id", "sub", "exp", "iat", "iss", "aud", "patient"):
            if claims.get(name) is not None:
                answer[name] = claims[name]
        if claims.get("fhirUser") is not None:
            answer["fhirUser"] = claims["fhirUser"]
        if claims.get("encounter") is not None:
            answer["encounter"] = claims["encounter"]
        return answer

    def _verified(self, token: str, urls: ServerUrls) -> dict[str, Any] | None:
        """The claims of ``token`` if it verifies (signature, issuer, audience, times)."""
        try:
            verified = self.verifier.verify(token, audiences=[urls.fhir_base, *self.audiences])
        except NotAuthorized:
            return None
        return dict(verified.claims)


def backend_services_for(
    settings: Settings, signing_key: SigningKey, verifier: TokenVerifier | None = None
) -> BackendServices:
    """The token endpoint's machinery for ``settings``.

    ``verifier`` is the one the FHIR API uses, when authorization is on; introspection works
    either way, so without one a verifier of the same issuers is made.
    """
    from .middleware import trusted_issuers

    if verifier is None:
        verifier = TokenVerifier(trusted_issuers(settings, signing_key.jwks()), now=utc_now)
    return BackendServices(
        signing_key=signing_key,
        clients=load_clients(settings.auth_clients_file),
        issuer=settings.auth_issuer,
        lifetime=timedelta(seconds=settings.access_token_seconds),
        verifier=verifier,
        audiences=tuple(settings.auth_audiences),
    )
