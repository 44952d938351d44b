"""read (https://hl7.org/fhir/R4/http.html#read) without the framework, for the common case.

``GET [base]/[type]/[id]`` with no query string, no conditional header and a JSON (or no)
``Accept`` is the most frequent request an EHR sends. This ASGI middleware answers it straight
from the stored bytes: one indexed query on a pooled DB-API connection, the same body and
headers as :mod:`careplan_fhir.rest.read`. Anything else (not found, deleted, XML,
``_summary``, ``If-None-Match``, a database error) goes on to the framework, so every error
is still produced, and reported, in one place.
"""

from __future__ import annotations

import re
from datetime import datetime

from anyio import to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from careplan_fhir.storage.repository import StoredResource

from .context import SERVED, Services, resource_headers

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_JSON_ACCEPTS = frozenset({b"", b"*/*", b"application/fhir+json", b"application/json"})
_SKIP_HEADERS = frozenset({b"if-none-match", b"if-modified-since", b"prefer"})
_CONTENT_TYPE = b"application/fhir+json;charset=utf-8"


class FastRead:
    """Serve plain reads from stored bytes; pass every other request on."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        engine = services.engine
        self.inline = engine.dialect.name == "sqlite"  # a local file: no network wait
        self.autocommit = engine.dialect.name == "postgresql"
        marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self.sql = (
            "SELECT version, last_updated, raw, deleted FROM resource"
            f" WHERE res_type = {marker} AND res_id = {marker}"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = self._target(scope)
        if target is not None:
            try:
                stored = (
                    self._lookup(*target)
                    if self.inline
                    else await to_thread.run_sync(self._lookup, *target)
                )
            except Exception:  # noqa: BLE001 - the framework path reports it properly
                stored = None
            if stored is not None:
                await self._respond(stored, send)
                return
        await self.app(scope, receive, send)

    def _target(self, scope: Scope) -> tuple[str, str] | None:
        if scope["type"] != "http" or scope["method"] != "GET" or scope["query_string"]:
            return None
        path: str = scope["path"]
        if not path.startswith("/fhir/"):
            return None
        parts = path[6:].split("/")
        if len(parts) != 2 or parts[0] not in SERVED or not _ID.match(parts[1]):
            return None
        for name, value in scope["headers"]:
            if name in _SKIP_HEADERS:
                return None
            if name == b"accept" and value.split(b";", 1)[0].strip() not in _JSON_ACCEPTS:
                return None
        return parts[0], parts[1]

    def _lookup(self, resource_type: str, resource_id: str) -> StoredResource | None:
        connection = self.services.engine.raw_connection()
        driver = connection.driver_connection
        # One statement needs no transaction: in autocommit mode PostgreSQL is spared the
        # BEGIN and ROLLBACK round trips (SQLite runs it in autocommit already).
        autocommit = self.autocommit and not getattr(driver, "autocommit", True)
        try:
            if autocommit:
                driver.autocommit = True  # type: ignore[union-attr]
            cursor = connection.cursor()
            cursor.execute(self.sql, (resource_type, resource_id))
            row = cursor.fetchone()
            cursor.close()
        finally:
            if autocommit:
                driver.autocommit = False  # type: ignore[union-attr]
            connection.close()
        if row is None or row[3] or row[2] is None:
            return None
        last_updated = row[1]
        if isinstance(last_updated, str):  # SQLite hands back text
            last_updated = datetime.fromisoformat(last_updated)
        return StoredResource(0, resource_type, resource_id, row[0], last_updated, bytes(row[2]))

    async def _respond(self, stored: StoredResource, send: Send) -> None:
        assert stored.raw is not None
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", _CONTENT_TYPE),
            (b"content-length", str(len(stored.raw)).encode()),
        ]
        headers.extend(
            (name.lower().encode(), value.encode())
            for name, value in resource_headers(stored).items()
        )
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": stored.raw})


__all__ = ["FastRead"]
