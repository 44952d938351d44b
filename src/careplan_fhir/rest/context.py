"""What each interaction needs: the connection, the repository, the base URL and the preferences."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, Request
from fastapi.responses import Response
from sqlalchemy import Connection, Engine

from careplan_fhir.auth.access import SCOPE_KEY, UNRESTRICTED, Access
from careplan_fhir.auth.middleware import fhir_base
from careplan_fhir.errors import (
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    PreconditionFailed,
    ResourceNotFound,
    UnsupportedMediaType,
)
from careplan_fhir.fhir import jsonio
from careplan_fhir.fhir.models import SERVED_TYPES, resource_from_xml, validate_resource
from careplan_fhir.settings import Settings
from careplan_fhir.storage.db import begin_write
from careplan_fhir.storage.pending_creates import PendingCreates
from careplan_fhir.storage.repository import Repository, StoredResource, parse_version_tag
from careplan_fhir.storage.search import parse_search, run_search

from .formats import FHIR_JSON, FHIR_XML, media_type, render_response, response_format

if TYPE_CHECKING:
    from careplan_fhir.auth.backend_services import BackendServices
    from careplan_fhir.auth.keys import SigningKey

    from .loop_database import LoopDatabase

SERVED = frozenset(SERVED_TYPES)
#: Paths under the base that are interactions, not types; other methods there get 405.
_BASE_PATHS = frozenset({"metadata", "_history"})


@dataclass
class Services:
    """Process-wide objects, created by ``create_app`` and kept in ``app.state``."""

    settings: Settings
    engine: Engine
    now: Callable[[], datetime]
    new_id: Callable[[], str]
    #: The server's own token-signing key (auth.keys), published at /.well-known/jwks.json.
    signing_key: SigningKey | None = None
    #: The token endpoint and introspection (auth.backend_services).
    backend_services: BackendServices | None = None
    #: PostgreSQL only: reads, searches and creates awaited on the loop (rest/loop_database.py).
    loop_database: LoopDatabase | None = None
    #: The audit trail's database when it is not the main one (Settings.audit_database_url).
    audit_engine: Engine | None = None

    def loop_database_here(self) -> LoopDatabase | None:
        """The loop database, when work may be awaited on it from here (PostgreSQL, on the
        event loop its lifespan started on); None means the thread pool."""
        database = self.loop_database
        return database if database is not None and database.usable() else None


class FhirContext:
    """One request's view of the server.

    The database connection is checked out of the pool on first use, in the thread that runs
    the interaction: checking it out on the event loop would block the loop whenever the pool
    is empty, and only the loop can give connections back.
    """

    def __init__(self, request: Request, services: Services) -> None:
        self.request = request
        self.services = services
        self._connection: Connection | None = None
        self._audit_connection: Connection | None = None
        self._repository: Repository | None = None
        #: Whether begin_write was called (a connection opened later writes too).
        self._writing = False
        #: False on the event loop (see storage.db.begin_write).
        self.wait_for_writer = True
        #: Whether this request committed a transaction (a write happened).
        self.committed_once = False
        #: Set before first use when the request only reads (searches on the fast path).
        self.read_only = False
        #: PostgreSQL, set before first use by the group commit: where the repository holds
        #: its server-id creates until the group writes them (storage/pending_creates.py).
        self.pending_creates: PendingCreates | None = None

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            connection = self.services.engine.connect()
            if self.read_only and connection.dialect.name == "postgresql":
                # Each statement on its own: no BEGIN and ROLLBACK round trips for a search.
                connection.execution_options(isolation_level="AUTOCOMMIT")
            self._connection = connection
        return self._connection

    @contextlib.contextmanager
    def using(self, connection: Connection) -> Iterator[None]:
        """Work on ``connection``, which belongs to the caller (who closes it), for a while."""
        if self._connection is not None:
            raise RuntimeError("this context already has a connection")
        self._connection = connection
        try:
            yield
        finally:
            self._connection = None
            self._repository = None

    @property
    def audit_connection(self) -> Connection:
        """The audit trail's connection: :attr:`connection`, unless the trail has a database
        of its own (then a connection of its own, committed and closed with this context)."""
        engine = self.services.audit_engine
        if engine is None:
            return self.connection
        if self._audit_connection is None:
            connection = engine.connect()
            if self._writing:
                begin_write(connection, wait=self.wait_for_writer)
            self._audit_connection = connection
        return self._audit_connection

    def commit(self) -> None:
        """Commit the request's transaction, remembering that a write happened.

        With an audit database of its own, its transaction commits first: if the main one
        then fails, the trail holds an event whose Provenance is missing, never the reverse.
        """
        if self._audit_connection is not None:
            self._audit_connection.commit()
        self.connection.commit()
        self.committed_once = True

    def rollback(self) -> None:
        """Roll back the request's transaction (the audit trail's too, if it has its own)."""
        if self._audit_connection is not None:
            self._audit_connection.rollback()
        self.connection.rollback()

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """A savepoint on the request's connection, and on the audit trail's when it has a
        database of its own: an error inside undoes what was written there too."""
        with self.connection.begin_nested():
            if self.services.audit_engine is None:
                yield
            else:
                with self.audit_connection.begin_nested():
                    yield

    @property
    def repository(self) -> Repository:
        if self._repository is None:
            services = self.services
            self._repository = Repository(
                self.connection,
                now=services.now,
                new_id=services.new_id,
                audit_connection=(
                    None if services.audit_engine is None else lambda: self.audit_connection
                ),
                pending=self.pending_creates,
            )
        return self._repository

    def close(self) -> None:
        if self._audit_connection is not None:
            self._audit_connection.close()
            self._audit_connection = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @property
    def settings(self) -> Settings:
        return self.services.settings

    @property
    def access(self) -> Access:
        """The caller (set by the authentication middleware for every request under /fhir).

        Without the middleware (code calling interactions directly, as the CLI does) the
        caller is the server itself.
        """
        access: Access = self.request.scope.get(SCOPE_KEY, UNRESTRICTED)
        return access

    @functools.cached_property
    def base_url(self) -> str:
        """The FHIR base: configured, or this request's root plus ``/fhir`` (worked out once)."""
        return fhir_base(self.request.scope, self.services.settings)

    def header(self, name: str) -> str | None:
        return self.request.headers.get(name)

    def prefer(self, key: str) -> str | None:
        """A token of the ``Prefer`` header (RFC 7240), e.g. ``return`` or ``handling``."""
        for part in (self.header("prefer") or "").split(","):
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"').lower()
        return None

    def begin_write(self) -> None:
        self._writing = True
        begin_write(self.connection, wait=self.wait_for_writer)
        if self._audit_connection is not None:
            begin_write(self._audit_connection, wait=self.wait_for_writer)

    def url_of(self, stored: StoredResource, *, versioned: bool = False) -> str:
        url = f"{self.base_url}/{stored.resource_type}/{stored.id}"
        return f"{url}/_history/{stored.version}" if versioned else url

    def respond(
        self,
        content: bytes | dict[str, Any] | None,
        status: int = 200,
        headers: dict[str, str] | None = None,
    ) -> Response:
        return render_response(self.request, content, status, headers)


