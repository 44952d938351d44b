"""Runtime settings, read from the environment with the ``CAREPLAN_`` prefix.

Nothing reads the environment at import time: build a :class:`Settings` and pass it to
:func:`careplan_fhir.app.create_app`.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


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
    #: Record an AuditEvent for every access decision.
    audit_enabled: bool = True
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
