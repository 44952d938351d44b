"""Runtime settings, read from the environment with the ``CAREPLAN_`` prefix.

Nothing reads the environment at import time: build a :class:`Settings` and pass it to
:func:`careplan_fhir.app.create_app`.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict


class TrustedIssuer(BaseModel):
    """An external authorization server whose bearer tokens this server accepts."""

    issuer: str
    #: Where its signing keys are: a JWKS URL (fetched, cached, re-fetched on an unknown key
    #: id) or a local JWKS file (re-read when it changes). Exactly one of the two.
    jwks_uri: str = ""
    jwks_file: str = ""


class Settings(BaseSettings):
    """Everything the server needs to start."""

    model_config = SettingsConfigDict(env_prefix="CAREPLAN_", extra="ignore")

    database_url: str = "sqlite:///./careplan.db"
    #: Public base URL of the FHIR endpoint; used in Location headers, fullUrls and links.
    #: Empty means "derive it from each request".
    base_url: str = ""
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 4 * 1024 * 1024
    #: Default and largest page size for searches.
    default_page_size: int = 20
    max_page_size: int = 1000
    #: Largest number of concurrent requests in flight before the server answers 503.
    max_in_flight: int = 256
    #: SQLite only: how often a background thread checkpoints the write-ahead log.
    wal_checkpoint_seconds: float = 1.0
    #: Echo SQL to the log (debugging only).
    echo_sql: bool = False

    # -- security (SMART on FHIR); see docs/security.md --------------------------------------
    #: Bearer tokens are required on the FHIR API. Turning this off is for local experiments
    #: only and logs a warning on every start.
    auth_enabled: bool = True
    #: The issuer (``iss``) of the tokens this server mints itself (the token endpoint and
    #: ``careplan-fhir token``); tokens from it are checked against the local signing key.
    auth_issuer: str = "http://127.0.0.1:8080/auth"
    #: Accepted ``aud`` values besides the FHIR base URL (configured or derived per request).
    auth_audiences: list[str] = []
    #: The server's own signing key (a private JWK, created on first use if missing).
    auth_signing_key_file: str = "./careplan-dev-key.json"
    #: External authorization servers whose tokens are accepted too.
    auth_trusted_issuers: list[TrustedIssuer] = []
    #: Registered SMART Backend Services clients (a JSON file; see docs/security.md).
    auth_clients_file: str = ""
    #: Lifetime of the access tokens the token endpoint issues.
    access_token_seconds: int = 300
    #: Origins allowed to call the API from a browser (CORS); empty means none.
    cors_origins: list[str] = []
    #: Record an AuditEvent for every access decision.
    audit_enabled: bool = True
    #: Where AuditEvents are stored from: ``process``, a writer process beside the server (its
    #: Python then never competes with requests for the GIL), or ``thread``, a thread of the
    #: server's own process. An in-memory database always uses the thread.
    audit_writer: Literal["process", "thread"] = "process"
    #: Where the audit trail (AuditEvents) is stored (:func:`audit_database_for`): empty, the
    #: default, a sibling file when the main database is a SQLite file (``careplan.db`` →
    #: ``careplan-audit.db``) and the main database otherwise; ``main``, the main database
    #: always; anything else, the URL of a database of its own. A database of its own is
    #: migrated with the main one, and ``careplan-fhir db upgrade`` moves the events the main
    #: database still holds into it. On SQLite a file of its own keeps the trail's write
    #: volume (an event per request) out of the clinical database's write-ahead log, its
    #: checkpoints and its readers' caches (docs/audit.md, "Where the trail is stored").
    audit_database_url: str = ""
    #: Give every write a Provenance unless the client supplied one.
    auto_provenance: bool = True

    # -- the patient portal; see docs/portal.md -----------------------------------------------
    #: How long an invitation link works unless the inviter asks for less (or more, up to the
    #: maximum below).
    portal_invitation_seconds: int = 7 * 24 * 3600
    portal_invitation_max_seconds: int = 30 * 24 * 3600
    #: Lifetime of a portal session (the cookie's token); the invitation link starts a new one.
    portal_session_seconds: int = 3600
    #: The patients' time zone (IANA name): what "today" and "overdue" mean on the portal.
    portal_timezone: str = "UTC"

    @property
    def audit_url(self) -> str:
        """The URL of the audit trail's database (:func:`audit_database_for`)."""
        return audit_database_for(self.database_url, self.audit_database_url)


#: The value of ``audit_database_url`` that keeps the trail in the main database.
AUDIT_IN_MAIN = "main"


def audit_database_for(database_url: str, audit_database_url: str = "") -> str:
    """The audit trail's database for these two settings (``Settings.audit_url``).

    ``audit_database_url`` ``main`` is the main database, any other non-empty value a URL of
    its own; empty is :func:`sibling_audit_url` where there is one, else the main database.
    """
    if audit_database_url == AUDIT_IN_MAIN:
        return database_url
    if audit_database_url:
        return audit_database_url
    return sibling_audit_url(database_url) or database_url


def sibling_audit_url(database_url: str) -> str | None:
    """For a SQLite database in a file, its audit trail's file beside it: same directory,
    ``<stem>-audit<suffix>``, same query string (``sqlite:///./careplan.db`` →
    ``sqlite:///./careplan-audit.db``). None for an in-memory database, a ``file:`` URI (which
    may name one; the rule of ``storage.db.sqlite_file``) and other backends."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(database_url)
    except ArgumentError:
        return None
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):
        return None
    folder, name = os.path.split(database)
    stem, suffix = os.path.splitext(name)
    sibling = url.set(database=os.path.join(folder, f"{stem}-audit{suffix}"), query={})
    # The query string as written (SQLAlchemy would render its parameters sorted).
    _, mark, query = database_url.partition("?")
    return sibling.render_as_string(hide_password=False) + mark + query
