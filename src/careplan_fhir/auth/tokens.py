"""Bearer access tokens: JWTs verified against the issuers' JSON Web Key Sets.

What a valid token is:

* a JWS in compact serialization (RFC 7515 §7.1) signed with RS256, RS384, ES256 or ES384
  (RFC 7518 §3.3, §3.4). ``alg: none``, every HMAC algorithm (so a public key can never be used
  as an HMAC secret), and all others are refused before any key is looked at;
* from a configured issuer (``iss``), signed by a key of that issuer's JWKS (RFC 7517 §5) found
  by ``kid``; keys named in the token itself (``jwk``, ``jku``, ``x5u``, ``x5c``) are ignored;
* meant for this server: one of the accepted audiences is in ``aud`` (RFC 7519 §4.1.3);
* current: ``exp`` is required and in the future, ``nbf`` and ``iat`` (if present) not in the
  future, each with a small leeway for clock skew (RFC 7519 §4.1.4, §4.1.5, §4.1.6).

The claims SMART App Launch 2.2.0 defines are read into :class:`AccessToken`: ``scope`` (a
space-separated string; a ``scp`` list is accepted too), the launch context ``patient`` and
``encounter`` (ids) and ``fhirUser`` (a relative or absolute reference, kept as given)
(https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html, "Launch context arrives
with your access_token", "Scopes for requesting identity data"), and ``client_id`` (RFC 9068 §2.2,
falling back to ``azp``).

Every refusal is a :class:`careplan_fhir.errors.NotAuthorized` whose message says what is wrong
without quoting the token. Successful verifications are cached (bounded LRU) by token and
audiences; a cached token is re-checked against the clock and its issuer's current key on every
use, so expiry and key rotation take effect at once. Failures are never cached.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.exceptions import InvalidJTIError, InvalidSubjectError
from jwt.types import Options

from careplan_fhir.errors import NotAuthorized

from .scopes import ScopeSet, parse_scopes

logger = logging.getLogger(__name__)

#: The only signing algorithms accepted.
ACCEPTED_ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
#: The JWK key type and (for EC) curve each accepted algorithm needs (RFC 7518 §6).
_KEY_SHAPE: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
}
#: Longer bearer tokens are refused unread (HTTP servers commonly cap a header at 8 KiB).
MAX_TOKEN_LENGTH = 16 * 1024
#: A JWKS document larger than this is refused.
MAX_JWKS_BYTES = 1024 * 1024

# Verifies signatures and audience/issuer; the clock checks are ours (an injected ``now``).
_VERIFY_OPTIONS: Options = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": True,
    "verify_iss": True,
    "require": ["exp", "iss", "aud"],
    "enforce_minimum_key_length": True,
}


class JwksSource(Protocol):
    """Where an issuer's signing keys come from."""

    def key_for(self, kid: str | None, algorithm: str) -> Any:
        """The public key (a cryptography key object) with ``kid`` that fits ``algorithm``.

        Raises :class:`NotAuthorized` when there is none.
        """
        ...


def _shown(value: object, limit: int = 64) -> str:
    """A token-supplied value fit to quote in a message: short and printable, else not shown."""
    if isinstance(value, str) and len(value) <= limit and value.isprintable():
        return repr(value)
    return "(not shown)"


@dataclass(frozen=True)
class _Key:
    kid: str | None
    kty: str
    curve: str | None
    #: The ``alg`` the JWK declares, if any (RFC 7517 §4.4): then only that one is accepted.
    alg: str | None
    #: The ``use`` the JWK declares, if any (RFC 7517 §4.2): only "sig" keys verify tokens.
    use: str | None
    key: Any

    def fits(self, algorithm: str) -> bool:
        kty, curve = _KEY_SHAPE[algorithm]
        return (
            self.kty == kty
            and (curve is None or self.curve == curve)
            and self.alg in (None, algorithm)
            and self.use in (None, "sig")
        )


