"""Tokens for tests: signed with a test run's key, as the server's token endpoint signs them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from careplan_fhir.auth.keys import load_or_create_signing_key, mint_access_token
from careplan_fhir.settings import Settings

#: The FHIR base of the test apps (the audience of their tokens).
TEST_BASE = "http://testserver/fhir"
#: The scope of the token the server-core suites send: everything, for every patient.
SYSTEM_SCOPE = "system/*.cruds"


def mint_token(
    key_file: Path,
    scope: str,
    *,
    patient: str | None = None,
    fhir_user: str | None = None,
    subject: str = "test-client",
    audience: str = TEST_BASE,
    lifetime: timedelta = timedelta(hours=1),
    issuer: str | None = None,
) -> str:
    """A token signed with the test key, as the server's own token endpoint would issue it."""
    return mint_access_token(
        load_or_create_signing_key(key_file),
        issuer=issuer or Settings().auth_issuer,
        audience=audience,
        scope=scope,
        subject=subject,
        lifetime=lifetime,
        now=datetime.now(UTC),
        patient=patient,
        fhir_user=fhir_user,
        client_id=subject,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
