"""``/.well-known/smart-configuration`` and ``/.well-known/jwks.json``, through HTTP.

SMART App Launch v2, Conformance (https://hl7.org/fhir/smart-app-launch/conformance.html): the
document must tell the truth. This server has a token endpoint for Backend Services and
introspection but no authorization endpoint, so it claims no launch capability.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.auth.keys import load_or_create_signing_key
from careplan_fhir.auth.scopes import parse_scopes
from careplan_fhir.settings import Settings

#: The capability codes SMART App Launch 2.2.0 defines (Conformance, "Capabilities").
SMART_CAPABILITIES = {
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "smart-app-state",
}
#: What needs an authorization endpoint, refresh tokens, OpenID Connect or shared secrets.
NOT_HERE = {
    "launch-ehr",
    "launch-standalone",
    "authorize-post",
    "client-public",
    "client-confidential-symmetric",
    "sso-openid-connect",
    "context-banner",
    "context-style",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-standalone-encounter",
    "permission-offline",
    "permission-online",
    "smart-app-state",
}


def _app(database_url: str, tmp_path: Path, base_url: str) -> Iterator[TestClient]:
    settings = Settings(
        database_url=database_url,
        base_url=base_url,
        auth_signing_key_file=str(tmp_path / "key.json"),
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def http(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    yield from _app(database_url, tmp_path, "http://testserver/fhir")


def _document(http: TestClient, path: str = "/.well-known/smart-configuration") -> Any:
    response = http.get(path)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def test_document_names_the_endpoints(http: TestClient) -> None:
    document = _document(http)
    assert document["issuer"] == Settings().auth_issuer
    assert document["token_endpoint"] == "http://testserver/auth/token"
    assert document["introspection_endpoint"] == "http://testserver/auth/introspect"
    assert document["jwks_uri"] == "http://testserver/.well-known/jwks.json"
    assert "authorization_endpoint" not in document
    assert document["grant_types_supported"] == ["client_credentials"]
    assert document["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    # SMART requires RS384 and ES384 for client assertions.
    assert {"RS384", "ES384"} <= set(document["token_endpoint_auth_signing_alg_values_supported"])
    assert document["response_types_supported"] == []


def test_capabilities_are_only_what_is_implemented(http: TestClient) -> None:
    capabilities = set(_document(http)["capabilities"])
    assert capabilities <= SMART_CAPABILITIES
    assert not capabilities & NOT_HERE
    assert capabilities == {"client-confidential-asymmetric", "permission-v1", "permission-v2"}


def test_supported_scopes_are_system_scopes(http: TestClient) -> None:
    scopes = parse_scopes(" ".join(_document(http)["scopes_supported"]))
    assert not scopes.invalid and not scopes.other
    assert scopes.contexts() == {"system"}


def test_document_under_the_fhir_base_is_the_same_and_public(http: TestClient) -> None:
    # The specification puts it at [base]/.well-known/smart-configuration; no token needed.
    assert _document(http, "/fhir/.well-known/smart-configuration") == _document(http)


def test_advertised_endpoints_exist(http: TestClient) -> None:
    document = _document(http)
    prefix = "http://testserver"
    token = http.post(document["token_endpoint"].removeprefix(prefix), data={})
    assert (token.status_code, token.json()["error"]) == (400, "invalid_request")
    introspection = http.post(document["introspection_endpoint"].removeprefix(prefix), data={})
    assert introspection.status_code == 401
    assert http.get(document["jwks_uri"].removeprefix(prefix)).status_code == 200


def test_jwks_publishes_the_signing_key_without_its_private_part(
    http: TestClient, tmp_path: Path
) -> None:
    key = load_or_create_signing_key(tmp_path / "key.json")
    jwks = http.get("/.well-known/jwks.json").json()
    assert jwks == {"keys": [key.public_jwk()]}
    (public,) = jwks["keys"]
    assert "d" not in public
    assert (public["kid"], public["alg"], public["use"], public["crv"]) == (
        key.kid,
        "ES256",
        "sig",
        "P-256",
    )


def test_urls_follow_the_configured_base(database_url: str, tmp_path: Path) -> None:
    for http in _app(database_url, tmp_path, "https://ehr.example.org/api/fhir"):
        document = _document(http)
        assert document["token_endpoint"] == "https://ehr.example.org/api/auth/token"
        assert document["jwks_uri"] == "https://ehr.example.org/api/.well-known/jwks.json"


def test_urls_follow_the_request_without_a_configured_base(
    database_url: str, tmp_path: Path
) -> None:
    for http in _app(database_url, tmp_path, ""):
        response = http.get(
            "/.well-known/smart-configuration", headers={"Host": "careplan.local:9000"}
        )
        assert response.json()["token_endpoint"] == "http://careplan.local:9000/auth/token"
