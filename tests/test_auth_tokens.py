"""Bearer JWT verification: every way a token can be forged, stretched or mangled is refused.

Keys are generated here with cryptography and tokens signed with PyJWT (or by hand, for the
forgeries PyJWT will not produce). The clock is injected everywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from careplan_fhir.auth import tokens
from careplan_fhir.auth.scopes import Scope
from careplan_fhir.auth.tokens import (
    AccessToken,
    FileJwks,
    Issuer,
    StaticJwks,
    TokenVerifier,
    UrlJwks,
)
from careplan_fhir.errors import NotAuthorized

ISS = "https://auth.example.org"
OTHER_ISS = "https://other-auth.example.org"
AUD = "https://fhir.example.org/fhir"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
T0 = int(NOW.timestamp())

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa2: rsa.RSAPrivateKey
    p256: ec.EllipticCurvePrivateKey
    p384: ec.EllipticCurvePrivateKey
    attacker: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        rsa=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa2=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        p256=ec.generate_private_key(ec.SECP256R1()),
        p384=ec.generate_private_key(ec.SECP384R1()),
        attacker=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def jwk_of(key: PrivateKey, kid: str | None, **members: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    jwk.update(members)
    return jwk


def jwks_of(keys: Keys) -> dict[str, Any]:
    return {
        "keys": [
            jwk_of(keys.rsa, "rsa-1"),
            jwk_of(keys.p256, "ec-256"),
            jwk_of(keys.p384, "ec-384"),
            jwk_of(keys.rsa2, "rsa-rs256-only", alg="RS256"),
            jwk_of(keys.rsa2, "rsa-enc", use="enc"),
        ]
    }


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims of a good token; an override of None removes the claim."""
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "user-1",
        "iat": T0,
        "exp": T0 + 300,
        "jti": "token-1",
        "client_id": "portal-app",
        "scope": "launch/patient patient/*.rs openid",
        "patient": "p1",
        "encounter": "e1",
        "fhirUser": "Patient/p1",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def sign(
    payload: dict[str, Any], key: PrivateKey, algorithm: str = "RS256", kid: str | None = "rsa-1"
) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], payload: Any, signer: Callable[[bytes], bytes] | None = None
) -> str:
    """A compact JWS built without PyJWT (for forgeries PyJWT refuses to produce)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = signer(signing_input.encode()) if signer else b""
    return f"{signing_input}.{b64(signature)}"


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Clock:
    def __init__(self, moment: datetime = NOW) -> None:
        self.moment = moment

    def __call__(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(keys: Keys, clock: Clock) -> TokenVerifier:
    return TokenVerifier(
        [
            Issuer(ISS, StaticJwks(jwks_of(keys))),
            Issuer(OTHER_ISS, StaticJwks({"keys": [jwk_of(keys.rsa2, "other-1")]})),
        ],
        now=clock,
    )


def refusal(verifier: TokenVerifier, token: str, audiences: Any = (AUD,)) -> str:
    with pytest.raises(NotAuthorized) as caught:
        verifier.verify(token, audiences=audiences)
    message = caught.value.message
    # Useful messages, never the token or a piece of it.
    assert message
    assert not token.strip() or token not in message
    for segment in token.split("."):
        if len(segment) > 8:
            assert segment not in message
    return message


# -- tokens that verify ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "key_name", "kid"),
    [
        ("RS256", "rsa", "rsa-1"),
        ("RS384", "rsa", "rsa-1"),
        ("ES256", "p256", "ec-256"),
        ("ES384", "p384", "ec-384"),
    ],
)
def test_accepted_algorithms(
    verifier: TokenVerifier, keys: Keys, algorithm: str, key_name: str, kid: str
) -> None:
    token = sign(claims(), getattr(keys, key_name), algorithm, kid)
    access = verifier.verify(token, audiences=[AUD])
    assert access == AccessToken(
        issuer=ISS,
        subject="user-1",
        audience=(AUD,),
        scopes=access.scopes,
        patient="p1",
        encounter="e1",
        fhir_user="Patient/p1",
        client_id="portal-app",
        expires_at=NOW + timedelta(seconds=300),
        token_id="token-1",
        claims=claims(),
    )
    assert access.scopes.scopes == (Scope("patient", "*", frozenset("rs")),)
    assert access.scopes.other == ("launch/patient", "openid")
    assert access.scopes.allows("Observation", "r", contexts={"patient"})


def test_second_issuer_and_its_own_keys(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(claims(iss=OTHER_ISS), keys.rsa2, kid="other-1")
    assert verifier.verify(token, audiences=[AUD]).issuer == OTHER_ISS
    # The first issuer's key does not sign for the second issuer.
    forged = sign(claims(iss=OTHER_ISS), keys.rsa, kid="other-1")
    assert "signature" in refusal(verifier, forged)


def test_claim_variants(verifier: TokenVerifier, keys: Keys) -> None:
    token = sign(
        claims(
            aud=["https://elsewhere.example.org", AUD],
            scope=None,
            scp=["system/Observation.rs", "system/Patient.read"],
            client_id=None,
            azp="ehr-backend",
            fhirUser="https://ehr.example.org/fhir/Practitioner/123",
            patient=None,
            encounter=None,
            sub=None,
            jti=None,
        ),
        keys.rsa,
    )
    access = verifier.verify(token, audiences=["https://not-this.example.org", AUD])
    assert access.audience == ("https://elsewhere.example.org", AUD)
    assert str(access.scopes) == "system/Observation.rs system/Patient.rs"
    assert access.client_id == "ehr-backend"
    assert access.fhir_user == "https://ehr.example.org/fhir/Practitioner/123"
    assert access.patient is access.encounter is access.subject is access.token_id is None


def test_no_scope_claim_is_no_scopes(verifier: TokenVerifier, keys: Keys) -> None:
    access = verifier.verify(sign(claims(scope=None), keys.rsa), audiences=[AUD])
    assert access.scopes.scopes == () and access.scopes.other == ()
    assert not access.scopes.allows("Patient", "r")


def test_audiences_as_one_string(verifier: TokenVerifier, keys: Keys) -> None:
    assert verifier.verify(sign(claims(), keys.rsa), audiences=AUD).audience == (AUD,)
    with pytest.raises(ValueError, match="audience"):
        verifier.verify(sign(claims(), keys.rsa), audiences=[])


def test_leeway_allows_small_clock_skew(verifier: TokenVerifier, keys: Keys) -> None:
    for overrides in ({"exp": T0 - 29}, {"nbf": T0 + 29}, {"iat": T0 + 29}):
        verifier.verify(sign(claims(**overrides), keys.rsa), audiences=[AUD])


def test_hand_made_tokens_are_real_jws(verifier: TokenVerifier, keys: Keys) -> None:
    """The forgeries below are refused for what they are, not because hand_made is broken."""
    token = hand_made(
        {"alg": "RS256", "typ": "JWT", "kid": "rsa-1"},
        claims(),
        lambda data: keys.rsa.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    assert verifier.verify(token, audiences=[AUD]).patient == "p1"


def test_no_kid_with_a_single_fitting_key(keys: Keys, clock: Clock) -> None:
    lone = TokenVerifier([Issuer(ISS, StaticJwks({"keys": [jwk_of(keys.p256, None)]}))], now=clock)
    assert lone.verify(sign(claims(), keys.p256, "ES256", kid=None), audiences=[AUD])


def test_private_keys_in_a_jwks_only_verify(keys: Keys, clock: Clock) -> None:
    private = RSAAlgorithm.to_jwk(keys.rsa, as_dict=True) | {"kid": "rsa-1"}
    assert "d" in private
    verifier = TokenVerifier([Issuer(ISS, StaticJwks({"keys": [private]}))], now=clock)
    assert verifier.verify(sign(claims(), keys.rsa), audiences=[AUD]).subject == "user-1"


def test_naive_now_is_utc(keys: Keys) -> None:
    naive = TokenVerifier(
        [Issuer(ISS, StaticJwks(jwks_of(keys)))], now=lambda: NOW.replace(tzinfo=None)
    )
    naive.verify(sign(claims(exp=T0 + 60), keys.rsa), audiences=[AUD])
    with pytest.raises(NotAuthorized, match="expired"):
        naive.verify(sign(claims(exp=T0 - 60), keys.rsa), audiences=[AUD])


def test_duplicate_issuer_is_a_configuration_error(keys: Keys, clock: Clock) -> None:
    source = StaticJwks(jwks_of(keys))
    with pytest.raises(ValueError, match="twice"):
        TokenVerifier([Issuer(ISS, source), Issuer(ISS, source)], now=clock)


# -- refusals ----------------------------------------------------------------------------------


def _tampered(keys: Keys) -> str:
    header, _, signature = sign(claims(), keys.rsa).split(".")
    payload = b64(json.dumps(claims(patient="p2")).encode())
    return f"{header}.{payload}.{signature}"


def _hmac_with_public_key(keys: Keys, algorithm: str = "HS256") -> str:
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}
    return hand_made(
        {"alg": algorithm, "typ": "JWT", "kid": "rsa-1"},
        claims(),
        lambda data: hmac.new(public_pem(keys.rsa), data, digest[algorithm]).digest(),
    )


def _hmac_with_jwk_modulus(keys: Keys) -> str:
    secret = json.dumps(jwk_of(keys.rsa, "rsa-1")).encode()
    return hand_made(
        {"alg": "HS256", "kid": "rsa-1"},
        claims(),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )


def _short_rsa(keys: Keys) -> tuple[str, dict[str, Any]]:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    token = hand_made(
        {"alg": "RS256", "kid": "weak"},
        claims(),
        lambda data: weak.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    return token, jwk_of(weak, "weak")


REFUSALS: list[tuple[str, Callable[[Keys], str], str]] = [
    # algorithms
    ("alg none", lambda k: hand_made({"alg": "none", "typ": "JWT"}, claims()), "'none'"),
    ("alg None", lambda k: hand_made({"alg": "None"}, claims()), "not accepted"),
    ("alg missing", lambda k: hand_made({"typ": "JWT", "kid": "rsa-1"}, claims()), "not accepted"),
    ("alg none, signed", lambda k: hand_made({"alg": "none"}, claims(), lambda d: b"x"), "'none'"),
    ("HS256 with the public key", _hmac_with_public_key, "'HS256' is not accepted"),
    ("HS384 with the public key", lambda k: _hmac_with_public_key(k, "HS384"), "'HS384'"),
    ("HS512 with the public key", lambda k: _hmac_with_public_key(k, "HS512"), "'HS512'"),
    ("HS256 with the JWK as secret", _hmac_with_jwk_modulus, "'HS256'"),
    ("PS256", lambda k: sign(claims(), k.rsa, "PS256"), "'PS256' is not accepted"),
    ("RS512", lambda k: sign(claims(), k.rsa, "RS512"), "'RS512' is not accepted"),
    ("alg not a string", lambda k: hand_made({"alg": ["RS256"]}, claims()), "not accepted"),
    # signatures
    ("tampered payload", _tampered, "signature does not verify"),
    ("signed by another key", lambda k: sign(claims(), k.attacker), "signature does not verify"),
    (
        "signature of another token",
        lambda k: ".".join(
            sign(claims(), k.rsa).split(".")[:2] + sign(claims(sub="x"), k.rsa).split(".")[2:]
        ),
        "signature does not verify",
    ),
    (
        "signature stripped",
        lambda k: sign(claims(), k.rsa).rsplit(".", 1)[0] + ".",
        "signature does not verify",
    ),
    (
        "key embedded in the header",
        lambda k: jwt.encode(
            claims(),
            k.attacker,
            algorithm="RS256",
            headers={"kid": "attacker", "jwk": jwk_of(k.attacker, "attacker")},
        ),
        "kid 'attacker'",
    ),
    (
        "trusted kid, attacker's embedded key",
        lambda k: jwt.encode(
            claims(),
            k.attacker,
            algorithm="RS256",
            headers={"kid": "rsa-1", "jwk": jwk_of(k.attacker, "rsa-1")},
        ),
        "signature does not verify",
    ),
    (
        "jku header",
        lambda k: jwt.encode(
            claims(),
            k.attacker,
            algorithm="RS256",
            headers={"kid": "evil", "jku": "https://evil.example.org/jwks.json"},
        ),
        "kid 'evil'",
    ),
    # keys
    ("unknown kid", lambda k: sign(claims(), k.rsa, kid="rsa-9"), "no RS256 signing key"),
    ("no kid among several keys", lambda k: sign(claims(), k.rsa, kid=None), "no single RS256"),
    ("RSA alg, EC key", lambda k: sign(claims(), k.rsa, "RS256", kid="ec-256"), "kid 'ec-256'"),
    (
        "ES256 with the P-384 key's kid",
        lambda k: sign(claims(), k.p256, "ES256", kid="ec-384"),
        "no ES256 signing key",
    ),
    ("EC alg, RSA key", lambda k: sign(claims(), k.p256, "ES256", kid="rsa-1"), "kid 'rsa-1'"),
    (
        "key declares another alg",
        lambda k: sign(claims(), k.rsa2, "RS384", kid="rsa-rs256-only"),
        "no RS384 signing key",
    ),
    ("encryption key", lambda k: sign(claims(), k.rsa2, kid="rsa-enc"), "kid 'rsa-enc'"),
    # time
    ("expired", lambda k: sign(claims(exp=T0 - 31), k.rsa), "expired"),
    ("long expired", lambda k: sign(claims(exp=T0 - 86400, iat=T0 - 90000), k.rsa), "expired"),
    ("no exp", lambda k: sign(claims(exp=None), k.rsa), "'exp'"),
    ("exp not a number", lambda k: hand_signed(k, claims(exp="tomorrow")), "'exp'"),
    ("exp a numeric string", lambda k: hand_signed(k, claims(exp=str(T0 + 300))), "'exp'"),
    ("exp true", lambda k: hand_signed(k, claims(exp=True)), "'exp'"),
    ("exp out of range", lambda k: hand_signed(k, claims(exp=1e300)), "'exp'"),
    ("not yet valid", lambda k: sign(claims(nbf=T0 + 31), k.rsa), "not valid yet"),
    ("nbf not a number", lambda k: hand_signed(k, claims(nbf="now")), "'nbf'"),
    ("issued in the future", lambda k: sign(claims(iat=T0 + 3600), k.rsa), "future"),
    # audience
    ("wrong aud", lambda k: sign(claims(aud="https://evil.example.org"), k.rsa), "(aud)"),
    ("no aud", lambda k: sign(claims(aud=None), k.rsa), "'aud'"),
    ("empty aud", lambda k: sign(claims(aud=[]), k.rsa), "'aud'"),
    ("aud a prefix of ours", lambda k: sign(claims(aud="https://fhir.example.org"), k.rsa), "aud"),
    ("aud not a string", lambda k: hand_signed(k, claims(aud=42)), "aud"),
    # issuer
    ("unknown iss", lambda k: sign(claims(iss="https://evil.example.org"), k.rsa), "not trusted"),
    ("no iss", lambda k: sign(claims(iss=None), k.rsa), "no issuer"),
    ("iss not a string", lambda k: hand_signed(k, claims(iss=["x"])), "no issuer"),
    # malformed
    ("empty", lambda k: "", "empty"),
    ("one word", lambda k: "not-a-jwt-at-all", "well-formed"),
    ("three dots", lambda k: "a.b.c", "well-formed"),
    ("two parts", lambda k: ".".join(sign(claims(), k.rsa).split(".")[:2]), "well-formed"),
    ("four parts", lambda k: sign(claims(), k.rsa) + ".AAAA", "well-formed"),
    (
        "header not JSON",
        lambda k: b64(b"{not json") + "." + sign(claims(), k.rsa).split(".", 1)[1],
        "well-formed",
    ),
    ("payload not an object", lambda k: hand_signed(k, ["iss", ISS]), "well-formed"),
    ("kid not a string", lambda k: hand_signed(k, claims(), kid=7), "well-formed"),
    ("crit unknown", lambda k: hand_signed(k, claims(), crit=["exp"]), "well-formed"),
    ("crit b64", lambda k: hand_signed(k, claims(), crit=["b64"], b64=True), "(crit)"),
    ("too long", lambda k: sign(claims(padding="x" * 20000), k.rsa), "too long"),
    # claims of the wrong type
    ("patient not a string", lambda k: sign(claims(patient=123), k.rsa), "'patient'"),
    ("fhirUser an object", lambda k: sign(claims(fhirUser={"r": 1}), k.rsa), "'fhirUser'"),
    ("scope a list", lambda k: sign(claims(scope=["patient/*.rs"]), k.rsa), "'scope'"),
    ("scp of numbers", lambda k: sign(claims(scope=None, scp=[1, 2]), k.rsa), "'scp'"),
    ("sub a number", lambda k: hand_signed(k, claims(sub=5)), "'sub'"),
    ("jti a number", lambda k: hand_signed(k, claims(jti=5)), "'jti'"),
    ("client_id a list", lambda k: sign(claims(client_id=["a"]), k.rsa), "'client_id'"),
    ("encounter empty", lambda k: sign(claims(encounter=""), k.rsa), "'encounter'"),
]


def hand_signed(keys: Keys, payload: Any, **header: Any) -> str:
    """A correctly RS256-signed token whose content PyJWT's encoder would not write."""
    return hand_made(
        {"alg": "RS256", "kid": "rsa-1", **header},
        payload,
        lambda data: keys.rsa.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )


