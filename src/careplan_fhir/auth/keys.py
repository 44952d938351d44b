"""The server's own signing key: it signs the access tokens the token endpoint and the
``careplan-fhir token`` command issue.

The key is a private JWK (RFC 7517) in a JSON file, created on first use (ES256, P-256, RFC 7518
§3.4) with mode 0600. Its ``kid`` is the RFC 7638 JWK thumbprint of the public key, so the same
key always has the same id and a rotated key a different one. The public half is published at
``/.well-known/jwks.json``.

JOSE work (key conversion, signing) is PyJWT's; this module only decides what goes in.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

#: The members of a public JWK that its RFC 7638 thumbprint covers, by key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384"}


def jwk_thumbprint(public_jwk: dict[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(str(public_jwk.get("kty")))
    if members is None:
        raise ValueError(f"No thumbprint for key type {public_jwk.get('kty')!r}")
    canonical = json.dumps(
        {name: public_jwk[name] for name in members}, separators=(",", ":"), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class SigningKey:
    """A private key with its ``kid`` and JWS algorithm (ES256 for the keys made here)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        self._private_key = private_key
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            public = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
            algorithm = _EC_ALGORITHMS.get(str(public.get("crv")))
            if algorithm is None:
                raise ValueError(f"Unsupported curve {public.get('crv')!r}; use P-256")
        else:
            public = RSAAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
            algorithm = "RS256"
        self._public = {k: v for k, v in public.items() if k in ("kty", "crv", "x", "y", "n", "e")}
        self.kid: str = jwk_thumbprint(self._public)
        self.algorithm: str = algorithm

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh P-256 key (ES256)."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_private_jwk(cls, jwk: dict[str, Any]) -> SigningKey:
        """Load a private EC (P-256) or RSA JWK; a public-only JWK is refused."""
        if "d" not in jwk:
            raise ValueError("The signing key file holds no private key (no 'd' member)")
        kty = jwk.get("kty")
        loaded: Any
        if kty == "EC":
            loaded = ECAlgorithm.from_jwk(jwk)
        elif kty == "RSA":
            loaded = RSAAlgorithm.from_jwk(jwk)
        else:
            raise ValueError(f"Unsupported key type {kty!r}; use EC P-256")
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("The signing key file holds no private key")
        return cls(loaded)

    def private_jwk(self) -> dict[str, Any]:
        """The private JWK (with ``kid`` and ``alg``), as stored in the key file."""
        if isinstance(self._private_key, ec.EllipticCurvePrivateKey):
            jwk = ECAlgorithm.to_jwk(self._private_key, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(self._private_key, as_dict=True)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK, with ``kid``, ``alg`` and ``use: sig``."""
        return {**self._public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517 §5) to publish."""
        return {"keys": [self.public_jwk()]}

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of ``claims`` with ``kid`` and ``typ: JWT`` in its header."""
        return jwt.encode(
            claims, self._private_key, algorithm=self.algorithm, headers={"kid": self.kid}
        )


def _write_new_file(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` only if it does not exist: False when someone else won.

    The file appears complete or not at all (written to a temporary file in the same folder,
    then hard-linked into place, which fails rather than overwrite), and is never readable by
    others (mode 0600 from its creation).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(temporary, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The key in ``path`` (a private JWK JSON file), created first if the file is missing.

    Concurrent starts (several workers) agree on one key: only one creation wins, the others
    read the winner's file.
    """
    if not path.exists():
        key = SigningKey.generate()
        data = json.dumps(key.private_jwk(), indent=2).encode("utf-8") + b"\n"
        if _write_new_file(path, data):
            return key
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"Cannot read the signing key {path}: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"The signing key {path} is not a JSON object (a private JWK)")
    return SigningKey.from_private_jwk(document)


def _unix(moment: datetime) -> int:
    return int(moment.timestamp())


def mint_access_token(
    key: SigningKey,
    *,
    issuer: str,
    audience: str | list[str],
    scope: str,
    subject: str,
    lifetime: timedelta,
    now: datetime,
    patient: str | None = None,
    encounter: str | None = None,
    fhir_user: str | None = None,
    client_id: str | None = None,
) -> str:
    """A signed SMART access token (RFC 9068-style claims plus SMART's launch context).

    ``patient``/``encounter`` are the launch context ids and ``fhir_user`` the user's FHIR
    resource (``Practitioner/123``), as the SMART App Launch token response carries them
    (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).
    """
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "scope": scope,
        "jti": str(uuid.uuid4()),
        "iat": _unix(now),
        "nbf": _unix(now),
        "exp": _unix(now + lifetime),
    }
    if client_id is not None:
        claims["client_id"] = client_id
    if patient is not None:
        claims["patient"] = patient
    if encounter is not None:
        claims["encounter"] = encounter
    if fhir_user is not None:
        claims["fhirUser"] = fhir_user
    return key.sign(claims)