class _KeyIndex:
    """The usable signature keys of one JWKS document, by ``kid``."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
            raise ValueError("a JWKS is a JSON object with a 'keys' array")
        self.keys: list[_Key] = []
        for member in jwks["keys"]:
            if not isinstance(member, dict) or member.get("kty") not in ("RSA", "EC"):
                continue  # only asymmetric keys can verify our algorithms
            try:
                # PyJWK as PyJWKSet uses it, one key at a time, so the key's own "alg" stays
                # visible (PyJWK otherwise binds RSA keys to RS256).
                jwk = jwt.PyJWK(member)
            except jwt.PyJWTError as error:
                logger.warning(
                    "skipping an unusable JWKS key (kid %s): %s", _shown(member.get("kid")), error
                )
                continue
            key = jwk.key
            if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
                key = key.public_key()  # a JWKS holding private keys still only verifies
            kid, alg, use, curve = (member.get(n) for n in ("kid", "alg", "use", "crv"))
            self.keys.append(
                _Key(
                    kid=kid if isinstance(kid, str) else None,
                    kty=member["kty"],
                    curve=curve if isinstance(curve, str) else None,
                    alg=alg if isinstance(alg, str) else None,
                    use=use if isinstance(use, str) else None,
                    key=key,
                )
            )

    def find(self, kid: str | None, algorithm: str) -> Any | None:
        if algorithm not in _KEY_SHAPE:
            return None
        if kid is None:
            fitting = [k for k in self.keys if k.fits(algorithm)]
            return fitting[0].key if len(fitting) == 1 else None  # no guessing among several
        for key in self.keys:
            if key.kid == kid and key.fits(algorithm):
                return key.key
        return None


def _no_key(kid: str | None, algorithm: str) -> NotAuthorized:
    if kid is None:
        return NotAuthorized(
            "The bearer token names no signing key (kid) and its issuer has no single "
            f"{algorithm} key"
        )
    return NotAuthorized(
        f"The bearer token's issuer has no {algorithm} signing key with kid {_shown(kid)} "
        "(unknown or rotated key)"
    )


class StaticJwks:
    """Keys held in memory (a JWKS dict)."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._index = _KeyIndex(jwks)

    def key_for(self, kid: str | None, algorithm: str) -> Any:
        key = self._index.find(kid, algorithm)
        if key is None:
            raise _no_key(kid, algorithm)
        return key


class FileJwks:
    """Keys in a local JWKS file, re-read whenever the file changes (key rotation).

    A change is a new modification time, size or inode (an atomic replace). A file that cannot be
    read or parsed keeps the previous keys (a writer may be half-way) until it can be.
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._index: _KeyIndex | None = None
        self._stamp: tuple[int, int, int] | None = None

    def _current(self) -> _KeyIndex:
        with self._lock:
            try:
                status = self._path.stat()
            except OSError:
                raise NotAuthorized("The token issuer's key file cannot be read") from None
            stamp = (status.st_mtime_ns, status.st_size, status.st_ino)
            if stamp != self._stamp:
                try:
                    index = _KeyIndex(json.loads(self._path.read_bytes()))
                except (OSError, ValueError) as error:
                    logger.warning("JWKS file %s not (re)loaded: %s", self._path, error)
                    if self._index is None:
                        raise NotAuthorized("The token issuer's key file is not a JWKS") from None
                else:
                    self._index, self._stamp = index, stamp
            assert self._index is not None
            return self._index

    def key_for(self, kid: str | None, algorithm: str) -> Any:
        key = self._current().find(kid, algorithm)
        if key is None:
            raise _no_key(kid, algorithm)
        return key


def fetch_jwks(url: str, *, timeout: float = 5.0) -> dict[str, Any]:
    """GET a JWKS document over HTTP(S)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError("the JWKS document is too large")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("a JWKS is a JSON object")
    return document


