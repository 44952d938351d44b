"""Portal invitations and sessions over HTTP (docs/portal.md), on SQLite and PostgreSQL.

``Patient/$portal-invitation`` makes a signed, expiring, single-patient link; opening it starts
a session whose cookie is HttpOnly, SameSite=Strict, Secure over HTTPS and holds a short-lived
token with the patient's own scopes only. Expired, revoked and tampered links get a clear page
and a 4xx; revoking ends the sessions a link started; an external SMART patient token works
instead of a session.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from fastapi.testclient import TestClient

from careplan_fhir.auth.access import PATIENT_PORTAL_SCOPE
from careplan_fhir.auth.keys import SigningKey, load_or_create_signing_key
from careplan_fhir.fhir.dates import utc_now
from careplan_fhir.portal.invitations import (
    INVITATION_AUDIENCE,
    SESSION_AUDIENCE,
    invitation_claims,
)
from careplan_fhir.portal.sessions import SESSION_COOKIE
from careplan_fhir.settings import Settings
from tests.factories import patient
from tests.plan_setup import create
from tests.portal_setup import browser, invite, parameter, signed_in
from tests.tokens import bearer, mint_token

ISSUER = Settings().auth_issuer


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def set_cookie(response: Any) -> str:
    header: str = response.headers["set-cookie"]
    assert header.startswith(f"{SESSION_COOKIE}="), header
    return header


def revoke(client: TestClient, patient_id: str, invitation: str | None = None) -> int:
    body = None
    if invitation is not None:
        body = {
            "resourceType": "Parameters",
            "parameter": [{"name": "invitation", "valueString": invitation}],
        }
    response = client.post(f"/fhir/Patient/{patient_id}/$portal-invitation-revoke", json=body)
    assert response.status_code == 200, response.text
    count: int = parameter(response.json(), "revoked")["valueInteger"]
    return count


def test_an_invitation_link_starts_a_session_for_that_patient_only(client: TestClient) -> None:
    patient_id = create(client, patient())
    response = client.post(f"/fhir/Patient/{patient_id}/$portal-invitation")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert answer["resourceType"] == "Parameters"
    url = parameter(answer, "url")["valueUrl"]
    assert url.startswith("http://testserver/portal/invitation?token=")
    assert parameter(answer, "patient")["valueReference"] == {"reference": f"Patient/{patient_id}"}
    link_claims = claims_of(token_of(url))
    assert link_claims["aud"] == INVITATION_AUDIENCE
    assert link_claims["patient"] == patient_id
    assert link_claims["jti"] == parameter(answer, "invitation")["valueString"]
    # Seven days by default.
    assert link_claims["exp"] - link_claims["iat"] == 7 * 24 * 3600

    patient_browser = browser(client.app)
    opened = patient_browser.get(urlsplit(url).path + "?" + urlsplit(url).query)
    assert opened.status_code == 200
    assert opened.headers["content-type"].startswith("text/html")
    assert "You are signed in" in opened.text
    cookie = set_cookie(opened)
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite", "max-age"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert "path=/portal" in cookie.lower()
    assert "secure" not in attributes  # plain http here; see the https test

    session = claims_of(patient_browser.cookies[SESSION_COOKIE])
    assert session["aud"] == SESSION_AUDIENCE
    assert session["scope"] == PATIENT_PORTAL_SCOPE
    assert session["patient"] == patient_id
    assert session["fhirUser"] == f"Patient/{patient_id}"
    assert 0 < session["exp"] - session["iat"] <= 3600

    today = patient_browser.get("/portal/today")
    assert today.status_code == 200
    assert "Today, Sam" in today.text


def test_the_cookie_is_secure_over_https(client: TestClient) -> None:
    link = invite(client, create(client, patient()))
    https_browser = TestClient(client.app, base_url="https://testserver", follow_redirects=False)
    opened = https_browser.get(link)
    assert opened.status_code == 200
    assert "secure" in {p.strip().lower() for p in set_cookie(opened).split(";")}


def test_links_and_session_tokens_are_not_bearer_tokens_for_the_api(client: TestClient) -> None:
    patient_id = create(client, patient())
    link = invite(client, patient_id)
    patient_browser = signed_in(client.app, link)
    for token in (token_of(link), patient_browser.cookies[SESSION_COOKIE]):
        refused = browser(client.app).get(f"/fhir/Patient/{patient_id}", headers=bearer(token))
        assert refused.status_code == 401


def test_an_expired_link_gets_a_clear_page(client: TestClient, signing_key_file: Path) -> None:
    patient_id = create(client, patient())
    answer = client.post(f"/fhir/Patient/{patient_id}/$portal-invitation").json()
    invitation_id = parameter(answer, "invitation")["valueString"]
    claims = invitation_claims(
        issuer=ISSUER,
        patient_id=patient_id,
        invitation_id=invitation_id,
        now=utc_now() - timedelta(days=8),
        lifetime=timedelta(days=7),
    )
    expired = load_or_create_signing_key(signing_key_file).sign(claims)
    response = browser(client.app).get(f"/portal/invitation?token={expired}")
    assert response.status_code == 410
    assert "This link has expired" in response.text
    assert "set-cookie" not in response.headers


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["patient"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def test_tampered_truncated_or_foreign_links_are_refused(client: TestClient) -> None:
    patient_id = create(client, patient())
    link = invite(client, patient_id)
    token = token_of(link)
    claims = claims_of(token)
    foreign = SigningKey.generate().sign(claims)  # right claims, another key
    for bad in (_tampered(token), token[:-5], foreign, "", "not-a-token"):
        response = browser(client.app).get("/portal/invitation", params={"token": bad})
        assert response.status_code == 400, bad
        assert "This link is not valid" in response.text
        assert "set-cookie" not in response.headers


def test_revoking_refuses_the_link_and_ends_its_sessions(client: TestClient) -> None:
    patient_id = create(client, patient())
    link = invite(client, patient_id)
    patient_browser = signed_in(client.app, link)
    assert patient_browser.get("/portal/today").status_code == 200

    assert revoke(client, patient_id) == 1
    reopened = browser(client.app).get(link)
    assert reopened.status_code == 410
    assert "This link no longer works" in reopened.text
    ended = patient_browser.get("/portal/today")
    assert ended.status_code == 401
    assert "withdrawn" in ended.text
    assert ended.headers["www-authenticate"].startswith("Bearer")
    assert revoke(client, patient_id) == 0  # twice changes nothing


def test_one_invitation_can_be_revoked_alone(client: TestClient) -> None:
    patient_id = create(client, patient())
    first = client.post(f"/fhir/Patient/{patient_id}/$portal-invitation").json()
    second_link = invite(client, patient_id)
    assert revoke(client, patient_id, parameter(first, "invitation")["valueString"]) == 1
    assert browser(client.app).get(second_link).status_code == 200


def test_valid_for_sets_the_expiry_within_the_servers_maximum(client: TestClient) -> None:
    patient_id = create(client, patient())

    def valid_for(value: int, code: str) -> Any:
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "validFor",
                    "valueDuration": {
                        "value": value,
                        "unit": code,
                        "system": "http://unitsofmeasure.org",
                        "code": code,
                    },
                }
            ],
        }
        return client.post(f"/fhir/Patient/{patient_id}/$portal-invitation", json=body)

    two_hours = valid_for(2, "h")
    assert two_hours.status_code == 200
    claims = claims_of(token_of(parameter(two_hours.json(), "url")["valueUrl"]))
    assert claims["exp"] - claims["iat"] == 7200
    too_long = valid_for(31, "d")
    assert too_long.status_code == 422
    assert too_long.json()["issue"][0]["expression"] == ["validFor"]
    assert valid_for(0, "h").status_code == 422
    assert valid_for(3, "mo").status_code == 422


@pytest.mark.parametrize(
    ("scope", "fhir_user", "allowed"),
    [
        ("user/*.cruds", "Practitioner/dr-okafor", True),
        (
            "system/*.rs system/Task.u system/QuestionnaireResponse.c system/Observation.c",
            None,
            True,
        ),
        ("system/*.rs", None, False),
        ("system/Patient.rs", None, False),
        (PATIENT_PORTAL_SCOPE, None, False),
    ],
)
def test_only_callers_holding_what_a_session_gets_may_invite(
    client: TestClient,
    signing_key_file: Path,
    scope: str,
    fhir_user: str | None,
    allowed: bool,
) -> None:
    patient_id = create(client, patient())
    token = mint_token(
        signing_key_file,
        scope,
        fhir_user=fhir_user,
        patient=patient_id if scope.startswith("patient/") else None,
    )
    caller = browser(client.app)
    for operation in ("$portal-invitation", "$portal-invitation-revoke"):
        response = caller.post(f"/fhir/Patient/{patient_id}/{operation}", headers=bearer(token))
        assert response.status_code == (200 if allowed else 403), response.text


def test_an_unknown_patient_is_404(client: TestClient) -> None:
    assert client.post("/fhir/Patient/nobody/$portal-invitation").status_code == 404
    assert client.post("/fhir/Patient/nobody/$portal-invitation-revoke").status_code == 404


def test_the_capability_statement_lists_both_operations(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    patient_resource = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    operations = {o["name"]: o["definition"] for o in patient_resource["operation"]}
    assert operations["portal-invitation"].endswith(
        "/OperationDefinition/Patient-portal-invitation"
    )
    assert operations["portal-invitation-revoke"].endswith(
        "/OperationDefinition/Patient-portal-invitation-revoke"
    )


def test_a_smart_patient_token_works_instead_of_a_session(
    client: TestClient, signing_key_file: Path
) -> None:
    patient_id = create(client, patient())
    patient_token = mint_token(signing_key_file, "patient/*.rs", patient=patient_id)
    page = browser(client.app).get("/portal/today", headers=bearer(patient_token))
    assert page.status_code == 200
    assert "Today, Sam" in page.text

    clinician = mint_token(signing_key_file, "user/*.cruds", fhir_user="Practitioner/x")
    refused = browser(client.app).get("/portal/today", headers=bearer(clinician))
    assert refused.status_code == 403
    forged = browser(client.app).get("/portal/today", headers=bearer(patient_token[:-4] + "AAAA"))
    assert forged.status_code == 401
    anonymous = browser(client.app).get("/portal/today")
    assert anonymous.status_code == 401
    assert "open the link your care team sent you" in anonymous.text


def test_signing_out_clears_the_cookie(client: TestClient) -> None:
    patient_browser = signed_in(client.app, invite(client, create(client, patient())))
    today = patient_browser.get("/portal/today")
    csrf = today.text.split('name="csrf" value="')[1].split('"')[0]
    refused = patient_browser.post("/portal/sign-out", data={"csrf": "wrong"})
    assert refused.status_code == 403
    out = patient_browser.post("/portal/sign-out", data={"csrf": csrf})
    assert out.status_code == 200
    assert (
        'careplan_portal=""' in out.headers["set-cookie"]
        or "Max-Age=0" in out.headers["set-cookie"]
    )
    assert patient_browser.get("/portal/today").status_code == 401