@pytest.mark.parametrize(("name", "make", "expected"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(
    verifier: TokenVerifier, keys: Keys, name: str, make: Callable[[Keys], str], expected: str
) -> None:
    message = refusal(verifier, make(keys))
    assert any(part in message for part in expected.split("|")), message


def test_refusals_are_not_stray_exceptions(verifier: TokenVerifier) -> None:
    """Random garbage gives NotAuthorized, never another exception."""
    for garbage in ("....", "e30.e30.", "e30.e30.e30", "\x00.\x00.\x00", "é.é.é", " ", "Bearer x"):
        refusal(verifier, garbage)


def test_weak_rsa_key_is_refused(keys: Keys, clock: Clock) -> None:
    token, jwk = _short_rsa(keys)
    verifier = TokenVerifier([Issuer(ISS, StaticJwks({"keys": [jwk]}))], now=clock)
    assert "does not suit" in refusal(verifier, token)


def test_issuer_is_bound_to_its_keys(verifier: TokenVerifier, keys: Keys) -> None:
    # Signed by a key of ISS, but claiming OTHER_ISS: the other issuer has no such kid.
    message = refusal(verifier, sign(claims(iss=OTHER_ISS), keys.rsa, kid="rsa-1"))
    assert "kid 'rsa-1'" in message


# -- the cache ---------------------------------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts full signature verifications."""
    calls: list[int] = []
    real = tokens.jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens.jwt, "decode", counting)
    return calls


def test_cache_hit_skips_verification(
    verifier: TokenVerifier, keys: Keys, decodes: list[int]
) -> None:
    token = sign(claims(), keys.rsa)
    first = verifier.verify(token, audiences=[AUD])
    second = verifier.verify(token, audiences=[AUD])
    assert second is first
    assert len(decodes) == 1
    # audiences are part of the key: the same token for another server is checked afresh
    refusal(verifier, token, audiences=["https://other-server.example.org"])
    assert len(decodes) == 2


def test_cached_token_still_expires(
    verifier: TokenVerifier, keys: Keys, clock: Clock, decodes: list[int]
) -> None:
    token = sign(claims(exp=T0 + 60), keys.rsa)
    verifier.verify(token, audiences=[AUD])
    clock.advance(60 + 29)  # within the leeway: still served from the cache
    verifier.verify(token, audiences=[AUD])
    assert len(decodes) == 1
    clock.advance(2)
    assert "expired" in refusal(verifier, token)
    assert len(decodes) == 1  # refused from the cache entry, then evicted
    clock.moment = NOW
    verifier.verify(token, audiences=[AUD])
    assert len(decodes) == 2


def test_cached_token_is_rechecked_for_nbf(
    verifier: TokenVerifier, keys: Keys, clock: Clock, decodes: list[int]
) -> None:
    token = sign(claims(nbf=T0 - 10), keys.rsa)
    verifier.verify(token, audiences=[AUD])
    clock.advance(-50)  # the clock is set back: nbf is now ahead of it beyond the leeway
    assert "not valid yet" in refusal(verifier, token)
    assert len(decodes) == 1


def test_failures_are_not_cached(verifier: TokenVerifier, keys: Keys, decodes: list[int]) -> None:
    forged = sign(claims(), keys.attacker)
    refusal(verifier, forged)
    refusal(verifier, forged)
    assert len(decodes) == 2


def test_cache_is_bounded_lru(keys: Keys, clock: Clock, decodes: list[int]) -> None:
    verifier = TokenVerifier([Issuer(ISS, StaticJwks(jwks_of(keys)))], now=clock, cache_size=2)
    one, two, three = (sign(claims(jti=f"t{i}"), keys.rsa) for i in range(3))
    for token in (one, two, one, three):  # "two" is the least recently used when "three" comes
        verifier.verify(token, audiences=[AUD])
    assert len(decodes) == 3
    verifier.verify(one, audiences=[AUD])
    verifier.verify(three, audiences=[AUD])
    assert len(decodes) == 3
    verifier.verify(two, audiences=[AUD])
    assert len(decodes) == 4


def test_cache_can_be_turned_off(keys: Keys, clock: Clock, decodes: list[int]) -> None:
    verifier = TokenVerifier([Issuer(ISS, StaticJwks(jwks_of(keys)))], now=clock, cache_size=0)
    token = sign(claims(), keys.rsa)
    verifier.verify(token, audiences=[AUD])
    verifier.verify(token, audiences=[AUD])
    assert len(decodes) == 2


def test_concurrent_verification(keys: Keys, clock: Clock) -> None:
    verifier = TokenVerifier([Issuer(ISS, StaticJwks(jwks_of(keys)))], now=clock, cache_size=8)
    tokens_ = [sign(claims(jti=f"t{i}"), keys.p256, "ES256", "ec-256") for i in range(20)]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                for token in tokens_:
                    assert verifier.verify(token, audiences=[AUD]).patient == "p1"
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


# -- key rotation: a JWKS file ----------------------------------------------------------------


def write_jwks(path: Path, *jwks: dict[str, Any]) -> None:
    """Replace the file atomically, as a key-rotation job would."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps({"keys": list(jwks)}))
    os.replace(scratch, path)


def test_file_jwks_rotation(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(keys.rsa, "2026-01"))
    verifier = TokenVerifier([Issuer(ISS, FileJwks(path))], now=clock)
    old = sign(claims(), keys.rsa, kid="2026-01")
    assert verifier.verify(old, audiences=[AUD])

    write_jwks(path, jwk_of(keys.rsa2, "2026-02"))
    new = sign(claims(), keys.rsa2, kid="2026-02")
    assert verifier.verify(new, audiences=[AUD])
    # the old key is gone: a fresh old-kid token fails, and so does the cached one
    assert "kid '2026-01'" in refusal(verifier, sign(claims(jti="t2"), keys.rsa, kid="2026-01"))
    assert "kid '2026-01'" in refusal(verifier, old)


def test_file_jwks_overlap(tmp_path: Path, keys: Keys, clock: Clock, decodes: list[int]) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(keys.rsa, "old"))
    verifier = TokenVerifier([Issuer(ISS, FileJwks(path))], now=clock)
    old = sign(claims(), keys.rsa, kid="old")
    verifier.verify(old, audiences=[AUD])
    verifier.verify(old, audiences=[AUD])
    assert len(decodes) == 1
    write_jwks(path, jwk_of(keys.rsa, "old"), jwk_of(keys.p256, "new"))
    assert verifier.verify(old, audiences=[AUD])  # re-verified against the re-read file
    assert len(decodes) == 2
    assert verifier.verify(sign(claims(), keys.p256, "ES256", "new"), audiences=[AUD])


def test_file_jwks_kid_reused_for_a_new_key(tmp_path: Path, keys: Keys, clock: Clock) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(keys.rsa, "current"))
    verifier = TokenVerifier([Issuer(ISS, FileJwks(path))], now=clock)
    old = sign(claims(), keys.rsa, kid="current")
    verifier.verify(old, audiences=[AUD])
    write_jwks(path, jwk_of(keys.rsa2, "current"))  # same kid, different key
    assert "signature does not verify" in refusal(verifier, old)  # the cached entry too
    assert verifier.verify(sign(claims(), keys.rsa2, kid="current"), audiences=[AUD])


def test_file_jwks_keeps_keys_while_the_file_is_half_written(tmp_path: Path, keys: Keys) -> None:
    path = tmp_path / "jwks.json"
    write_jwks(path, jwk_of(keys.rsa, "k1"))
    source = FileJwks(path)
    key = source.key_for("k1", "RS256")
    path.write_text('{"keys": [')  # a writer that truncates and writes in place
    assert source.key_for("k1", "RS256") is key
    write_jwks(path, jwk_of(keys.rsa2, "k2"))
    assert source.key_for("k2", "RS256") is not None
    with pytest.raises(NotAuthorized):
        source.key_for("k1", "RS256")


def test_file_jwks_unreadable(tmp_path: Path) -> None:
    with pytest.raises(NotAuthorized, match="cannot be read"):
        FileJwks(tmp_path / "missing.json").key_for("k1", "RS256")
    broken = tmp_path / "broken.json"
    broken.write_text('{"not": "a jwks"}')
    with pytest.raises(NotAuthorized, match="not a JWKS"):
        FileJwks(broken).key_for("k1", "RS256")


# -- key rotation: a JWKS URL -----------------------------------------------------------------

URL = "https://auth.example.org/.well-known/jwks.json"


class FakeJwksEndpoint:
    def __init__(self, *jwks: dict[str, Any]) -> None:
        self.jwks = list(jwks)
        self.calls = 0
        self.down = False

    def __call__(self, url: str) -> dict[str, Any]:
        assert url == URL
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        return {"keys": list(self.jwks)}


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_url_jwks_caches_and_refetches_on_unknown_kid(keys: Keys, clock: Clock) -> None:
    endpoint = FakeJwksEndpoint(jwk_of(keys.rsa, "k1"))
    ticks = Ticks()
    source = UrlJwks(URL, fetch=endpoint, clock=ticks, cache_seconds=300, min_refetch_seconds=10)
    verifier = TokenVerifier([Issuer(ISS, source)], now=clock)

    verifier.verify(sign(claims(jti="a"), keys.rsa, kid="k1"), audiences=[AUD])
    verifier.verify(sign(claims(jti="b"), keys.rsa, kid="k1"), audiences=[AUD])
    assert endpoint.calls == 1  # cached

    # The issuer rotates: k2 added, k1 retired. A k2 token triggers a re-fetch and passes.
    endpoint.jwks = [jwk_of(keys.rsa2, "k2")]
    ticks.now += 9  # a re-fetch within min_refetch_seconds of the last one is not made
    refusal(verifier, sign(claims(jti="c"), keys.rsa2, kid="k2"))
    assert endpoint.calls == 1
    ticks.now += 1
    verifier.verify(sign(claims(jti="c"), keys.rsa2, kid="k2"), audiences=[AUD])
    assert endpoint.calls == 2

    # k1 tokens now fail (k1 is not in the fresh keys), the cached one too; the re-fetches
    # they ask for are rate-limited
    assert "kid 'k1'" in refusal(verifier, sign(claims(jti="d"), keys.rsa, kid="k1"))
    assert "kid 'k1'" in refusal(verifier, sign(claims(jti="a"), keys.rsa, kid="k1"))
    for i in range(5):
        refusal(verifier, sign(claims(jti=f"e{i}"), keys.attacker, kid=f"made-up-{i}"))
    assert endpoint.calls == 2

    ticks.now += 10  # past min_refetch_seconds: one more look
    refusal(verifier, sign(claims(jti="f"), keys.attacker, kid="made-up"))
    assert endpoint.calls == 3


def test_url_jwks_cache_expires(keys: Keys) -> None:
    endpoint = FakeJwksEndpoint(jwk_of(keys.rsa, "k1"))
    ticks = Ticks()
    source = UrlJwks(URL, fetch=endpoint, clock=ticks, cache_seconds=300)
    source.key_for("k1", "RS256")
    ticks.now += 299
    source.key_for("k1", "RS256")
    assert endpoint.calls == 1
    ticks.now += 1
    source.key_for("k1", "RS256")
    assert endpoint.calls == 2
    # a key removed at the issuer disappears at the next expiry, even for a known kid
    endpoint.jwks = [jwk_of(keys.rsa2, "k2")]
    ticks.now += 300
    with pytest.raises(NotAuthorized, match="kid 'k1'"):
        source.key_for("k1", "RS256")
    assert endpoint.calls == 3


def test_url_jwks_keeps_last_good_keys_when_the_issuer_is_down(keys: Keys) -> None:
    endpoint = FakeJwksEndpoint(jwk_of(keys.rsa, "k1"))
    ticks = Ticks()
    source = UrlJwks(URL, fetch=endpoint, clock=ticks, cache_seconds=300, min_refetch_seconds=10)
    key = source.key_for("k1", "RS256")
    endpoint.down = True
    ticks.now += 301
    assert source.key_for("k1", "RS256") is key
    assert endpoint.calls == 2
    assert source.key_for("k1", "RS256") is key  # no re-fetch storm while it is down
    assert endpoint.calls == 2
    ticks.now += 10
    endpoint.down = False
    source.key_for("k1", "RS256")
    assert endpoint.calls == 3


def test_url_jwks_never_fetched(keys: Keys) -> None:
    endpoint = FakeJwksEndpoint(jwk_of(keys.rsa, "k1"))
    endpoint.down = True
    ticks = Ticks()
    source = UrlJwks(URL, fetch=endpoint, clock=ticks, min_refetch_seconds=10)
    with pytest.raises(NotAuthorized, match="could not be fetched"):
        source.key_for("k1", "RS256")
    with pytest.raises(NotAuthorized, match="could not be fetched"):
        source.key_for("k1", "RS256")
    assert endpoint.calls == 1  # rate-limited even before the first success
    endpoint.down = False
    ticks.now += 10
    assert source.key_for("k1", "RS256") is not None


def test_url_jwks_refuses_a_non_jwks_answer(keys: Keys) -> None:
    source = UrlJwks(URL, fetch=lambda url: {"keys": "nope"}, clock=Ticks())
    with pytest.raises(NotAuthorized, match="could not be fetched"):
        source.key_for("k1", "RS256")


def test_url_jwks_needs_an_http_url() -> None:
    with pytest.raises(ValueError, match="http"):
        UrlJwks("file:///etc/jwks.json")


@pytest.fixture
def jwks_server(keys: Keys) -> Iterator[tuple[str, list[int]]]:
    """A real HTTP server answering with a JWKS, counting requests."""
    body = json.dumps({"keys": [jwk_of(keys.p384, "served")]}).encode()
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            hits.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/jwks.json", hits
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_url_jwks_default_fetch(
    jwks_server: tuple[str, list[int]], keys: Keys, clock: Clock
) -> None:
    url, hits = jwks_server
    verifier = TokenVerifier([Issuer(ISS, UrlJwks(url))], now=clock)
    token = sign(claims(), keys.p384, "ES384", kid="served")
    assert verifier.verify(token, audiences=[AUD]).patient == "p1"
    assert verifier.verify(sign(claims(jti="2"), keys.p384, "ES384", "served"), audiences=[AUD])
    assert hits == [1]
