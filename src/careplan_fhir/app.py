"""``create_app(settings)``: the ASGI application. Nothing happens at import time."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path

import orjson
from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from careplan_fhir import __version__
from careplan_fhir.audit.logs import install_log_redaction
from careplan_fhir.audit.middleware import AuditMiddleware
from careplan_fhir.audit.process_sink import ProcessAuditSink
from careplan_fhir.audit.sink import AuditSink, AuditWriter
from careplan_fhir.auth.backend_services import backend_services_for
from careplan_fhir.auth.keys import load_or_create_signing_key
from careplan_fhir.auth.middleware import Authenticate, make_verifier
from careplan_fhir.fhir.dates import utc_now
from careplan_fhir.fhir.ids import time_ordered_id
from careplan_fhir.fhir.outcome import issue, operation_outcome
from careplan_fhir.http_security import CORSMiddleware, HtmlSecurityHeaders, cors_options
from careplan_fhir.portal import pages as portal_pages
from careplan_fhir.rest import auth_introspect, auth_token, smart_configuration
from careplan_fhir.rest.batch_transaction import batch_or_transaction
from careplan_fhir.rest.context import Services
from careplan_fhir.rest.errors import install_error_handlers
from careplan_fhir.rest.fast_paths import FastPaths
from careplan_fhir.rest.loop_database import LoopDatabase
from careplan_fhir.rest.router import fhir_router
from careplan_fhir.settings import Settings
from careplan_fhir.storage.audit_move import holds_audit_events
from careplan_fhir.storage.db import (
    WalCheckpointer,
    display_url,
    make_engine,
    normalise_url,
    sqlite_file,
)

logger = logging.getLogger(__name__)


def new_resource_id() -> str:
    """A server-assigned logical id (FHIR ids: up to 64 of [A-Za-z0-9-.]): a version 7 UUID,
    so that ids made later sort later (careplan_fhir/fhir/ids.py says why)."""
    return time_ordered_id()


class LoadShedder:
    """Answer 503 at once when too many requests are in flight, instead of queueing them.

    A stalled server is worse than a refused request: clients retry a 503 (with Retry-After)
    but time out on a queue.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0
        self._body = orjson.dumps(
            operation_outcome([issue("Server busy; retry shortly", code="transient")])
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/fhir+json;charset=utf-8"),
                        (b"retry-after", b"1"),
                        (b"content-length", str(len(self._body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": self._body})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def audit_writer_for(
    settings: Settings, engine: Engine, now: Callable[[], datetime], *, own_database: bool = False
) -> AuditWriter | None:
    """Where AuditEvents are stored from, in batches (audit/sink.py, audit/process_sink.py).

    ``engine`` is the audit trail's (``own_database``: not the main database). A writer
    process unless the settings ask for the thread, the database lives in this process's
    memory, or the app was given a clock of its own (tests), which another process cannot read.
    """
    if not settings.audit_enabled:
        return None
    in_memory = engine.dialect.name == "sqlite" and sqlite_file(engine) is None
    if settings.audit_writer == "process" and not in_memory and now is utc_now:
        own_checkpoints = own_database and engine.dialect.name == "sqlite"
        return ProcessAuditSink(settings.audit_url, checkpoints=own_checkpoints)
    return AuditSink(engine, now=now)


def audit_engine_for(settings: Settings, echo: bool = False) -> Engine | None:
    """The audit trail's own engine, or None when the trail lives in the main database."""
    if normalise_url(settings.audit_url) == normalise_url(settings.database_url):
        return None
    # No background checkpoints: the trail's writer checkpoints its WAL as it commits.
    return make_engine(settings.audit_url, echo=echo)


def warn_of_audit_events_left_in_main(settings: Settings, engine: Engine) -> None:
    """Log a warning when the trail has a database of its own but the main one (``engine``)
    still holds AuditEvents: reads and searches no longer find them until they are moved."""
    if holds_audit_events(engine):
        logger.warning(
            "the main database %s still holds AuditEvents, but the audit trail is stored in %s"
            " (CAREPLAN_AUDIT_DATABASE_URL): reads and searches do not find them there. Run"
            " `careplan-fhir db upgrade` to move them (docs/audit.md, 'Where the trail is"
            " stored').",
            display_url(settings.database_url),
            display_url(settings.audit_url),
        )


def create_app(
    settings: Settings | None = None,
    *,
    now: Callable[[], datetime] = utc_now,
    new_id: Callable[[], str] = new_resource_id,
) -> FastAPI:
    """Build the application for ``settings`` (the database must already be migrated)."""
    settings = settings or Settings()
    install_log_redaction()  # uvicorn's access log: no query strings, no client addresses
    engine = make_engine(settings.database_url, echo=settings.echo_sql, background_checkpoints=True)
    checkpointer = (
        WalCheckpointer(engine, settings.wal_checkpoint_seconds)
        if engine.dialect.name == "sqlite"
        else None
    )
    audit_engine = audit_engine_for(settings, echo=settings.echo_sql)
    audit_sink = audit_writer_for(
        settings, audit_engine or engine, now, own_database=audit_engine is not None
    )
    loop_database = LoopDatabase(engine) if engine.dialect.name == "postgresql" else None

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if checkpointer is not None:
            checkpointer.start()
        if audit_sink is not None:
            audit_sink.start()
        if loop_database is not None:
            await loop_database.open()
        if audit_engine is not None:
            warn_of_audit_events_left_in_main(settings, engine)
        yield
        if loop_database is not None:
            await loop_database.close()
        if audit_sink is not None:
            audit_sink.stop()  # everything queued is stored first
        if checkpointer is not None:
            checkpointer.stop()
        engine.dispose()
        if audit_engine is not None:
            audit_engine.dispose()

    app = FastAPI(
        lifespan=lifespan,
        title="careplan-fhir",
        version=__version__,
        description="FHIR R4 care-plan module. The FHIR base is /fhir.",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.services = Services(
        settings=settings,
        engine=engine,
        now=now,
        new_id=new_id,
        loop_database=loop_database,
        audit_engine=audit_engine,
    )
    app.state.wal_checkpointer = checkpointer
    app.state.audit_sink = audit_sink
    install_error_handlers(app)
    # OAuth endpoints first: /fhir/.well-known/smart-configuration must win over /fhir/{type}/{id}.
    for oauth_router in (smart_configuration.router, auth_token.router, auth_introspect.router):
        app.include_router(oauth_router)
    app.include_router(fhir_router(), prefix="/fhir")
    app.include_router(portal_pages.router)  # /portal: server-rendered pages (docs/portal.md)
    app.add_api_route("/", portal_pages.root_redirect, methods=["GET"], include_in_schema=False)
    # The base URL itself (no trailing slash) takes batch and transaction Bundles too.
    app.add_api_route("/fhir", batch_or_transaction, methods=["POST"], include_in_schema=False)
    app.add_middleware(FastPaths, services=app.state.services)
    # Tokens are checked against the wall clock, never the injected one (tests move theirs).
    signing_key = load_or_create_signing_key(Path(settings.auth_signing_key_file))
    app.state.signing_key = signing_key
    app.state.token_verifier = make_verifier(settings, signing_key.jwks(), utc_now)
    app.state.services.signing_key = signing_key
    app.state.services.backend_services = backend_services_for(
        settings, signing_key, app.state.token_verifier
    )
    if not settings.auth_enabled:
        logger.warning(
            "AUTHORIZATION IS OFF (CAREPLAN_AUTH_ENABLED=false): every request to /fhir is"
            " served without a token. Never do this with real patient data."
        )
    app.add_middleware(Authenticate, settings=settings, verifier=app.state.token_verifier)
    if audit_sink is not None:
        # Outside authentication, so that refused requests are audited too.
        app.add_middleware(AuditMiddleware, sink=audit_sink, now=now)
    app.add_middleware(HtmlSecurityHeaders)
    if settings.cors_origins:
        # Outside authentication: a preflight carries no token.
        app.add_middleware(CORSMiddleware, **cors_options(settings))  # type: ignore[arg-type]
    app.add_middleware(LoadShedder, limit=settings.max_in_flight)  # outermost

    return app


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory``: settings from ``CAREPLAN_*`` variables, read now.

    The serving process's own tuning happens here, not in :func:`create_app` (which tests call
    many times): everything built so far (modules, the FHIR models, the app) lives as long as
    the process, so it is moved out of the garbage collector's sight (``gc.freeze``). A full
    collection then walks only what requests allocate, instead of pausing every thread for
    tens of milliseconds over the whole heap.

    The interpreter's thread switch interval goes from 5 ms to 1 ms: the audit writer's thread
    holds the GIL while it prepares a batch, and a request on the event loop waited up to the
    whole interval for it (a request's own work is a fraction of a millisecond).
    """
    application = create_app(Settings())
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(0.001)
    return application
