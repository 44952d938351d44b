"""CORS for portal apps, protective headers on HTML, the CapabilityStatement's security section."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from careplan_fhir.app import create_app
from careplan_fhir.settings import Settings

PORTAL = "https://portal.example.org"


@pytest.fixture
def cors_client(settings: Settings, system_headers: dict[str, str]) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"cors_origins": [PORTAL]}))
    with TestClient(app, headers=system_headers) as client:
        yield client


def test_preflight_from_a_configured_origin_needs_no_token(cors_client: TestClient) -> None:
    response = cors_client.options(
        "/fhir/Task/t1",
        headers={
            "Origin": PORTAL,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type, if-match",
            "Authorization": "",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == PORTAL
    assert "PUT" in response.headers["access-control-allow-methods"]
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_other_origins_get_no_cors_grant(cors_client: TestClient) -> None:
    response = cors_client.get("/fhir/Patient", headers={"Origin": "https://evil.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    allowed = cors_client.get("/fhir/Patient", headers={"Origin": PORTAL})
    assert allowed.headers["access-control-allow-origin"] == PORTAL
    assert "etag" in allowed.headers.get("access-control-expose-headers", "").lower() or (
        "location" in allowed.headers.get("access-control-expose-headers", "").lower()
    )


def test_without_configured_origins_there_is_no_cors(client: TestClient) -> None:
    response = client.get("/fhir/Patient", headers={"Origin": PORTAL})
    assert "access-control-allow-origin" not in response.headers


def test_html_pages_carry_security_headers(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    fhir = client.get("/fhir/Patient")
    assert "x-frame-options" not in fhir.headers  # JSON, not a page


def test_capability_statement_declares_smart(client: TestClient, cors_client: TestClient) -> None:
    security = client.get("/fhir/metadata").json()["rest"][0]["security"]
    codes = [c["code"] for s in security["service"] for c in s["coding"]]
    assert codes == ["SMART-on-FHIR"]
    assert security["cors"] is False
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {
        "token": "http://testserver/auth/token",
        "introspect": "http://testserver/auth/introspect",
    }
    assert cors_client.get("/fhir/metadata").json()["rest"][0]["security"]["cors"] is True
