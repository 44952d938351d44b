"""Registered SMART Backend Services clients (``Settings.auth_clients_file``).

SMART Backend Services registration
(https://hl7.org/fhir/smart-app-launch/backend-services.html#registering-a-smart-backend-service-communicating-public-keys)
is out of band: the operator lists each client with the most it may be granted and where its
public keys are. The file is a JSON array of objects::

    [
      {
        "client_id": "ehr-sync",
        "scope": "system/*.rs system/Task.u",
        "jwks_uri": "https://ehr.example.org/.well-known/jwks.json"
      },
      {"client_id": "batch-job", "scope": "system/CarePlan.rs", "jwks": {"keys": [...]}}
    ]

``scope`` holds ``system/`` scopes only; exactly one of ``jwks`` (an inline JWK Set) and
``jwks_uri`` (fetched and cached; an unknown ``kid`` triggers a re-fetch) is given. See
docs/security.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from careplan_fhir.errors import NotAuthorized

from .scopes import ScopeSet, parse_scopes
from .tokens import JwksSource, StaticJwks, UrlJwks

_FIELDS = frozenset({"client_id", "scope", "jwks", "jwks_uri"})


@dataclass(frozen=True)
class RegisteredClient:
    """One client: its id, the scopes it may get at most, and its public keys."""

    client_id: str
    scope: ScopeSet
    jwks: JwksSource
    #: Where the keys are fetched from (None for an inline JWKS).
    jwks_uri: str | None = None

    def key_for(self, kid: str, algorithm: str) -> Any | None:
        """The client's public key with ``kid`` fit for ``algorithm``, or None."""
        try:
            return self.jwks.key_for(kid, algorithm)
        except NotAuthorized:
            return None


class ClientRegistry(Mapping[str, RegisteredClient]):
    """The registered clients by ``client_id``."""

    def __init__(self, clients: list[RegisteredClient] | None = None) -> None:
        self._clients: dict[str, RegisteredClient] = {}
        for client in clients or []:
            if client.client_id in self._clients:
                raise ValueError(f"client {client.client_id!r} is registered twice")
            self._clients[client.client_id] = client

    def __getitem__(self, client_id: str) -> RegisteredClient:
        return self._clients[client_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)


def parse_client(
    entry: object, *, fetch: Callable[[str], dict[str, Any]] | None = None
) -> RegisteredClient:
    """One entry of the clients file; ValueError says what is wrong with it."""
    if not isinstance(entry, dict):
        raise ValueError("each client is a JSON object")
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ValueError(f"unknown client fields: {', '.join(sorted(unknown))}")
    client_id = entry.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        raise ValueError("client_id must be a non-empty string")
    scope_text = entry.get("scope")
    if not isinstance(scope_text, str) or not scope_text.strip():
        raise ValueError(f"client {client_id!r}: scope must be a non-empty string")
    scope = parse_scopes(scope_text)
    if scope.invalid or scope.other:
        wrong = " ".join((*scope.invalid, *scope.other))
        raise ValueError(f"client {client_id!r}: not system/ resource scopes: {wrong}")
    if any(s.context != "system" for s in scope.scopes):
        raise ValueError(f"client {client_id!r}: a backend client gets system/ scopes only")
    jwks, jwks_uri = entry.get("jwks"), entry.get("jwks_uri")
    if (jwks is None) == (jwks_uri is None):
        raise ValueError(f"client {client_id!r}: give exactly one of jwks and jwks_uri")
    source: JwksSource
    if jwks is not None:
        if not isinstance(jwks, dict):
            raise ValueError(f"client {client_id!r}: jwks must be a JWK Set object")
        source = StaticJwks(jwks)
    else:
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise ValueError(f"client {client_id!r}: jwks_uri must be an http(s) URL")
        source = UrlJwks(jwks_uri, fetch=fetch)
    return RegisteredClient(client_id, scope, source, jwks_uri)


def load_clients(
    path: str | Path | None, *, fetch: Callable[[str], dict[str, Any]] | None = None
) -> ClientRegistry:
    """The clients in the JSON file at ``path``; none when no file is configured."""
    if not path:
        return ClientRegistry()
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the clients file {path}: {exc}") from None
    if not isinstance(document, list):
        raise ValueError(f"the clients file {path} must hold a JSON array")
    try:
        return ClientRegistry([parse_client(entry, fetch=fetch) for entry in document])
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
