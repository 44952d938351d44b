"""The hottest interactions without the framework's routing and dependency injection.

FastAPI's routing, dependency solving and middleware cost several times the work of a plain
read, search or create. This ASGI middleware serves the common shapes of those three itself:

* read, ``GET [base]/[type]/[id]`` with no query string, no conditional header and a JSON (or
  no) ``Accept``: straight from the stored bytes, one indexed query, with the same body and
  headers as :mod:`careplan_fhir.rest.read`;
* search-type, ``GET [base]/[type]?...``: :func:`careplan_fhir.rest.search_type.search_get`;
* create, ``POST [base]/[type]`` with a JSON body, no query string and no ``If-None-Exist``:
  :func:`careplan_fhir.rest.create.create_resource`, with the other creates of the same turn of
  the event loop in one transaction (:mod:`careplan_fhir.rest.group_commit`).

Search and create call the very functions the routes call. Any failure (not found, deleted, an
invalid body, a database error) is not answered here: the request, its body replayed, goes on to
the framework, which does the work again and produces the error in the one place errors are
made. A create that fails has written nothing (its transaction was never committed), so running
it again is safe.

Authorization: the authentication middleware runs outside this one. Search and create call the
guarded interaction functions; the plain read is served here only when the caller may read
every resource of the type (a system or practitioner token), and goes to the guarded read
otherwise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from anyio import to_thread
from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from careplan_fhir.auth.access import SCOPE_KEY, UNRESTRICTED, Access
from careplan_fhir.errors import NotAcceptable
from careplan_fhir.storage.audit_log import AUDIT_TYPE
from careplan_fhir.storage.repository import StoredResource
from careplan_fhir.storage.search import plan_search

from .context import SERVED, FhirContext, Services, resource_headers
from .formats import response_format
from .group_commit import GroupCommit
from .loop_database import LoopDatabase, current_row_sql
from .search_type import result_bundle, search_get, search_request

T = TypeVar("T")
logger = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_JSON_ACCEPTS = frozenset({b"", b"*/*", b"application/fhir+json", b"application/json"})
_SKIP_HEADERS = frozenset({b"if-none-match", b"if-modified-since", b"prefer"})
_SKIP_ON_CREATE = frozenset({b"if-none-exist", b"if-match"})
_JSON_BODIES = frozenset({b"application/fhir+json", b"application/json"})
_CONTENT_TYPE = b"application/fhir+json;charset=utf-8"


def _access(scope: Scope) -> Access:
    """The caller, as the authentication middleware (outside this one) recorded it."""
    access: Access = scope.get(SCOPE_KEY, UNRESTRICTED)
    return access


def _acceptable(request: Request) -> bool:
    """The framework answers 406 for an unsatisfiable Accept or _format: leave those to it."""
    try:
        response_format(request)
    except NotAcceptable:
        return False
    return True


def _has_header(scope: Scope, names: frozenset[bytes]) -> bool:
    return any(name in names for name, _ in scope["headers"])


def _header(scope: Scope, wanted: bytes) -> bytes:
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value).lower()
    return b""


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """``(body read so far, complete)``: reading stops past ``limit`` or on a disconnect."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), size <= limit
    return b"".join(chunks), False


