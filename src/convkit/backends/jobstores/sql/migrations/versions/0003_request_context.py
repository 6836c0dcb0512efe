"""Request context of a job: the submit request's id and W3C traceparent.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add ``request_id`` and ``traceparent``, both nullable (older jobs have neither)."""
    with op.batch_alter_table("convkit_jobs") as batch:
        batch.add_column(sa.Column("request_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    """Drop both columns; jobs lose nothing but their request context."""
    with op.batch_alter_table("convkit_jobs") as batch:
        batch.drop_column("traceparent")
        batch.drop_column("request_id")