# A coroutine on purpose: it does no blocking work (see FhirContext), and a plain ``def``
# dependency would cost a thread-pool hop on every request.
async def _context(request: Request) -> AsyncIterator[FhirContext]:
    services: Services = request.app.state.services
    # Refuse an unsatisfiable Accept or _format (406) before doing any work.
    response_format(request)
    context = FhirContext(request, services)
    try:
        yield context
    finally:
        context.close()


ContextDep = Annotated[FhirContext, Depends(_context)]


def check_type(resource_type: str) -> str:
    """404 unless the server serves ``resource_type`` (405 for the base's own paths)."""
    if resource_type in _BASE_PATHS:
        raise MethodNotAllowed(f"/{resource_type} supports GET only")
    if resource_type not in SERVED:
        raise ResourceNotFound(
            f"Resource type {resource_type!r} is not served here; served types: "
            + ", ".join(sorted(SERVED))
        )
    return resource_type


async def read_body(request: Request) -> bytes:
    """The request body, refused with 413 when over the configured limit."""
    services: Services = request.app.state.services
    limit = services.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


BodyDep = Annotated[bytes, Depends(read_body)]

_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir"}


def body_format(content_type: str | None) -> str:
    """FHIR_JSON or FHIR_XML for a request ``Content-Type``; 415 for anything else."""
    media = media_type(content_type)
    if media in _JSON_TYPES or media == "":
        return FHIR_JSON
    if media in _XML_TYPES:
        return FHIR_XML
    raise UnsupportedMediaType(
        f"Content-Type {content_type!r} is not supported; send application/fhir+json"
        " or application/fhir+xml"
    )


def parse_document(body: bytes, content_type: str | None) -> dict[str, Any]:
    """Parse a request body as a FHIR resource (JSON or XML), without validating it."""
    media = body_format(content_type)
    if not body.strip():
        raise InvalidRequest("The request body is empty; a FHIR resource is expected")
    if media == FHIR_XML:
        return resource_from_xml(body)
    try:
        document = jsonio.loads(body)
    except jsonio.JsonError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest("The request body is not a JSON object")
    return document


def check_resource(
    document: dict[str, Any], resource_type: str, resource_id: str | None = None
) -> dict[str, Any]:
    """Check type and id against the URL, then validate (422 with every issue found)."""
    if document.get("resourceType") != resource_type:
        raise InvalidRequest(
            f"resourceType {document.get('resourceType')!r} does not match the URL's"
            f" {resource_type!r}"
        )
    if resource_id is not None:
        body_id = document.get("id")
        if body_id is None:
            raise InvalidRequest("An update must carry the resource id in its body")
        if body_id != resource_id:
            raise InvalidRequest(
                f"The id in the body ({body_id!r}) differs from the id in the URL ({resource_id!r})"
            )
    validate_resource(document)
    return document


def if_match_version(ctx: FhirContext) -> int | None:
    value = ctx.header("if-match")
    return parse_version_tag(value) if value else None


def find_by_criteria(
    ctx: FhirContext,
    resource_type: str,
    query: str,
    *,
    limit: int = 2,
    interaction: str = "search-type",
) -> list[StoredResource]:
    """Resources matching a conditional interaction's criteria (at most ``limit``).

    Only what the caller may reach for ``interaction`` is matched: a conditional write can
    neither find nor reveal another patient's resources.
    """
    from .authorization import decide, decision_criterion  # authorization imports this module

    params = parse_qsl(query.lstrip("?"), keep_blank_values=True)
    if not params:
        raise PreconditionFailed("Conditional interaction without search criteria")
    request = parse_search(
        resource_type, params, base_url=ctx.base_url, default_count=limit, strict=True
    )
    request.count = limit
    request.total = "none"
    request.conditions.extend(decision_criterion(ctx, decide(ctx, resource_type, interaction)))
    return run_search(ctx.repository, request).matches


def resource_headers(stored: StoredResource) -> dict[str, str]:
    """``ETag`` and ``Last-Modified`` of a stored version."""
    return {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(moment: datetime) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate) of a naive UTC or aware datetime.

    What ``email.utils.format_datetime(..., usegmt=True)`` returns, in a fifth of its time:
    every read sends one.
    """
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return (
        f"{_DAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]}"
        f" {moment.year:04d} {moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} GMT"
    )
