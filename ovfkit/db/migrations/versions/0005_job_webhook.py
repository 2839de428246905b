"""Cluster jobs keep their webhook.

The job form's ``X-Web-Hook`` was held only by the API node that took the request: if that node
died while a worker ran the job, the job ended and nobody sent the webhook. The URL now goes
into the job's row (``webhook``) with its delivery state (``webhook_state``: pending, sent,
failed) and the claim of the node sending it (``webhook_until``), so that any API node sends
the webhook of a job whose node is gone.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ovfkit.db._migrate import add_missing_columns

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_missing_columns(
        "export_jobs",
        sa.Column("webhook", sa.Text),
        sa.Column("webhook_state", sa.String(16)),
        sa.Column("webhook_until", sa.BigInteger),
    )


def downgrade() -> None:
    for name in ("webhook_until", "webhook_state", "webhook"):
        op.drop_column("export_jobs", name)
