"""``careplan-fhir token`` and the demo tokens ``careplan-fhir serve`` prints, and the key file.

The printed tokens are checked the way the server checks them: helper A's TokenVerifier with the
key file's public keys, this server's issuer and the FHIR base as audience.
"""

from __future__ import annotations

import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from typer.testing import CliRunner

from careplan_fhir.auth.keys import (
    SigningKey,
    jwk_thumbprint,
    load_or_create_signing_key,
    mint_access_token,
)
from careplan_fhir.auth.tokens import AccessToken, Issuer, StaticJwks, TokenVerifier
from careplan_fhir.cli import app
from careplan_fhir.errors import NotAuthorized
from careplan_fhir.settings import Settings

AUDIENCE = "http://127.0.0.1:8080/fhir"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "CAREPLAN_BASE_URL",
        "CAREPLAN_AUTH_ISSUER",
        "CAREPLAN_AUTH_SIGNING_KEY_FILE",
        "CAREPLAN_AUTH_ENABLED",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # the default key file, ./careplan-dev-key.json, lands here


def verify(token: str, key_file: Path, audience: str = AUDIENCE) -> AccessToken:
    key = load_or_create_signing_key(key_file)
    issuer = Issuer(Settings().auth_issuer, StaticJwks(key.jwks()))
    verifier = TokenVerifier([issuer], now=lambda: datetime.now(UTC))
    return verifier.verify(token, audiences=[audience])


