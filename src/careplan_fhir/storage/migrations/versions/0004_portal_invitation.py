"""portal invitation: one row per patient-portal invitation link (revocation)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "portal_invitation",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("invitation_id", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.Column("expires", sa.DateTime(), nullable=False),
        sa.Column("revoked", sa.DateTime(), nullable=True),
        sa.Column("issued_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("invitation_id", name="uq_portal_invitation_id"),
    )
    op.create_index("ix_portal_invitation_patient", "portal_invitation", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_portal_invitation_patient", table_name="portal_invitation")
    op.drop_table("portal_invitation")
