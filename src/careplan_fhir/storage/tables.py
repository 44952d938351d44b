"""SQLModel tables: the current resource, every version, and one index table per parameter type.

The layout follows HAPI FHIR's JPA schema and Blaze's split between versions and indexes:

* ``resource``: one row per logical resource, its current version, its JSON (``JSONB`` on
  PostgreSQL, for SQL-side inspection) and the exact bytes served on reads.
* ``resource_version``: one immutable row per version, deletes included, so history is never lost.
* ``idx_token``, ``idx_string``, ``idx_reference``, ``idx_date``, ``idx_uri``, ``idx_quantity``:
  search-index rows of the current version, rewritten in the same transaction as the resource.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, LargeBinary, String, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

JSON_DOCUMENT = JSON().with_variant(JSONB(), "postgresql")


class ResourceRow(SQLModel, table=True):
    """The current version of one logical resource."""

    __tablename__ = "resource"
    __table_args__ = (
        UniqueConstraint("res_type", "res_id", name="uq_resource_type_id"),
        Index("ix_resource_type_updated", "res_type", "last_updated"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    res_id: str = Field(sa_column=Column(String(64), nullable=False))
    version: int = Field(nullable=False)
    last_updated: datetime = Field(sa_column=Column(DateTime, nullable=False))
    deleted: bool = Field(default=False, nullable=False)
    content: Any = Field(default=None, sa_column=Column(JSON_DOCUMENT, nullable=True))
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class ResourceVersionRow(SQLModel, table=True):
    """One immutable version of a resource; a delete is a version without content."""

    __tablename__ = "resource_version"
    __table_args__ = (
        UniqueConstraint("res_type", "res_id", "version", name="uq_version_type_id_version"),
        Index("ix_version_type_updated", "res_type", "last_updated"),
        Index("ix_version_updated", "last_updated"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="resource.pk", nullable=False, index=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    res_id: str = Field(sa_column=Column(String(64), nullable=False))
    version: int = Field(nullable=False)
    last_updated: datetime = Field(sa_column=Column(DateTime, nullable=False))
    method: str = Field(sa_column=Column(String(8), nullable=False))
    raw: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class TokenIndexRow(SQLModel, table=True):
    """A token value (code, Coding, CodeableConcept, Identifier, ContactPoint, boolean)."""

    __tablename__ = "idx_token"
    __table_args__ = (Index("ix_idx_token_lookup", "res_type", "param", "code", "system"),)

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="resource.pk", nullable=False, index=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    param: str = Field(sa_column=Column(String(64), nullable=False))
    system: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    code: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))


class StringIndexRow(SQLModel, table=True):
    """A string value, normalised (case and accents folded) and exact."""

    __tablename__ = "idx_string"
    __table_args__ = (Index("ix_idx_string_lookup", "res_type", "param", "value_norm"),)

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="resource.pk", nullable=False, index=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    param: str = Field(sa_column=Column(String(64), nullable=False))
    value_norm: str = Field(sa_column=Column(String(255), nullable=False))
    value_exact: str = Field(sa_column=Column(String(2000), nullable=False))


class ReferenceIndexRow(SQLModel, table=True):
    """A reference (relative, absolute or canonical) from a resource to another."""

    __tablename__ = "idx_reference"
    __table_args__ = (
        Index("ix_idx_reference_lookup", "res_type", "param", "target_id", "target_type"),
        Index("ix_idx_reference_target", "target_type", "target_id", "param"),
        Index("ix_idx_reference_url", "res_type", "param", "target_url"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="resource.pk", nullable=False, index=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    param: str = Field(sa_column=Column(String(64), nullable=False))
    target_type: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    target_id: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    target_url: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))
    target_version: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))


class DateIndexRow(SQLModel, table=True):
    """A date, dateTime, instant, Period or Timing as a half-open UTC range ``[low, high)``."""

    __tablename__ = "idx_date"
    __table_args__ = (Index("ix_idx_date_lookup", "res_type", "param", "low", "high"),)

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="resource.pk", nullable=False, index=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    param: str = Field(sa_column=Column(String(64), nullable=False))
    low: datetime = Field(sa_column=Column(DateTime, nullable=False))
    high: datetime = Field(sa_column=Column(DateTime, nullable=False))


class UriIndexRow(SQLModel, table=True):
    """A uri, url or canonical value."""

    __tablename__ = "idx_uri"
    __table_args__ = (Index("ix_idx_uri_lookup", "res_type", "param", "uri"),)

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="resource.pk", nullable=False, index=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    param: str = Field(sa_column=Column(String(64), nullable=False))
    uri: str = Field(sa_column=Column(String(1000), nullable=False))


class QuantityIndexRow(SQLModel, table=True):
    """A Quantity value with its system and code (or unit)."""

    __tablename__ = "idx_quantity"
    __table_args__ = (Index("ix_idx_quantity_lookup", "res_type", "param", "value"),)

    pk: int | None = Field(default=None, primary_key=True)
    resource_pk: int = Field(foreign_key="resource.pk", nullable=False, index=True)
    res_type: str = Field(sa_column=Column(String(64), nullable=False))
    param: str = Field(sa_column=Column(String(64), nullable=False))
    value: float = Field(nullable=False)
    system: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    code: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    unit: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))


INDEX_TABLES: tuple[type[SQLModel], ...] = (
    TokenIndexRow,
    StringIndexRow,
    ReferenceIndexRow,
    DateIndexRow,
    UriIndexRow,
    QuantityIndexRow,
)


class CarePlanAttachmentRow(SQLModel, table=True):
    """One template version applied to one encounter: the key that makes ``$attach-care-plan``
    retry-safe.

    The unique constraint on (encounter, template url, template version) lets exactly one of two
    concurrent attach calls store a plan; the other finds this row and answers with that plan.
    """

    __tablename__ = "careplan_attachment"
    __table_args__ = (
        UniqueConstraint(
            "encounter", "template_url", "template_version", name="uq_careplan_attachment"
        ),
    )

    pk: int | None = Field(default=None, primary_key=True)
    #: ``Encounter/{id}``
    encounter: str = Field(sa_column=Column(String(128), nullable=False))
    template_url: str = Field(sa_column=Column(String(1000), nullable=False))
    template_version: str = Field(sa_column=Column(String(64), nullable=False))
    careplan_id: str = Field(sa_column=Column(String(64), nullable=False))
    created: datetime = Field(sa_column=Column(DateTime, nullable=False))


class CheckInRow(SQLModel, table=True):
    """One daily check-in event of a plan: the key that makes a check-in alert once.

    ``key`` is :func:`careplan_fhir.workflows.check_in.check_in_key` (a SHA-256 of the plan id,
    the authored date and the answers). Its unique constraint lets exactly one of two identical
    submissions (a retry, a double tap, two concurrent requests) store the Observations and the
    alert; the other finds this row and answers with that check-in.
    """

    __tablename__ = "check_in"
    __table_args__ = (UniqueConstraint("key", name="uq_check_in_key"),)

    pk: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=Column(String(64), nullable=False))
    careplan_id: str = Field(sa_column=Column(String(64), nullable=False))
    questionnaireresponse_id: str = Field(sa_column=Column(String(64), nullable=False))
    created: datetime = Field(sa_column=Column(DateTime, nullable=False))


class PortalInvitationRow(SQLModel, table=True):
    """One patient-portal invitation (``Patient/$portal-invitation``, docs/portal.md).

    The link itself is a token signed by the server's key that names this row's
    ``invitation_id``; the row is what lets a clinician revoke a link before it expires, and
    what every portal session started from the link is checked against.
    """

    __tablename__ = "portal_invitation"
    __table_args__ = (
        UniqueConstraint("invitation_id", name="uq_portal_invitation_id"),
        Index("ix_portal_invitation_patient", "patient_id"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    invitation_id: str = Field(sa_column=Column(String(64), nullable=False))
    patient_id: str = Field(sa_column=Column(String(64), nullable=False))
    created: datetime = Field(sa_column=Column(DateTime, nullable=False))
    expires: datetime = Field(sa_column=Column(DateTime, nullable=False))
    #: When it was revoked; None while it works.
    revoked: datetime | None = Field(default=None, sa_column=Column(DateTime, nullable=True))
    #: Who invited (the token's client id or subject), for the record.
    issued_by: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))


class AuditEventRow(SQLModel, table=True):
    """One AuditEvent: the audit trail's own append-only table (storage/audit_log.py).

    An AuditEvent is written once per request and never changed (the trail is append-only),
    so it needs neither the ``resource``/``resource_version`` pair nor a dozen generic index
    rows: its single-valued search values are columns here, its repeating ones
    (:class:`AuditEventKeyRow`) a few narrow rows beside it.
    """

    __tablename__ = "audit_event"
    __table_args__ = (
        UniqueConstraint("res_id", name="uq_audit_event_id"),
        Index("ix_audit_event_recorded", "recorded_low"),
        Index("ix_audit_event_updated", "last_updated"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    res_id: str = Field(sa_column=Column(String(64), nullable=False))
    last_updated: datetime = Field(sa_column=Column(DateTime, nullable=False))
    #: ``recorded`` as the half-open UTC range ``[low, high)`` of its precision.
    recorded_low: datetime | None = Field(default=None, sa_column=Column(DateTime, nullable=True))
    recorded_high: datetime | None = Field(default=None, sa_column=Column(DateTime, nullable=True))
    type_system: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    type_code: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    action: str | None = Field(default=None, sa_column=Column(String(8), nullable=True))
    outcome: str | None = Field(default=None, sa_column=Column(String(8), nullable=True))
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


#: The search-index table of each kind of index entry (storage/indexing.py ``IndexEntries``).
INDEX_TABLE_BY_KIND: dict[str, type[SQLModel]] = {
    "token": TokenIndexRow,
    "string": StringIndexRow,
    "reference": ReferenceIndexRow,
    "date": DateIndexRow,
    "uri": UriIndexRow,
    "quantity": QuantityIndexRow,
}


class AuditEventKeyRow(SQLModel, table=True):
    """A repeating search value of an AuditEvent: ``name`` is the search parameter.

    Tokens keep their system and code (``subtype``, ``altid``); references their target type
    and id (``agent``, ``entity``, ``patient``); ``address`` its case- and accent-folded text in
    ``value`` and the text as sent in ``exact``.
    """

    __tablename__ = "audit_event_key"
    __table_args__ = (
        Index("ix_audit_event_key_lookup", "name", "value", "system"),
        Index("ix_audit_event_key_event", "event_pk"),
    )

    pk: int | None = Field(default=None, primary_key=True)
    event_pk: int = Field(foreign_key="audit_event.pk", nullable=False)
    name: str = Field(sa_column=Column(String(32), nullable=False))
    system: str | None = Field(default=None, sa_column=Column(String(255), nullable=True))
    value: str = Field(sa_column=Column(String(255), nullable=False))
    exact: str | None = Field(default=None, sa_column=Column(String(1000), nullable=True))
