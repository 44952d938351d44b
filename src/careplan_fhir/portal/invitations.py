"""Portal invitations and sessions: signed, expiring, single-patient, revocable.

An invitation (``POST /fhir/Patient/{id}/$portal-invitation``) is a row of the
``portal_invitation`` table and a link carrying a JWS (RFC 7515, compact serialization) signed
with the server's own key (:mod:`careplan_fhir.auth.keys`), with the claims of RFC 7519 §4.1:
``iss`` (the server's issuer), ``aud`` :data:`INVITATION_AUDIENCE`, ``sub`` ``Patient/{id}``,
``patient``, ``jti`` (the invitation id, the row's key), ``iat``, ``nbf`` and ``exp``. Its
audience is not the FHIR base, so the API's authentication never takes a link for a bearer
token.

Opening the link (:func:`open_invitation`) checks the signature, the expiry and the row (not
revoked), then the portal starts a session: a token of the same shape with audience
:data:`SESSION_AUDIENCE`, the SMART ``scope`` :data:`PATIENT_PORTAL_SCOPE` (the patient's own
data only), the ``patient`` launch context and ``fhirUser`` the patient
(https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html), and the claim
``invitation``: every request of the session checks that invitation again, so revoking it ends
its sessions at once.

Tokens are minted and checked against the wall clock (as the API's bearer tokens are), not the
injectable clock of resource timestamps.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
from sqlalchemy import Connection, insert, select, update

from careplan_fhir.auth.access import PATIENT_PORTAL_SCOPE
from careplan_fhir.auth.keys import SigningKey
from careplan_fhir.fhir.dates import to_naive_utc
from careplan_fhir.storage.tables import PortalInvitationRow

_invitation = PortalInvitationRow.__table__  # type: ignore[attr-defined]

#: ``aud`` of invitation links and of portal session tokens (never the FHIR base).
INVITATION_AUDIENCE = "urn:careplan-fhir:portal-invitation"
SESSION_AUDIENCE = "urn:careplan-fhir:portal-session"
#: ``client_id`` of the sessions the portal starts (Provenance and AuditEvents name it).
PORTAL_CLIENT_ID = "careplan-portal"
#: The server signs and checks its own links: no clock skew to allow for.
_LEEWAY_SECONDS = 0


class InvitationRefused(Exception):
    """An invitation link that does not open a session; ``reason`` says why."""

    #: ``invalid`` (malformed, tampered, not ours, unknown) | ``expired`` | ``revoked``
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SessionRefused(Exception):
    """A session token that is no longer (or never was) good: ``expired``, ``revoked``,
    ``invalid``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Invitation:
    """An invitation as created: its id, patient, expiry and the signed token of the link."""

    id: str
    patient_id: str
    expires: datetime
    token: str


@dataclass(frozen=True)
class OpenedInvitation:
    id: str
    patient_id: str
    expires: datetime


@dataclass(frozen=True)
class Session:
    """A portal session: the signed token (the cookie's value) and what it stands for."""

    token: str
    patient_id: str
    invitation_id: str
    expires: datetime


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def invitation_claims(
    *, issuer: str, patient_id: str, invitation_id: str, now: datetime, lifetime: timedelta
) -> dict[str, Any]:
    """The claims of an invitation link (pure)."""
    return {
        "iss": issuer,
        "aud": INVITATION_AUDIENCE,
        "sub": f"Patient/{patient_id}",
        "patient": patient_id,
        "jti": invitation_id,
        "iat": _unix(now),
        "nbf": _unix(now),
        "exp": _unix(now + lifetime),
    }


def session_claims(
    *, issuer: str, patient_id: str, invitation_id: str, now: datetime, expires: datetime
) -> dict[str, Any]:
    """The claims of a session token (pure): the patient's own scopes and nothing more."""
    return {
        "iss": issuer,
        "aud": SESSION_AUDIENCE,
        "sub": f"Patient/{patient_id}",
        "client_id": PORTAL_CLIENT_ID,
        "scope": PATIENT_PORTAL_SCOPE,
        "patient": patient_id,
        "fhirUser": f"Patient/{patient_id}",
        "invitation": invitation_id,
        "jti": str(uuid.uuid4()),
        "iat": _unix(now),
        "nbf": _unix(now),
        "exp": _unix(expires),
    }


def csrf_token(session_token: str) -> str:
    """The anti-CSRF value of a cookie session: a hash of its token.

    Only a page served to the holder of the cookie can know it (the cookie is HttpOnly and
    SameSite), and it cannot be turned back into the token.
    """
    return hashlib.sha256(b"careplan-portal-csrf\n" + session_token.encode("ascii")).hexdigest()


