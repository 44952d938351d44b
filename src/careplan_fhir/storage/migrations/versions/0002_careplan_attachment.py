"""careplan attachment: one row per template version applied to an encounter

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "careplan_attachment",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("encounter", sa.String(length=128), nullable=False),
        sa.Column("template_url", sa.String(length=1000), nullable=False),
        sa.Column("template_version", sa.String(length=64), nullable=False),
        sa.Column("careplan_id", sa.String(length=64), nullable=False),
        sa.Column("created", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint(
            "encounter", "template_url", "template_version", name="uq_careplan_attachment"
        ),
    )


def downgrade() -> None:
    op.drop_table("careplan_attachment")
