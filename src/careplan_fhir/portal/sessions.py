"""Who is calling a portal page: a patient session, a bearer token, or a clinician session.

* Patients: the session cookie :data:`SESSION_COOKIE` (started by an invitation link,
  :mod:`careplan_fhir.portal.invitations`), or ``Authorization: Bearer`` with a SMART
  patient-level token from this server or a trusted issuer, verified as the FHIR API verifies
  it (https://hl7.org/fhir/smart-app-launch/app-launch.html#access-protected-resources).
* The care team: ``Authorization: Bearer`` with a practitioner's (``user/``) or a system token,
  or the clinician cookie :data:`CLINICIAN_COOKIE`, which holds such a token pasted once into
  the sign-in form.

Either way the result is the same :class:`~careplan_fhir.auth.access.Access` the FHIR API
builds, and the pages read and write only through the guarded interaction functions with it.
Cookies are ``HttpOnly``, ``SameSite=Strict``, ``Path=/portal`` and ``Secure`` whenever the
portal is served over HTTPS. A form posted with a cookie carries :func:`csrf_token` of that
cookie; a bearer request needs none (a browser never adds the header by itself).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from careplan_fhir.auth.access import UNRESTRICTED, Access, kind_of
from careplan_fhir.auth.middleware import access_from_token, fhir_base
from careplan_fhir.auth.scopes import parse_scopes
from careplan_fhir.auth.tokens import TokenVerifier
from careplan_fhir.errors import NotAuthorized
from careplan_fhir.rest.context import Services

from .invitations import SessionRefused, check_session, csrf_token

SESSION_COOKIE = "careplan_portal"
CLINICIAN_COOKIE = "careplan_clinician"
COOKIE_PATH = "/portal"
_CLINICIANS_ONLY = "This page is for the care team (a practitioner or system token)."


class NotSignedIn(Exception):
    """No usable credentials: the page explains how to get in (401, or 403 for the wrong kind
    of caller)."""

    def __init__(self, reason: str, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.status = status


@dataclass(frozen=True)
class PortalCaller:
    access: Access
    #: The value forms must carry (None: a bearer request, no cookie to protect).
    csrf: str | None
    #: ``session`` | ``bearer`` | ``clinician-session`` | ``open`` (authorization off)
    via: str

    @property
    def patient_id(self) -> str:
        patient = self.access.confined_patient
        assert patient is not None
        return patient

    def check_csrf(self, form: dict[str, str]) -> None:
        """Refuse a cookie-authenticated form that does not carry the session's value."""
        if self.csrf is None:
            return
        given = form.get("csrf", "")
        if not hmac.compare_digest(given.encode(), self.csrf.encode()):
            raise NotSignedIn(
                "csrf", "This form has expired. Go back, reload the page and try again.", 403
            )


def secure_cookies(request: Request, services: Services) -> bool:
    """Cookies get ``Secure`` when the portal is served over HTTPS."""
    configured = services.settings.base_url
    return request.url.scheme == "https" or configured.startswith("https://")


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise NotSignedIn("invalid", "The Authorization header must be 'Bearer <token>'.")
    return token.strip()


def _verified_access(request: Request, verifier: TokenVerifier | None, token: str) -> Access:
    if verifier is None:
        raise NotSignedIn("invalid", "This server does not check tokens (authorization is off).")
    settings = request.app.state.services.settings
    audiences = (fhir_base(request.scope, settings), *settings.auth_audiences)
    try:
        return access_from_token(verifier.verify(token, audiences=audiences))
    except NotAuthorized as error:
        raise NotSignedIn("invalid", error.message) from None


def session_access(claims: dict[str, Any]) -> Access:
    """The caller a portal session token stands for (a patient, her scopes only)."""
    scopes = parse_scopes(str(claims.get("scope") or ""))
    patient = claims.get("patient")
    fhir_user = claims.get("fhirUser")
    return Access(
        kind=kind_of(scopes, patient, fhir_user),
        scopes=scopes,
        client_id=claims.get("client_id"),
        subject=claims.get("sub"),
        fhir_user=fhir_user,
        patient=patient,
        scope_text=str(scopes),
        token_id=claims.get("jti"),
        issuer=claims.get("iss"),
    )


def patient_caller(request: Request) -> PortalCaller:
    """The patient of this request; :class:`NotSignedIn` otherwise."""
    services: Services = request.app.state.services
    token = _bearer(request)
    if token is not None:
        access = _verified_access(request, request.app.state.token_verifier, token)
        caller = PortalCaller(access, None, "bearer")
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise NotSignedIn("missing", "Please open the link your care team sent you.")
        key = services.signing_key
        assert key is not None
        with services.engine.connect() as connection:
            try:
                claims = check_session(
                    connection, key, cookie, issuer=services.settings.auth_issuer
                )
            except SessionRefused as refused:
                raise NotSignedIn(refused.reason, refused.message) from None
        caller = PortalCaller(session_access(claims), csrf_token(cookie), "session")
    if caller.access.confined_patient is None:
        raise NotSignedIn(
            "not-a-patient",
            "These pages show one patient's own plan. Sign in with the patient's link or a"
            " patient token; the care team's page is /portal/alerts.",
            403,
        )
    return caller


def clinician_caller(request: Request) -> PortalCaller:
    """A care-team member (practitioner or system token); :class:`NotSignedIn` otherwise."""
    verifier: TokenVerifier | None = request.app.state.token_verifier
    if verifier is None:
        return PortalCaller(UNRESTRICTED, None, "open")
    token = _bearer(request)
    via = "bearer"
    csrf = None
    if token is None:
        token = request.cookies.get(CLINICIAN_COOKIE)
        if not token:
            raise NotSignedIn("missing", "Sign in with your access token to see the alerts.")
        via, csrf = "clinician-session", csrf_token(token)
    access = _verified_access(request, verifier, token)
    if access.kind not in ("system", "user") or access.confined_patient is not None:
        raise NotSignedIn(
            "not-a-clinician",
            "This page is for the care team (a practitioner or system token).",
            403,
        )
    return PortalCaller(access, csrf, via)


def clinician_token_access(request: Request, token: str) -> Access:
    """Check a token pasted into the clinician sign-in form."""
    access = _verified_access(request, request.app.state.token_verifier, token)
    if access.kind not in ("system", "user") or access.confined_patient is not None:
        raise NotSignedIn(
            "not-a-clinician",
            "This page is for the care team (a practitioner or system token).",
            403,
        )
    return access
