"""One AuditEvent per request, recorded once the response status is known.

The middleware wraps ``send`` to see the status line (and the ``Location`` and ``ETag`` headers,
which name the version written or read), lets the request run, then gathers what the event is
made of (:class:`careplan_fhir.audit.events.AuditFacts`) from the method, the path, the query,
the peer address and the caller the authentication middleware left in
``scope["careplan.access"]``, and hands them to the audit writer (:mod:`careplan_fhir.audit.sink`,
in a process of its own: :mod:`careplan_fhir.audit.process_sink`), which builds the event
(:func:`~careplan_fhir.audit.events.event_from_facts`) off the request path. The response has
been sent by then: auditing adds no latency, except that a request waits before it runs while
the writer has ``capacity`` events waiting (``admit``, back-pressure).

It sits outside the authentication middleware (so refusals are recorded too) and inside the
load shedder (503s for load are not access decisions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .events import (
    ACCESS_KEY,
    CLIENT_KEY,
    INTERACTION_KEY,
    REASON_KEY,
    AuditFacts,
    Caller,
    Interaction,
    caller_of,
    classify,
    event_from_facts,
    facts_of,
)
from .sink import AuditWriter

logger = logging.getLogger(__name__)


def _etag_version(value: str | None) -> str | None:
    if not value:
        return None
    text = value.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    return text if text.isdigit() else None


def audit_facts_for(
    scope: Scope,
    interaction: Interaction,
    status: int,
    recorded: datetime,
    *,
    location: str | None = None,
    etag: str | None = None,
) -> AuditFacts:
    """What the AuditEvent of the request ``scope`` that ended with ``status`` is made of."""
    hinted = scope.get(INTERACTION_KEY)
    if isinstance(hinted, str) and hinted != interaction.code:
        interaction = Interaction(hinted, "E")
    client = scope.get("client")
    reason = scope.get(REASON_KEY)
    access = scope.get(ACCESS_KEY)
    caller = caller_of(access, status)
    if access is None and interaction.code in ("token", "introspect"):
        # No bearer token on these: the caller is the client the endpoint authenticated.
        authenticated = scope.get(CLIENT_KEY)
        caller = (
            Caller("client", client_id=authenticated)
            if isinstance(authenticated, str) and authenticated
            else Caller("anonymous")
        )
    return facts_of(
        interaction,
        caller,
        status=status,
        recorded=recorded,
        query=bytes(scope.get("query_string") or b"").decode("latin-1"),
        address=str(client[0]) if client else None,
        location=location,
        etag_version=_etag_version(etag),
        reason=reason if isinstance(reason, str) else None,
    )


def audit_event_for(
    scope: Scope,
    interaction: Interaction,
    status: int,
    recorded: datetime,
    *,
    location: str | None = None,
    etag: str | None = None,
) -> dict[str, Any]:
    """The AuditEvent of the request ``scope`` that ended with ``status``."""
    return event_from_facts(
        audit_facts_for(scope, interaction, status, recorded, location=location, etag=etag)
    )


class AuditMiddleware:
    """Record an AuditEvent for every request under ``/fhir``, the token endpoints and the
    patient portal's pages and actions (``/portal``, its stylesheet excepted)."""

    def __init__(self, app: ASGIApp, sink: AuditWriter, now: Callable[[], datetime]) -> None:
        self.app = app
        self.sink = sink
        self.now = now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        interaction = classify(scope["method"], scope["path"])
        if interaction is None:
            await self.app(scope, receive, send)
            return
        status = 500
        location: str | None = None
        etag: str | None = None

        async def watch(message: Message) -> None:
            nonlocal status, location, etag
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers") or ():
                    if name == b"location":
                        location = bytes(value).decode("latin-1")
                    elif name == b"etag":
                        etag = bytes(value).decode("latin-1")
            await send(message)

        await self.sink.admit()
        try:
            await self.app(scope, receive, watch)
        finally:
            # Cancelled or crashed too: still an access decision. No awaiting here.
            facts = self._facts(scope, interaction, status, location, etag)
            if facts is not None:
                self.sink.submit_facts(facts)

    def _facts(
        self,
        scope: Scope,
        interaction: Interaction,
        status: int,
        location: str | None,
        etag: str | None,
    ) -> AuditFacts | None:
        try:
            return audit_facts_for(
                scope, interaction, status, self.now(), location=location, etag=etag
            )
        except Exception:  # noqa: BLE001 - a bug here must not fail the request
            logger.exception("audit event for %s %s could not be built", scope["method"], status)
            return None
