"""The SMART Backend Services token endpoint and token introspection, through HTTP.

https://hl7.org/fhir/smart-app-launch/backend-services.html (token request and response),
RFC 7523 §3 (the client assertion's claims), RFC 6749 §5.2 (error responses), RFC 7662
(introspection). A registered client with an EC (ES384) and an RSA (RS384) key gets a token;
every way an assertion can be wrong, stale, replayed or forged is refused as ``invalid_client``.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from careplan_fhir.app import create_app
from careplan_fhir.auth.clients import load_clients, parse_client
from careplan_fhir.auth.keys import load_or_create_signing_key, mint_access_token
from careplan_fhir.settings import Settings

BASE = "http://testserver/fhir"
TOKEN_URL = "http://testserver/auth/token"
CLIENT_ID = "ehr-sync"
REGISTERED_SCOPE = "system/*.rs system/Task.u"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@dataclass
class ClientKey:
    """A private key of a client, the ``kid`` it is registered under, and its algorithm."""

    private: Any
    kid: str
    algorithm: str

    def public_jwk(self) -> dict[str, Any]:
        converter = ECAlgorithm if self.algorithm.startswith("ES") else RSAAlgorithm
        jwk = converter.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


@pytest.fixture(scope="module")
def ec_key() -> ClientKey:
    return ClientKey(ec.generate_private_key(ec.SECP384R1()), "ec-1", "ES384")


@pytest.fixture(scope="module")
def rsa_key() -> ClientKey:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ClientKey(private, "rsa-1", "RS384")


@pytest.fixture(scope="module")
def stranger_key() -> ClientKey:
    """A key nobody registered, under the same kid as the client's EC key."""
    return ClientKey(ec.generate_private_key(ec.SECP384R1()), "ec-1", "ES384")


@pytest.fixture
def auth_settings(
    database_url: str, tmp_path: Path, ec_key: ClientKey, rsa_key: ClientKey
) -> Settings:
    clients = tmp_path / "clients.json"
    clients.write_text(
        json.dumps(
            [
                {
                    "client_id": CLIENT_ID,
                    "scope": REGISTERED_SCOPE,
                    "jwks": {"keys": [ec_key.public_jwk(), rsa_key.public_jwk()]},
                },
                {
                    "client_id": "reader",
                    "scope": "system/CarePlan.rs",
                    "jwks": {"keys": [ec_key.public_jwk()]},
                },
            ]
        )
    )
    return Settings(
        database_url=database_url,
        base_url=BASE,
        auth_signing_key_file=str(tmp_path / "key.json"),
        auth_clients_file=str(clients),
        access_token_seconds=300,
    )


@pytest.fixture
def http(auth_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(auth_settings)) as test_client:
        yield test_client


def now() -> datetime:
    return datetime.now(UTC)