def create_invitation(
    connection: Connection,
    key: SigningKey,
    *,
    issuer: str,
    patient_id: str,
    lifetime: timedelta,
    now: datetime,
    issued_by: str | None,
    new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Invitation:
    """Store an invitation for ``patient_id`` and sign its link (the caller commits)."""
    invitation_id = new_id()
    claims = invitation_claims(
        issuer=issuer,
        patient_id=patient_id,
        invitation_id=invitation_id,
        now=now,
        lifetime=lifetime,
    )
    expires = datetime.fromtimestamp(claims["exp"], tz=UTC)
    connection.execute(
        insert(_invitation).values(
            invitation_id=invitation_id,
            patient_id=patient_id,
            created=to_naive_utc(now),
            expires=to_naive_utc(expires),
            revoked=None,
            issued_by=issued_by[:255] if issued_by else None,
        )
    )
    return Invitation(invitation_id, patient_id, expires, key.sign(claims))


def revoke_invitations(
    connection: Connection,
    patient_id: str,
    now: datetime,
    invitation_id: str | None = None,
) -> int:
    """Revoke the patient's invitations still in force (or the one named); how many."""
    conditions = [_invitation.c.patient_id == patient_id, _invitation.c.revoked.is_(None)]
    if invitation_id is not None:
        conditions.append(_invitation.c.invitation_id == invitation_id)
    result = connection.execute(
        update(_invitation).where(*conditions).values(revoked=to_naive_utc(now))
    )
    return int(result.rowcount or 0)


def _public_key(key: SigningKey) -> Any:
    return jwt.PyJWK(key.public_jwk()).key


def _decode(token: str, key: SigningKey, *, issuer: str, audience: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(
        token,
        _public_key(key),
        algorithms=[key.algorithm],
        audience=audience,
        issuer=issuer,
        leeway=_LEEWAY_SECONDS,
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    return claims


def _row(connection: Connection, invitation_id: str) -> Any:
    return connection.execute(
        select(_invitation).where(_invitation.c.invitation_id == invitation_id)
    ).one_or_none()


def open_invitation(
    connection: Connection, key: SigningKey, token: str, *, issuer: str, now: datetime
) -> OpenedInvitation:
    """The invitation a link names, if it may start a session; :class:`InvitationRefused`."""
    if not token or len(token) > 4096:
        raise InvitationRefused("invalid", "This link is not complete or not valid.")
    try:
        claims = _decode(token, key, issuer=issuer, audience=INVITATION_AUDIENCE)
    except jwt.ExpiredSignatureError:
        raise InvitationRefused("expired", "This link has expired.") from None
    except jwt.PyJWTError:
        raise InvitationRefused("invalid", "This link is not complete or not valid.") from None
    invitation_id = claims.get("jti")
    patient_id = claims.get("patient")
    if not isinstance(invitation_id, str) or not isinstance(patient_id, str):
        raise InvitationRefused("invalid", "This link is not complete or not valid.")
    row = _row(connection, invitation_id)
    if row is None or row.patient_id != patient_id:
        raise InvitationRefused("invalid", "This link is not complete or not valid.")
    if row.revoked is not None:
        raise InvitationRefused("revoked", "This link has been withdrawn by your care team.")
    expires = row.expires.replace(tzinfo=UTC)
    if expires <= now:
        raise InvitationRefused("expired", "This link has expired.")
    return OpenedInvitation(invitation_id, patient_id, expires)


def start_session(
    key: SigningKey,
    invitation: OpenedInvitation,
    *,
    issuer: str,
    now: datetime,
    lifetime: timedelta,
) -> Session:
    """A session token for the invitation's patient (never outliving the invitation)."""
    expires = min(now + lifetime, invitation.expires)
    claims = session_claims(
        issuer=issuer,
        patient_id=invitation.patient_id,
        invitation_id=invitation.id,
        now=now,
        expires=expires,
    )
    return Session(
        key.sign(claims),
        invitation.patient_id,
        invitation.id,
        datetime.fromtimestamp(claims["exp"], tz=UTC),
    )


def check_session(
    connection: Connection, key: SigningKey, token: str, *, issuer: str
) -> dict[str, Any]:
    """The claims of a session token that is still good; :class:`SessionRefused`."""
    try:
        claims = _decode(token, key, issuer=issuer, audience=SESSION_AUDIENCE)
    except jwt.ExpiredSignatureError:
        raise SessionRefused("expired", "Your session has ended.") from None
    except jwt.PyJWTError:
        raise SessionRefused("invalid", "Your session is not valid.") from None
    invitation_id = claims.get("invitation")
    patient_id = claims.get("patient")
    if not isinstance(invitation_id, str) or not isinstance(patient_id, str):
        raise SessionRefused("invalid", "Your session is not valid.")
    row = _row(connection, invitation_id)
    if row is None or row.patient_id != patient_id:
        raise SessionRefused("invalid", "Your session is not valid.")
    if row.revoked is not None:
        raise SessionRefused("revoked", "Your care team has withdrawn your link.")
    return claims