def run(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    return result


# -- careplan-fhir token -------------------------------------------------------------------


def test_token_prints_only_a_verifiable_token(tmp_path: Path) -> None:
    key_file = tmp_path / "keys" / "dev.json"
    result = run(
        "token", "--scope", "patient/*.rs", "--patient", "vtp-patient", "--key-file", str(key_file)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1
    token = result.stdout.strip()
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token)
    verified = verify(token, key_file)
    assert verified.patient == "vtp-patient"
    assert verified.subject == "Patient/vtp-patient"
    assert str(verified.scopes) == "patient/*.rs"
    assert verified.fhir_user is None
    # The key file was created on first use, readable by its owner only.
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_token_for_a_clinician_with_lifetime_and_audience(tmp_path: Path) -> None:
    key_file = tmp_path / "dev.json"
    audience = "https://ehr.example.org/fhir"
    result = run(
        "token",
        "--scope",
        "user/*.cruds",
        "--fhir-user",
        "Practitioner/vtp-practitioner",
        "--lifetime",
        "120",
        "--audience",
        audience,
        "--key-file",
        str(key_file),
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    verified = verify(token, key_file, audience)
    assert verified.fhir_user == verified.subject == "Practitioner/vtp-practitioner"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120
    assert claims["aud"] == audience
    with pytest.raises(NotAuthorized):
        verify(token, key_file)  # not for the default audience


def test_token_defaults_to_the_local_key_and_base(tmp_path: Path) -> None:
    result = run("token", "--scope", "system/*.rs")
    assert result.exit_code == 0, result.output
    verified = verify(result.stdout.strip(), tmp_path / "careplan-dev-key.json")
    assert verified.client_id == verified.subject == "careplan-fhir-cli"


def test_token_reads_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAREPLAN_BASE_URL", "https://ehr.example.org/fhir")
    monkeypatch.setenv("CAREPLAN_AUTH_SIGNING_KEY_FILE", str(tmp_path / "env-key.json"))
    result = run("token", "--scope", "system/*.rs")
    assert result.exit_code == 0, result.output
    verify(result.stdout.strip(), tmp_path / "env-key.json", "https://ehr.example.org/fhir")


def test_token_signed_by_another_key_does_not_verify(tmp_path: Path) -> None:
    result = run("token", "--scope", "system/*.rs", "--key-file", str(tmp_path / "a.json"))
    with pytest.raises(NotAuthorized):
        verify(result.stdout.strip(), tmp_path / "b.json")


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--scope", "patient/*.rs"], "--patient"),
        (["--scope", "system/Task.dus"], "not SMART scopes"),
        (["--scope", "openid"], "no resource scope"),
        (["--scope", "user/*.rs", "--fhir-user", "vtp-practitioner"], "Practitioner/123"),
        (["--scope", "system/*.rs", "--lifetime", "0"], "--lifetime"),
    ],
)
def test_token_refuses_what_cannot_work(tmp_path: Path, args: list[str], complaint: str) -> None:
    result = run("token", *args, "--key-file", str(tmp_path / "k.json"))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert complaint in result.stderr


# -- careplan-fhir serve -------------------------------------------------------------------


@pytest.fixture
def no_uvicorn(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append(kwargs))
    return calls


def _serve(tmp_path: Path, *extra: str) -> Any:
    database = f"sqlite:///{tmp_path / 'serve.db'}"
    return run("serve", "--no-migrate", "--database-url", database, "--port", "8099", *extra)


def test_serve_creates_the_key_and_prints_three_working_tokens(
    tmp_path: Path, no_uvicorn: list[dict[str, Any]]
) -> None:
    result = _serve(tmp_path)
    assert result.exit_code == 0, result.output
    assert no_uvicorn, "uvicorn was not started"
    key_file = tmp_path / "careplan-dev-key.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    examples = re.findall(r"curl -s -H 'Authorization: Bearer ([\w.-]+)' '(\S+)'", result.stdout)
    assert len(examples) == 3, result.stdout
    base = "http://127.0.0.1:8099/fhir"
    assert all(url.startswith(f"{base}/") for _, url in examples)
    patient, clinician, system = (verify(token, key_file, base) for token, _ in examples)
    assert (patient.patient, str(patient.scopes)) == (
        "vtp-patient",
        "patient/*.rs patient/Task.u patient/QuestionnaireResponse.c patient/Observation.c",
    )
    assert clinician.fhir_user == "Practitioner/vtp-practitioner"
    assert str(clinician.scopes) == "user/*.cruds"
    assert str(system.scopes) == "system/*.cruds"
    assert (patient.expires_at - datetime.now(UTC)) > timedelta(hours=11, minutes=59)
    assert (patient.expires_at - datetime.now(UTC)) <= timedelta(hours=12)

    # A second start reuses the key: the first run's tokens still verify.
    again = _serve(tmp_path)
    assert again.exit_code == 0, again.output
    verify(examples[0][0], key_file, base)


def test_serve_prints_no_tokens_for_a_deployment_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_uvicorn: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("CAREPLAN_AUTH_SIGNING_KEY_FILE", str(tmp_path / "production.json"))
    result = _serve(tmp_path)
    assert result.exit_code == 0, result.output
    assert "Bearer" not in result.stdout
    assert (tmp_path / "production.json").exists()  # created before the workers start


def test_serve_prints_no_tokens_when_authorization_is_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_uvicorn: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("CAREPLAN_AUTH_ENABLED", "false")
    result = _serve(tmp_path)
    assert result.exit_code == 0, result.output
    assert "Bearer" not in result.stdout


def test_auth_off_warns_on_every_start(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from careplan_fhir.app import create_app

    settings = Settings(
        database_url=database_url,
        auth_enabled=False,
        auth_signing_key_file=str(tmp_path / "k.json"),
    )
    for _ in range(2):
        caplog.clear()
        with caplog.at_level("WARNING", logger="careplan_fhir.app"):
            create_app(settings)
        warnings = [r for r in caplog.records if r.levelname == "WARNING"]
        assert any("AUTHORIZATION IS OFF" in r.getMessage() for r in warnings)
    caplog.clear()
    with caplog.at_level("WARNING", logger="careplan_fhir.app"):
        create_app(settings.model_copy(update={"auth_enabled": True}))
    assert not any("AUTHORIZATION IS OFF" in r.getMessage() for r in caplog.records)


# -- the key file --------------------------------------------------------------------------


def test_key_file_is_loaded_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "key.json"
    first = load_or_create_signing_key(path)
    content = path.read_bytes()
    second = load_or_create_signing_key(path)
    assert (first.kid, first.public_jwk()) == (second.kid, second.public_jwk())
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["key.json"]  # no temporary file left
    assert first.algorithm == "ES256"


def test_key_file_without_a_private_key_is_refused(tmp_path: Path) -> None:
    import json

    path = tmp_path / "key.json"
    path.write_text(json.dumps(SigningKey.generate().public_jwk()))
    with pytest.raises(ValueError, match="no private key"):
        load_or_create_signing_key(path)


def test_kid_is_the_rfc_7638_thumbprint() -> None:
    # RFC 7638 §3.1's example key and its thumbprint.
    rfc_key = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
            "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
            "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
            "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(rfc_key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    key = SigningKey.generate()
    assert key.kid == jwk_thumbprint(key.public_jwk())


def test_minted_claims() -> None:
    key = SigningKey.generate()
    moment = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    token = mint_access_token(
        key,
        issuer="http://127.0.0.1:8080/auth",
        audience=["http://a/fhir", "http://b/fhir"],
        scope="patient/*.rs",
        subject="Patient/p",
        lifetime=timedelta(minutes=5),
        now=moment,
        patient="p",
        encounter="e",
        fhir_user="Patient/p",
        client_id="c",
    )
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": key.kid, "typ": "JWT"}
    claims = jwt.decode(token, options={"verify_signature": False})
    start = int(moment.timestamp())
    assert claims == {
        "iss": "http://127.0.0.1:8080/auth",
        "sub": "Patient/p",
        "aud": ["http://a/fhir", "http://b/fhir"],
        "scope": "patient/*.rs",
        "jti": claims["jti"],
        "iat": start,
        "nbf": start,
        "exp": start + 300,
        "patient": "p",
        "encounter": "e",
        "fhirUser": "Patient/p",
        "client_id": "c",
    }
    other = mint_access_token(
        key,
        issuer="i",
        audience="a",
        scope="s",
        subject="x",
        lifetime=timedelta(minutes=5),
        now=moment,
    )
    assert jwt.decode(other, options={"verify_signature": False})["jti"] != claims["jti"]