class UrlJwks:
    """Keys fetched from a ``jwks_uri``, cached for ``cache_seconds``.

    A ``kid`` the cached keys lack triggers a re-fetch, so rotated keys are picked up at once;
    re-fetches happen at most every ``min_refetch_seconds`` so a stream of tokens with made-up
    ``kid`` values cannot hammer the issuer. When a fetch fails the last good keys stay in use.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 300,
        min_refetch_seconds: float = 10,
        fetch: Callable[[str], dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fetch is None and not url.startswith(("https://", "http://")):
            raise ValueError("a jwks_uri is an http(s) URL")
        self._url = url
        self._cache_seconds = cache_seconds
        self._min_refetch_seconds = min_refetch_seconds
        self._fetch = fetch or fetch_jwks
        self._clock = clock
        self._lock = threading.Lock()
        self._index: _KeyIndex | None = None
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf

    def _refresh(self, now: float) -> None:
        """Fetch, unless the last attempt was too recent; keep the old keys on failure."""
        if now - self._attempted_at < self._min_refetch_seconds:
            return
        self._attempted_at = now
        try:
            index = _KeyIndex(self._fetch(self._url))
        except Exception as error:  # any failure of a remote fetch: network, HTTP, JSON
            logger.warning("JWKS fetch from %s failed: %s", self._url, error)
            return
        self._index, self._fetched_at = index, now

    def key_for(self, kid: str | None, algorithm: str) -> Any:
        with self._lock:
            now = self._clock()
            if self._index is None or now - self._fetched_at >= self._cache_seconds:
                self._refresh(now)
            key = self._index.find(kid, algorithm) if self._index is not None else None
            if key is None and self._index is not None:
                self._refresh(now)  # perhaps a rotated key: look again (rate-limited)
                key = self._index.find(kid, algorithm)
            if self._index is None:
                raise NotAuthorized("The token issuer's keys could not be fetched")
        if key is None:
            raise _no_key(kid, algorithm)
        return key


@dataclass(frozen=True)
class Issuer:
    """An authorization server whose tokens are accepted, and where its keys are."""

    issuer: str
    jwks: JwksSource


@dataclass(frozen=True)
class AccessToken:
    """A verified bearer token."""

    issuer: str
    subject: str | None
    audience: tuple[str, ...]
    scopes: ScopeSet
    #: Launch context: the id of the patient in context (``patient`` claim).
    patient: str | None
    #: Launch context: the id of the encounter in context (``encounter`` claim).
    encounter: str | None
    #: The ``fhirUser`` claim as given: ``Practitioner/123`` or an absolute URL.
    fhir_user: str | None
    client_id: str | None
    expires_at: datetime
    token_id: str | None
    claims: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class _Verified:
    token: AccessToken
    issuer: Issuer
    kid: str | None
    algorithm: str
    key: Any
    expires: float
    not_before: float | None


class TokenVerifier:
    """Verifies bearer tokens from the configured issuers; thread-safe.

    ``now`` is the wall clock (an aware datetime; a naive one is taken as UTC).
    """

    def __init__(
        self,
        issuers: Sequence[Issuer],
        *,
        now: Callable[[], datetime],
        leeway_seconds: float = 30,
        cache_size: int = 4096,
    ) -> None:
        self._issuers: dict[str, Issuer] = {}
        for issuer in issuers:
            if issuer.issuer in self._issuers:
                raise ValueError(f"issuer {issuer.issuer!r} is configured twice")
            self._issuers[issuer.issuer] = issuer
        self._now = now
        self._leeway = leeway_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, frozenset[str]], _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def verify(self, token: str, *, audiences: Collection[str]) -> AccessToken:
        """The verified token; :class:`NotAuthorized` when it is not acceptable.

        ``audiences`` are this server's names (its FHIR base URL ...): the token's ``aud`` must
        contain at least one of them.
        """
        accepted = frozenset((audiences,) if isinstance(audiences, str) else audiences)
        if not accepted:
            raise ValueError("verify() needs at least one accepted audience")
        now = self._timestamp()
        cache_key = (token, accepted)
        with self._lock:
            entry = self._cache.get(cache_key)
            if entry is not None:
                self._cache.move_to_end(cache_key)
        if entry is not None:
            try:
                self._check_times(entry.expires, entry.not_before, now)
                key = entry.issuer.jwks.key_for(entry.kid, entry.algorithm)
            except NotAuthorized:
                self._evict(cache_key)
                raise
            if key is entry.key:
                return entry.token
            self._evict(cache_key)  # the issuer's keys were re-read: verify afresh
        entry = self._verify(token, accepted, now)
        if self._cache_size > 0:
            with self._lock:
                self._cache[cache_key] = entry
                self._cache.move_to_end(cache_key)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return entry.token

    def _evict(self, cache_key: tuple[str, frozenset[str]]) -> None:
        with self._lock:
            self._cache.pop(cache_key, None)

    def _timestamp(self) -> float:
        moment = self._now()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()

    def _check_times(self, expires: float, not_before: float | None, now: float) -> None:
        if expires <= now - self._leeway:
            raise NotAuthorized("The bearer token has expired")
        if not_before is not None and not_before > now + self._leeway:
            raise NotAuthorized("The bearer token is not valid yet (nbf)")

    def _verify(self, token: str, audiences: frozenset[str], now: float) -> _Verified:
        if not isinstance(token, str) or not token:
            raise NotAuthorized("The bearer token is empty")
        if len(token) > MAX_TOKEN_LENGTH:
            raise NotAuthorized("The bearer token is too long")
        try:
            unverified = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise NotAuthorized("The bearer token is not a well-formed signed JWT") from None
        header: dict[str, Any] = unverified["header"]
        algorithm = header.get("alg")
        if algorithm not in ACCEPTED_ALGORITHMS:
            raise NotAuthorized(
                f"The bearer token's signing algorithm {_shown(algorithm, 16)} is not accepted "
                f"(accepted: {', '.join(ACCEPTED_ALGORITHMS)})"
            )
        if "crit" in header:
            raise NotAuthorized("The bearer token uses critical header extensions (crit)")
        iss = unverified["payload"].get("iss")
        if not isinstance(iss, str):
            raise NotAuthorized("The bearer token has no issuer (iss)")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise NotAuthorized(f"The bearer token's issuer {_shown(iss, 200)} is not trusted")
        kid = header.get("kid")  # PyJWT has checked it is a string when present
        key = issuer.jwks.key_for(kid, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=list(ACCEPTED_ALGORITHMS),
                audience=sorted(audiences),
                issuer=issuer.issuer,
                options=_VERIFY_OPTIONS,
            )
        except jwt.InvalidSignatureError:
            raise NotAuthorized("The bearer token's signature does not verify") from None
        except jwt.MissingRequiredClaimError as error:
            raise NotAuthorized(f"The bearer token has no {error.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise NotAuthorized("The bearer token is not meant for this server (aud)") from None
        except jwt.InvalidIssuerError:
            raise NotAuthorized("The bearer token's issuer (iss) is not a string") from None
        except InvalidSubjectError:
            raise NotAuthorized("The bearer token's 'sub' claim is not a string") from None
        except InvalidJTIError:
            raise NotAuthorized("The bearer token's 'jti' claim is not a string") from None
        except jwt.InvalidKeyError:
            raise NotAuthorized(
                "The issuer's key does not suit the bearer token's algorithm"
            ) from None
        except jwt.PyJWTError:
            raise NotAuthorized("The bearer token's claims are malformed") from None
        expires = _numeric_date(claims, "exp")
        not_before = _numeric_date(claims, "nbf")
        issued_at = _numeric_date(claims, "iat")
        assert expires is not None  # required above
        self._check_times(expires, not_before, now)
        if issued_at is not None and issued_at > now + self._leeway:
            raise NotAuthorized("The bearer token is issued in the future (iat)")
        return _Verified(
            token=_access_token(claims, issuer.issuer, expires),
            issuer=issuer,
            kid=kid,
            algorithm=algorithm,
            key=key,
            expires=expires,
            not_before=not_before,
        )


def _numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise NotAuthorized(f"The bearer token's {name!r} claim is not a NumericDate")
    return float(value)


def _string_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise NotAuthorized(f"The bearer token's {name!r} claim is not a non-empty string")
    return value


def _scope_text(claims: Mapping[str, Any]) -> str:
    if "scope" in claims:
        scope = claims["scope"]
        if not isinstance(scope, str):
            raise NotAuthorized("The bearer token's 'scope' claim is not a string")
        return scope
    scp = claims.get("scp")
    if scp is None:
        return ""
    if isinstance(scp, str):
        return scp
    if isinstance(scp, list) and all(isinstance(s, str) and s and " " not in s for s in scp):
        return " ".join(scp)
    raise NotAuthorized("The bearer token's 'scp' claim is not a list of scopes")


def _access_token(claims: dict[str, Any], issuer: str, expires: float) -> AccessToken:
    aud = claims["aud"]  # PyJWT has checked: a string or a list of strings
    try:
        expires_at = datetime.fromtimestamp(expires, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise NotAuthorized("The bearer token's 'exp' claim is out of range") from None
    return AccessToken(
        issuer=issuer,
        subject=_string_claim(claims, "sub"),
        audience=(aud,) if isinstance(aud, str) else tuple(aud),
        scopes=parse_scopes(_scope_text(claims)),
        patient=_string_claim(claims, "patient"),
        encounter=_string_claim(claims, "encounter"),
        fhir_user=_string_claim(claims, "fhirUser"),
        client_id=_string_claim(claims, "client_id") or _string_claim(claims, "azp"),
        expires_at=expires_at,
        token_id=_string_claim(claims, "jti"),
        claims=claims,
    )
