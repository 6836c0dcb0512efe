"""Upload conversion jobs: a job may have an uploaded source document instead of a template.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the source columns and let template be NULL (batch mode: SQLite recreates the table)."""
    with op.batch_alter_table("convkit_jobs") as batch:
        batch.alter_column("template", existing_type=sa.String(255), nullable=True)
        batch.add_column(sa.Column("source_key", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("source_format", sa.String(32), nullable=True))
        batch.add_column(sa.Column("source_filename", sa.String(255), nullable=True))


def downgrade() -> None:
    """Drop the source columns; upload jobs would violate NOT NULL, so they are deleted first."""
    op.execute("DELETE FROM convkit_jobs WHERE template IS NULL")
    with op.batch_alter_table("convkit_jobs") as batch:
        batch.drop_column("source_filename")
        batch.drop_column("source_format")
        batch.drop_column("source_key")
        batch.alter_column("template", existing_type=sa.String(255), nullable=False)
