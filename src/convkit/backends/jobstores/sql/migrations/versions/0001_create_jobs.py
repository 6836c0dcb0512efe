"""Create the convkit_jobs table.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the jobs table with its idempotency constraint and its two indexes."""
    op.create_table(
        "convkit_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("template", sa.String(255), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("locale", sa.String(35), nullable=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        # Naive UTC on every database (see convkit.backends.jobstores.sql.store.UtcDateTime).
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=True),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("lease_expires_at", sa.DateTime, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("result_key", sa.String(1024), nullable=True),
        sa.Column("result_filename", sa.String(255), nullable=True),
        sa.Column("result_media_type", sa.String(255), nullable=True),
        sa.Column("result_size", sa.BigInteger, nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_convkit_jobs_tenant_idempotency"),
    )
    # Listing: WHERE tenant = ? ORDER BY created_at DESC, id DESC (keyset pagination).
    op.create_index(
        "ix_convkit_jobs_tenant_created", "convkit_jobs", ["tenant", "created_at", "id"]
    )
    # Sweeping: queued jobs, and running jobs whose lease expired.
    op.create_index("ix_convkit_jobs_status_lease", "convkit_jobs", ["status", "lease_expires_at"])


def downgrade() -> None:
    """Drop the jobs table (and every job in it)."""
    op.drop_index("ix_convkit_jobs_status_lease", table_name="convkit_jobs")
    op.drop_index("ix_convkit_jobs_tenant_created", table_name="convkit_jobs")
    op.drop_table("convkit_jobs")
