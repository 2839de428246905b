"""Workers record their own lease.

A worker beats every third of its ``--lease``; other nodes judged it dead after *their* own
``--lease``, so a worker with a longer lease than ``ovfkit serve`` was taken for dead between
beats (its jobs routed elsewhere, or refused as unroutable). ``cluster_workers.lease_ms`` holds
the worker's lease, by which every node judges it; rows without one (workers registered before
this revision) are judged by the reader's lease as before.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ovfkit.db._migrate import add_missing_columns

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_missing_columns("cluster_workers", sa.Column("lease_ms", sa.BigInteger))


def downgrade() -> None:
    op.drop_column("cluster_workers", "lease_ms")