def _replay(body: bytes, complete: bool, receive: Receive) -> Receive:
    """A ``receive`` that hands the part already read to the framework, then the rest."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay


def _stored(resource_type: str, resource_id: str, row: Any) -> StoredResource | None:
    """The row ``(version, last_updated, raw, deleted)`` as a servable resource, or None when
    the resource is deleted."""
    if row[3] or row[2] is None:
        return None
    last_updated = row[1]
    if isinstance(last_updated, str):  # SQLite hands back text
        last_updated = datetime.fromisoformat(last_updated)
    return StoredResource(0, resource_type, resource_id, row[0], last_updated, bytes(row[2]))


def _search_on(connection: Connection, resource_type: str, context: FhirContext) -> Response:
    """The search on ``connection`` (the loop database's: rest/loop_database.py)."""
    with context.using(connection):
        return search_get(resource_type, context)


class FastPaths:
    """Serve plain reads, searches and creates; pass every other request on."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        self.group_commit = GroupCommit(services)
        engine = services.engine
        self.inline = engine.dialect.name == "sqlite"  # a local file: no network wait
        self.autocommit = engine.dialect.name == "postgresql"
        marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        self.sql = current_row_sql(marker)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/fhir/"):
            method = scope["method"]
            if method == "GET" and scope["query_string"]:
                if await self._search(scope, receive, send):
                    return
            elif method == "POST":
                await self._create(scope, receive, send)
                return
        target = self._target(scope)
        if target is not None and not _access(scope).unrestricted_for(target[0], "read"):
            target = None  # a confined or filtered read: the framework's read checks it
        if target is not None:
            try:
                stored = await self._read(*target)
            except Exception:  # noqa: BLE001 - the framework path reports it properly
                stored = None
            if stored is not None:
                await self._respond(stored, send)
                return
        await self.app(scope, receive, send)

    async def _search(self, scope: Scope, receive: Receive, send: Send) -> bool:
        parts = scope["path"][6:].split("/")
        if len(parts) != 1 or parts[0] not in SERVED or _has_header(scope, _SKIP_HEADERS):
            return False
        request = Request(scope, receive)
        if not _acceptable(request):
            return False
        context = FhirContext(request, self.services)
        context.read_only = True
        try:
            database = self.services.loop_database_here()
            own_audit = parts[0] == AUDIT_TYPE and self.services.audit_engine is not None
            if database is not None and not own_audit:
                response = await self._search_planned(database, parts[0], context)
                if response is None:
                    response = await database.run(_search_on, parts[0], context, read_only=True)
            else:
                response = await self._run(search_get, parts[0], context)
        except Exception:  # noqa: BLE001 - the framework path reports it properly
            return False
        finally:
            context.close()
        await response(scope, receive, send)
        return True

    async def _search_planned(
        self, database: LoopDatabase, resource_type: str, context: FhirContext
    ) -> Response | None:
        """PostgreSQL: the search's statements compiled here and awaited on the driver
        (storage.search.plan_search), the rest (parsing, authorization, the Bundle) as the
        route does it; None when the search needs more than its page and count statements
        (included resources), for :meth:`LoopDatabase.run` to run it as the route does."""
        params = parse_qsl(context.request.url.query, keep_blank_values=True)
        request = search_request(context, resource_type, params)
        plan = plan_search(request, self.services.engine.dialect)
        if plan is None:
            return None
        rows = await database.fetch(plan.page.sql, plan.page.parameters)
        count = plan.count_query(rows)
        total = None
        if count is not None:
            total = int((await database.fetch(count.sql, count.parameters))[0][0])
        result = plan.finish(rows, total)
        return context.respond(result_bundle(context, params, request, result))

    async def _create(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts = scope["path"][6:].split("/")
        eligible = (
            len(parts) == 1
            and parts[0] in SERVED
            and not scope["query_string"]
            and not _has_header(scope, _SKIP_ON_CREATE)
            and _header(scope, b"content-type").split(b";", 1)[0].strip() in _JSON_BODIES
        )
        if not eligible:
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive, self.services.settings.max_body_bytes)
        request = Request(scope, receive)
        if complete and _acceptable(request):
            response = await self.group_commit.create(request, parts[0], body)
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, _replay(body, complete, receive), send)

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        """Run blocking read-only work: inline on SQLite, in the thread pool otherwise.

        SQLite is a local file and a patient-scoped search takes well under a millisecond;
        handing it to threads only made it queue for the GIL (throughput fell as concurrency
        rose). A PostgreSQL call waits on the network, so it must not hold the event loop: it
        is awaited there (rest/loop_database.py) or, failing that, runs in a thread.
        """
        if self.inline:
            return function(*args)
        return await to_thread.run_sync(function, *args)

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

    async def _read(self, resource_type: str, resource_id: str) -> StoredResource | None:
        """The current version, if it exists and is not deleted: inline on SQLite, awaited on
        the loop on PostgreSQL (rest/loop_database.py), in the thread pool otherwise (an app
        whose lifespan has not run, or a request on another event loop)."""
        if self.inline:
            return self._lookup(resource_type, resource_id)
        database = self.services.loop_database_here()
        if database is not None:
            row = await database.lookup(resource_type, resource_id)
            return None if row is None else _stored(resource_type, resource_id, row)
        return await to_thread.run_sync(self._lookup, resource_type, resource_id)

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
        return None if row is None else _stored(resource_type, resource_id, row)

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


__all__ = ["FastPaths"]
