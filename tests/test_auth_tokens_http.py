"""Forged and stretched tokens, through HTTP: each is 401 with an OperationOutcome, nothing written.

The verifier itself is table-tested in tests/test_auth_tokens.py; this suite proves the server
asks it on every FHIR request (framework routes and fast paths alike), answers with RFC 6750's
challenge, and lets the CapabilityStatement through without a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from careplan_fhir.auth.keys import load_or_create_signing_key
from tests.factories import observation, patient
from tests.tokens import TEST_BASE, mint_token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {
        "iss": "http://127.0.0.1:8080/auth",
        "sub": "intruder",
        "aud": TEST_BASE,
        "scope": "system/*.cruds",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    claims.update(overrides)
    return claims


def _unsigned(key_file: Path) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": load_or_create_signing_key(key_file).kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}."


def _hmac_with_public_key(key_file: Path) -> str:
    """HS256 keyed with the server's public JWK: the classic algorithm-confusion forgery."""
    key = load_or_create_signing_key(key_file)
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}"
    secret = json.dumps(key.public_jwk(), sort_keys=True).encode()
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _other_key(key_file: Path) -> str:
    stranger = ec.generate_private_key(ec.SECP256R1())
    kid = load_or_create_signing_key(key_file).kid  # claims to be the server's key
    return jwt.encode(_claims(), stranger, algorithm="ES256", headers={"kid": kid})


def _tampered(key_file: Path) -> str:
    """A real patient token whose payload was edited to a system scope after signing."""
    header, _, signature = mint_token(key_file, "patient/*.rs", patient="pa").split(".")
    payload = _b64(json.dumps(_claims()).encode())
    return f"{header}.{payload}.{signature}"


FORGERIES: dict[str, Callable[[Path], str]] = {
    "alg none": _unsigned,
    "HMAC with the public key": _hmac_with_public_key,
    "signed by another key": _other_key,
    "payload tampered": _tampered,
    "expired": lambda f: mint_token(f, "system/*.cruds", lifetime=timedelta(seconds=-120)),
    "wrong audience": lambda f: mint_token(f, "system/*.cruds", audience="https://other/fhir"),
    "unknown issuer": lambda f: mint_token(f, "system/*.cruds", issuer="https://evil.example"),
    "not a JWT": lambda f: "not-a-token",
    "empty segments": lambda f: "..",
}


def _assert_401(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_and_stretched_tokens_are_refused(
    client: TestClient, signing_key_file: Path, forgery: str
) -> None:
    token = FORGERIES[forgery](signing_key_file)
    bad = {"Authorization": f"Bearer {token}"}
    assert client.put("/fhir/Patient/p1", json=patient(id="p1")).status_code == 201
    for method, url, body in (
        ("GET", "/fhir/Patient/p1", None),  # the plain-read fast path
        ("GET", "/fhir/Patient?_id=p1", None),  # the search fast path
        ("POST", "/fhir/Observation", observation("p1")),  # the create fast path
        ("PUT", "/fhir/Patient/p1", patient(id="p1", gender="male")),
        ("DELETE", "/fhir/Patient/p1", None),
        ("GET", "/fhir/_history", None),
    ):
        response = client.request(method, url, headers=bad, json=body)
        _assert_401(response)
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
        assert token not in response.text
    assert client.get("/fhir/Observation").json()["total"] == 0
    stored = client.get("/fhir/Patient/p1").json()
    assert (stored["meta"]["versionId"], stored["gender"]) == ("1", "female")


def test_no_token_is_401_with_a_challenge(client: TestClient) -> None:
    for url in ("/fhir/Patient", "/fhir/Patient/x", "/fhir"):
        response = client.get(url, headers={"Authorization": ""})
        _assert_401(response)
    response = client.post("/fhir/Patient", json=patient(), headers={"Authorization": ""})
    _assert_401(response)
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_other_schemes_are_refused(client: TestClient) -> None:
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    response = client.get("/fhir/Patient", headers=basic)
    _assert_401(response)
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


def test_discovery_is_public(client: TestClient) -> None:
    response = client.get("/fhir/metadata", headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"
    smart = client.get("/fhir/.well-known/smart-configuration", headers={"Authorization": ""})
    assert smart.status_code == 200
    assert smart.json()["token_endpoint"] == "http://testserver/auth/token"


def test_a_valid_token_of_the_right_audience_works(
    client: TestClient, signing_key_file: Path
) -> None:
    token = mint_token(signing_key_file, "system/Patient.rs")
    response = client.get("/fhir/Patient", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    scheme_case = client.get("/fhir/Patient", headers={"Authorization": f"bearer {token}"})
    assert scheme_case.status_code == 200


def test_authorization_can_be_turned_off_explicitly(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from careplan_fhir.app import create_app

    with caplog.at_level("WARNING"):
        app = create_app(settings.model_copy(update={"auth_enabled": False}))
    assert any("authorization" in r.getMessage().lower() for r in caplog.records)
    with TestClient(app) as open_client:
        assert open_client.get("/fhir/Patient").status_code == 200


@pytest.mark.parametrize(
    "parts",
    [
        {
            "scheme": "http",
            "server": ("127.0.0.1", 8080),
            "root_path": "",
            "host": b"localhost:8080",
        },
        {
            "scheme": "https",
            "server": ("10.0.0.1", 443),
            "root_path": "/ehr",
            "host": b"ehr.example",
        },
        {"scheme": "http", "server": ("10.0.0.1", 8000), "root_path": "", "host": None},
        {"scheme": "https", "server": ("10.0.0.1", 8443), "root_path": "", "host": None},
    ],
)
def test_the_audience_base_is_the_request_s_own(parts: dict[str, object]) -> None:
    """fhir_base is computed once per Host/server/root path; it must equal Starlette's."""
    from starlette.requests import Request

    from careplan_fhir.auth.middleware import fhir_base
    from careplan_fhir.settings import Settings

    host = parts["host"]
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": parts["scheme"],
        "server": parts["server"],
        "root_path": parts["root_path"],
        "path": f"{parts['root_path']}/fhir/Patient/1",
        "query_string": b"_format=json",
        "headers": [(b"accept", b"*/*")] + ([(b"host", host)] if host else []),
    }
    expected = str(Request(scope).base_url).rstrip("/") + "/fhir"
    assert fhir_base(scope, Settings(base_url="")) == expected
    assert fhir_base(scope, Settings(base_url="https://fixed.example/fhir/")) == (
        "https://fixed.example/fhir"
    )
