"""audit trail: AuditEvents in a table of their own (storage/audit_log.py)

Existing AuditEvents move out of the generic tables: each is copied (its stored bytes
unchanged) into ``audit_event`` with its search values, then its resource, version and index
rows are deleted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX_TABLES = ("idx_token", "idx_string", "idx_reference", "idx_date", "idx_uri", "idx_quantity")


def upgrade() -> None:
    op.create_table(
        "audit_event",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("res_id", sa.String(length=64), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("recorded_low", sa.DateTime(), nullable=True),
        sa.Column("recorded_high", sa.DateTime(), nullable=True),
        sa.Column("type_system", sa.String(length=255), nullable=True),
        sa.Column("type_code", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=8), nullable=True),
        sa.Column("outcome", sa.String(length=8), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("res_id", name="uq_audit_event_id"),
    )
    op.create_index("ix_audit_event_recorded", "audit_event", ["recorded_low"])
    op.create_index("ix_audit_event_updated", "audit_event", ["last_updated"])
    op.create_table(
        "audit_event_key",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("event_pk", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=True),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("exact", sa.String(length=1000), nullable=True),
        sa.ForeignKeyConstraint(["event_pk"], ["audit_event.pk"]),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_audit_event_key_lookup", "audit_event_key", ["name", "value", "system"])
    op.create_index("ix_audit_event_key_event", "audit_event_key", ["event_pk"])
    _move_existing_events()


def _move_existing_events() -> None:
    # The extraction the application uses for new events, so moved ones are found alike.
    from careplan_fhir.storage.audit_log import AuditLog

    connection = op.get_bind()
    log = AuditLog(connection)
    rows = connection.execute(
        sa.text(
            "SELECT res_id, last_updated, raw FROM resource"
            " WHERE res_type = 'AuditEvent' AND deleted = :no AND raw IS NOT NULL ORDER BY pk"
        ),
        {"no": False},
    ).all()
    for start in range(0, len(rows), 500):
        batch = rows[start : start + 500]
        log.insert_many(
            [
                (row.res_id, _as_datetime(row.last_updated), bytes(row.raw), orjson.loads(row.raw))
                for row in batch
            ]
        )
    audit = "(SELECT pk FROM resource WHERE res_type = 'AuditEvent')"
    for table in _INDEX_TABLES:
        connection.execute(sa.text(f"DELETE FROM {table} WHERE resource_pk IN {audit}"))
    connection.execute(sa.text(f"DELETE FROM resource_version WHERE resource_pk IN {audit}"))
    connection.execute(sa.text("DELETE FROM resource WHERE res_type = 'AuditEvent'"))


def _as_datetime(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def downgrade() -> None:
    connection = op.get_bind()
    kept = connection.execute(sa.text("SELECT count(*) FROM audit_event")).scalar_one()
    if kept:
        raise RuntimeError(
            f"audit_event holds {kept} AuditEvents: downgrading below 0005 would lose the audit"
            " trail; export them first"
        )
    op.drop_index("ix_audit_event_key_event", table_name="audit_event_key")
    op.drop_index("ix_audit_event_key_lookup", table_name="audit_event_key")
    op.drop_table("audit_event_key")
    op.drop_index("ix_audit_event_updated", table_name="audit_event")
    op.drop_index("ix_audit_event_recorded", table_name="audit_event")
    op.drop_table("audit_event")