def assertion(
    key: ClientKey,
    *,
    client_id: str = CLIENT_ID,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A client assertion per SMART Backend Services; ``claims`` override the good defaults."""
    body: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": int((now() + timedelta(minutes=4)).timestamp()),
        "jti": str(uuid.uuid4()),
    }
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(
        body, key.private, algorithm=key.algorithm, headers={"kid": key.kid, **(headers or {})}
    )


def token_form(signed: str, scope: str = "system/*.rs", **fields: str | None) -> dict[str, str]:
    form: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": signed,
        "scope": scope,
    }
    form.update(fields)
    return {name: value for name, value in form.items() if value is not None}


def request_token(http: TestClient, form: dict[str, str]) -> Any:
    return http.post("/auth/token", data=form)


def assert_oauth_error(response: Any, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == error, body
    assert "resourceType" not in body  # OAuth, not FHIR
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")


# -- tokens granted --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ec", "rsa"])
def test_registered_client_gets_a_working_token(
    http: TestClient,
    auth_settings: Settings,
    ec_key: ClientKey,
    rsa_key: ClientKey,
    which: str,
) -> None:
    key = ec_key if which == "ec" else rsa_key
    response = request_token(http, token_form(assertion(key), "system/*.rs"))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/*.rs"

    # Signed by the key published at /.well-known/jwks.json, for the FHIR base.
    jwks = http.get("/.well-known/jwks.json").json()
    header = jwt.get_unverified_header(body["access_token"])
    (public,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    claims = jwt.decode(
        body["access_token"],
        jwt.PyJWK(public).key,
        algorithms=["ES256"],
        audience=BASE,
        issuer=auth_settings.auth_issuer,
    )
    assert (claims["sub"], claims["client_id"]) == (CLIENT_ID, CLIENT_ID)
    assert claims["exp"] - claims["iat"] == 300
    assert claims["jti"]

    # The FHIR API accepts it...
    searched = http.get(
        "/fhir/CarePlan", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert searched.status_code == 200, searched.text

    # ...and so does introspection.
    described = http.post(
        "/auth/introspect",
        data={"token": body["access_token"]},
        headers={"Authorization": f"Bearer {body['access_token']}"},
    )
    assert described.status_code == 200, described.text
    assert described.headers["cache-control"] == "no-store"
    answer = described.json()
    assert answer["active"] is True
    assert answer["scope"] == "system/*.rs"
    assert (answer["client_id"], answer["sub"]) == (CLIENT_ID, CLIENT_ID)
    assert answer["iss"] == auth_settings.auth_issuer
    assert answer["aud"] == BASE
    assert (answer["exp"], answer["iat"]) == (claims["exp"], claims["iat"])
    assert answer["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("requested", "granted"),
    [
        # Narrowed to the registration: *.cruds becomes what *.rs and Task.u allow.
        ("system/*.cruds", "system/*.rs system/Task.u"),
        ("system/Task.cruds", "system/Task.rus"),
        ("system/Observation.read", "system/Observation.rs"),
        # Non-system scopes and context scopes are dropped, not granted.
        ("patient/*.rs system/Goal.r openid", "system/Goal.r"),
    ],
)
def test_granted_scope_is_requested_within_registered(
    http: TestClient, ec_key: ClientKey, requested: str, granted: str
) -> None:
    response = request_token(http, token_form(assertion(ec_key), requested))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == granted
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["scope"] == granted


# -- refusals ----------------------------------------------------------------------------


def test_wrong_audience(http: TestClient, ec_key: ClientKey) -> None:
    for audience in (BASE, "http://other.example/auth/token", "http://testserver/auth/token/"):
        response = request_token(http, token_form(assertion(ec_key, aud=audience)))
        assert_oauth_error(response, 401, "invalid_client")


def test_audience_follows_the_configured_base_not_the_host(
    http: TestClient, ec_key: ClientKey
) -> None:
    # An assertion made for another server, replayed here under that server's host name.
    other = "http://other.example/auth/token"
    response = http.post(
        "/auth/token",
        data=token_form(assertion(ec_key, aud=other)),
        headers={"Host": "other.example"},
    )
    assert_oauth_error(response, 401, "invalid_client")


def test_expired_assertion(http: TestClient, ec_key: ClientKey) -> None:
    stale = int((now() - timedelta(minutes=2)).timestamp())
    response = request_token(http, token_form(assertion(ec_key, exp=stale)))
    assert_oauth_error(response, 401, "invalid_client")
    assert "expired" in response.json()["error_description"]


def test_assertion_living_more_than_five_minutes(http: TestClient, ec_key: ClientKey) -> None:
    far = int((now() + timedelta(minutes=10)).timestamp())
    response = request_token(http, token_form(assertion(ec_key, exp=far)))
    assert_oauth_error(response, 401, "invalid_client")


def test_assertion_not_valid_yet(http: TestClient, ec_key: ClientKey) -> None:
    later = int((now() + timedelta(minutes=3)).timestamp())
    response = request_token(http, token_form(assertion(ec_key, nbf=later)))
    assert_oauth_error(response, 401, "invalid_client")


def test_replayed_jti(http: TestClient, ec_key: ClientKey) -> None:
    jti = str(uuid.uuid4())
    first = request_token(http, token_form(assertion(ec_key, jti=jti)))
    assert first.status_code == 200, first.text
    # The same assertion again, and a fresh assertion reusing the jti: both refused.
    again = request_token(http, token_form(assertion(ec_key, jti=jti)))
    assert_oauth_error(again, 401, "invalid_client")
    assert "jti" in again.json()["error_description"]


def test_a_refused_assertion_does_not_spend_its_jti(http: TestClient, ec_key: ClientKey) -> None:
    jti = str(uuid.uuid4())
    wrong = request_token(http, token_form(assertion(ec_key, jti=jti, aud=BASE)))
    assert_oauth_error(wrong, 401, "invalid_client")
    right = request_token(http, token_form(assertion(ec_key, jti=jti)))
    assert right.status_code == 200, right.text


def test_unknown_client(http: TestClient, ec_key: ClientKey) -> None:
    response = request_token(http, token_form(assertion(ec_key, client_id="nobody")))
    assert_oauth_error(response, 401, "invalid_client")


def test_issuer_and_subject_differ(http: TestClient, ec_key: ClientKey) -> None:
    response = request_token(http, token_form(assertion(ec_key, sub="someone-else")))
    assert_oauth_error(response, 401, "invalid_client")


def test_client_id_parameter_differs_from_the_assertion(
    http: TestClient, ec_key: ClientKey
) -> None:
    response = request_token(http, token_form(assertion(ec_key), client_id="reader"))
    assert_oauth_error(response, 401, "invalid_client")


def test_bad_signature(http: TestClient, ec_key: ClientKey) -> None:
    header, payload, signature = assertion(ec_key).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = claims["iss"] = "reader"  # try to become another client
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = request_token(http, token_form(f"{header}.{forged}.{signature}"))
    assert_oauth_error(response, 401, "invalid_client")


def test_assertion_signed_by_another_key(http: TestClient, stranger_key: ClientKey) -> None:
    response = request_token(http, token_form(assertion(stranger_key)))
    assert_oauth_error(response, 401, "invalid_client")


def test_assertion_with_an_unregistered_kid(http: TestClient, ec_key: ClientKey) -> None:
    renamed = ClientKey(ec_key.private, "not-registered", "ES384")
    response = request_token(http, token_form(assertion(renamed)))
    assert_oauth_error(response, 401, "invalid_client")


def test_assertion_without_kid(http: TestClient, ec_key: ClientKey) -> None:
    body = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": TOKEN_URL,
        "exp": int((now() + timedelta(minutes=4)).timestamp()),
        "jti": str(uuid.uuid4()),
    }
    signed = jwt.encode(body, ec_key.private, algorithm="ES384")
    response = request_token(http, token_form(signed))
    assert_oauth_error(response, 401, "invalid_client")


def test_assertion_with_a_foreign_jku(http: TestClient, ec_key: ClientKey) -> None:
    # Keys are only ever looked up where the client registered them.
    signed = assertion(ec_key, headers={"jku": "https://attacker.example/jwks.json"})
    response = request_token(http, token_form(signed))
    assert_oauth_error(response, 401, "invalid_client")


def test_hmac_and_unsigned_assertions(http: TestClient, ec_key: ClientKey) -> None:
    public_pem = ec_key.public_jwk()["x"]  # anything public as an HMAC secret
    claims = {
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "aud": TOKEN_URL,
        "exp": int((now() + timedelta(minutes=4)).timestamp()),
        "jti": str(uuid.uuid4()),
    }
    hmac = jwt.encode(claims, public_pem, algorithm="HS256", headers={"kid": "ec-1"})
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "ec-1"})
    for signed in (hmac, unsigned, "not-a-jwt"):
        response = request_token(http, token_form(signed))
        assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize(
    "missing", ["iss", "sub", "exp", "jti", "aud"], ids=lambda name: f"no-{name}"
)
def test_assertion_missing_a_claim(http: TestClient, ec_key: ClientKey, missing: str) -> None:
    response = request_token(http, token_form(assertion(ec_key, **{missing: None})))
    assert_oauth_error(response, 401, "invalid_client")


@pytest.mark.parametrize(
    "scope",
    [
        "system/Observation.c",  # registered for *.rs and Task.u only
        "system/Task.d",
        "patient/*.rs",  # not a system scope
        "openid",
        "system/Task.dus",  # malformed (out of order)
        "system/*.rs bogus",  # one malformed scope spoils the request
    ],
)
def test_scope_not_registered_or_malformed(http: TestClient, ec_key: ClientKey, scope: str) -> None:
    response = request_token(http, token_form(assertion(ec_key), scope))
    assert_oauth_error(response, 400, "invalid_scope")


def test_another_client_gets_only_its_own_registration(http: TestClient, ec_key: ClientKey) -> None:
    signed = assertion(ec_key, client_id="reader")
    response = request_token(http, token_form(signed, "system/*.cruds"))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/CarePlan.rs"


@pytest.mark.parametrize("grant_type", ["authorization_code", "password", "refresh_token"])
def test_wrong_grant_type(http: TestClient, ec_key: ClientKey, grant_type: str) -> None:
    response = request_token(http, token_form(assertion(ec_key), grant_type=grant_type))
    assert_oauth_error(response, 400, "unsupported_grant_type")


@pytest.mark.parametrize(
    "missing", ["grant_type", "client_assertion_type", "client_assertion", "scope"]
)
def test_missing_fields(http: TestClient, ec_key: ClientKey, missing: str) -> None:
    response = request_token(http, token_form(assertion(ec_key), **{missing: None}))
    assert_oauth_error(response, 400, "invalid_request")
    assert missing in response.json()["error_description"]


def test_other_assertion_type(http: TestClient, ec_key: ClientKey) -> None:
    form = token_form(
        assertion(ec_key),
        client_assertion_type="urn:ietf:params:oauth:client-assertion-type:saml2-bearer",
    )
    assert_oauth_error(request_token(http, form), 400, "invalid_request")


def test_repeated_parameter(http: TestClient, ec_key: ClientKey) -> None:
    body = "&".join(f"{k}={v}" for k, v in token_form(assertion(ec_key)).items())
    response = http.post(
        "/auth/token",
        content=body + "&scope=system/Task.u",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_oauth_error(response, 400, "invalid_request")


def test_json_body_is_refused(http: TestClient, ec_key: ClientKey) -> None:
    response = http.post("/auth/token", json=token_form(assertion(ec_key)))
    assert_oauth_error(response, 400, "invalid_request")


def test_body_size_limit(auth_settings: Settings, ec_key: ClientKey) -> None:
    small = auth_settings.model_copy(update={"max_body_bytes": 512})
    with TestClient(create_app(small)) as http:
        response = http.post("/auth/token", data=token_form(assertion(ec_key), "x" * 1024))
    assert_oauth_error(response, 413, "invalid_request")


def test_token_endpoint_answers_only_post(http: TestClient) -> None:
    assert http.get("/auth/token").status_code == 405


# -- introspection -----------------------------------------------------------------------


@pytest.fixture
def server_token(auth_settings: Settings) -> str:
    key = load_or_create_signing_key(Path(auth_settings.auth_signing_key_file))
    return mint_access_token(
        key,
        issuer=auth_settings.auth_issuer,
        audience=BASE,
        scope="patient/*.rs",
        subject="Patient/p1",
        patient="p1",
        fhir_user="Patient/p1",
        lifetime=timedelta(minutes=10),
        now=now(),
    )


def introspect(http: TestClient, token: str, caller: str | None) -> Any:
    headers = {"Authorization": f"Bearer {caller}"} if caller else {}
    return http.post("/auth/introspect", data={"token": token}, headers=headers)


def test_introspection_describes_launch_context(http: TestClient, server_token: str) -> None:
    answer = introspect(http, server_token, server_token).json()
    assert answer["active"] is True
    assert (answer["patient"], answer["fhirUser"], answer["sub"]) == (
        "p1",
        "Patient/p1",
        "Patient/p1",
    )
    assert answer["scope"] == "patient/*.rs"


@pytest.mark.parametrize("caller", [None, "garbage", "expired", "foreign"])
def test_introspection_needs_a_valid_bearer_token(
    http: TestClient, auth_settings: Settings, server_token: str, caller: str | None
) -> None:
    tokens = {
        "garbage": "not.a.token",
        "expired": _server_token(auth_settings, issued=now() - timedelta(hours=2)),
        "foreign": _foreign_token(auth_settings),
    }
    response = introspect(http, server_token, tokens.get(caller or ""))
    assert_oauth_error(response, 401, "invalid_token")


def _server_token(settings: Settings, *, issued: datetime, audience: str = BASE) -> str:
    key = load_or_create_signing_key(Path(settings.auth_signing_key_file))
    return mint_access_token(
        key,
        issuer=settings.auth_issuer,
        audience=audience,
        scope="system/*.rs",
        subject="s",
        lifetime=timedelta(minutes=5),
        now=issued,
    )


def _foreign_token(settings: Settings) -> str:
    """Our issuer's claims, signed by a key that is not ours."""
    stranger = ec.generate_private_key(ec.SECP256R1())
    claims = {
        "iss": settings.auth_issuer,
        "aud": BASE,
        "sub": "s",
        "scope": "system/*.rs",
        "exp": int((now() + timedelta(minutes=5)).timestamp()),
    }
    key = load_or_create_signing_key(Path(settings.auth_signing_key_file))
    return jwt.encode(claims, stranger, algorithm="ES256", headers={"kid": key.kid})


@pytest.mark.parametrize("kind", ["garbage", "expired", "foreign", "other-audience"])
def test_introspection_of_an_invalid_token_is_inactive(
    http: TestClient, auth_settings: Settings, server_token: str, kind: str
) -> None:
    token = {
        "garbage": "not.a.token",
        "expired": _server_token(auth_settings, issued=now() - timedelta(hours=2)),
        "foreign": _foreign_token(auth_settings),
        "other-audience": _server_token(
            auth_settings, issued=now(), audience="http://other.example/fhir"
        ),
    }[kind]
    response = introspect(http, token, server_token)
    assert response.status_code == 200, response.text
    assert response.json() == {"active": False}


def test_introspection_needs_the_token_parameter(http: TestClient, server_token: str) -> None:
    response = http.post(
        "/auth/introspect", data={}, headers={"Authorization": f"Bearer {server_token}"}
    )
    assert_oauth_error(response, 400, "invalid_request")


# -- the clients file --------------------------------------------------------------------


def test_clients_file_with_jwks_uri(ec_key: ClientKey, tmp_path: Path) -> None:
    fetched: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return {"keys": [ec_key.public_jwk()]}

    path = tmp_path / "clients.json"
    path.write_text(
        json.dumps(
            [{"client_id": "c", "scope": "system/*.rs", "jwks_uri": "https://c.example/jwks"}]
        )
    )
    client = load_clients(path, fetch=fetch)["c"]
    assert client.key_for("ec-1", "ES384") is not None
    assert client.key_for("ec-2", "ES384") is None
    assert fetched[0] == "https://c.example/jwks"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"client_id": "c", "scope": "system/*.rs"}, "exactly one of jwks and jwks_uri"),
        (
            {"client_id": "c", "scope": "system/*.rs", "jwks": {"keys": []}, "jwks_uri": "x"},
            "exactly one",
        ),
        ({"client_id": "c", "scope": "patient/*.rs", "jwks": {"keys": []}}, "system/"),
        ({"client_id": "c", "scope": "system/*.rs openid", "jwks": {"keys": []}}, "openid"),
        ({"client_id": "", "scope": "system/*.rs", "jwks": {"keys": []}}, "client_id"),
        ({"client_id": "c", "scope": "system/*.rs", "jwks_uri": "ftp://x"}, "http(s)"),
        ({"client_id": "c", "scope": "system/*.rs", "jwks": {}, "secret": "s"}, "unknown"),
    ],
)
def test_clients_file_errors(entry: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        parse_client(entry)


def test_clients_registered_twice(tmp_path: Path) -> None:
    entry = {"client_id": "c", "scope": "system/*.rs", "jwks": {"keys": []}}
    path = tmp_path / "clients.json"
    path.write_text(json.dumps([entry, entry]))
    with pytest.raises(ValueError, match="twice"):
        load_clients(path)


def test_the_audit_trail_names_the_client_that_got_a_token(
    http: TestClient, ec_key: ClientKey
) -> None:
    response = request_token(http, token_form(assertion(ec_key), "system/*.rs"))
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    http.app.state.audit_sink.flush()  # type: ignore[attr-defined]
    found = http.get(
        "/fhir/AuditEvent",
        params={"type": "110114"},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    (event,) = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "match"]
    assert event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["value"] == CLIENT_ID
    assert token not in json.dumps(event)
