"""The first schema: image packages, pending removals, accounts, sessions, the cluster's VM
catalog, export jobs and workers.

Data folders made before the records moved to SQLAlchemy already hold some of these tables
(``packages.db``: image_packages, pending_cleanup; ``auth.sqlite``: accounts, sessions) with
the same columns; those are kept as they are, with their rows, and only missing tables are made.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UUID = sa.String(32)


def _tables() -> list[tuple[str, list[Any]]]:
    return [
        ("image_packages", [
            sa.Column("uuid", UUID, primary_key=True),
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("description", sa.Text),
            sa.Column("vm_uuid", UUID, nullable=False, unique=True),
            sa.Column("backup_storage_uuid", UUID, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("export_url", sa.Text),
            sa.Column("md5_sum", sa.String(64)),
            sa.Column("format", sa.String(16), nullable=False, server_default="OVA"),
            sa.Column("size", sa.BigInteger),
            sa.Column("create_date", sa.BigInteger, nullable=False),
            sa.Column("last_op_date", sa.BigInteger, nullable=False),
            sa.Column("install_path", sa.Text, nullable=False),
            sa.Column("owner_pid", sa.Integer),
            sa.CheckConstraint("state IN ('Exporting', 'Exported')"),
        ]),
        ("pending_cleanup", [
            sa.Column("backup_storage_uuid", UUID, primary_key=True),
            sa.Column("install_path", sa.String(512), primary_key=True),
            sa.Column("queued", sa.Float, nullable=False),
        ]),
        ("accounts", [
            sa.Column("uuid", UUID, primary_key=True),
            sa.Column("name", sa.String(255), nullable=False, unique=True),
            sa.Column("salt", sa.LargeBinary, nullable=False),
            sa.Column("hash", sa.LargeBinary, nullable=False),
            sa.Column("create_date", sa.Float, nullable=False),
        ]),
        ("sessions", [
            sa.Column("uuid", UUID, primary_key=True),
            sa.Column(
                "account_uuid", UUID, sa.ForeignKey("accounts.uuid", ondelete="CASCADE"),
                nullable=False,
            ),
            sa.Column("create_date", sa.Float, nullable=False),
            sa.Column("expired_date", sa.Float, nullable=False),
        ]),
        ("vms", [
            sa.Column("uuid", UUID, primary_key=True),
            sa.Column("inventory", sa.Text, nullable=False),
            sa.Column("updated", sa.BigInteger, nullable=False),
        ]),
        ("export_jobs", [
            sa.Column("uuid", UUID, primary_key=True),
            sa.Column("account_uuid", sa.String(64), nullable=False),
            sa.Column("package_uuid", UUID, nullable=False),
            sa.Column("vm_uuid", UUID, nullable=False),
            sa.Column("backup_storage_uuid", UUID, nullable=False),
            sa.Column("request", sa.Text, nullable=False),
            sa.Column("vm", sa.Text, nullable=False),
            sa.Column("queue", sa.String(255), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("worker", sa.String(64)),
            sa.Column("worker_name", sa.String(255)),
            sa.Column("lease_until", sa.BigInteger),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("status", sa.Integer),
            sa.Column("body", sa.Text),
            sa.Column("created", sa.BigInteger, nullable=False),
            sa.Column("updated", sa.BigInteger, nullable=False),
            sa.Column("dispatched", sa.BigInteger, nullable=False),
            sa.CheckConstraint("state IN ('queued', 'running', 'done')"),
        ]),
        ("cluster_workers", [
            sa.Column("uuid", UUID, primary_key=True),
            sa.Column("name", sa.String(255), nullable=False),
            sa.Column("queue", sa.String(255), nullable=False),
            sa.Column("roots", sa.Text, nullable=False),
            sa.Column("backup_storages", sa.Text, nullable=False),
            sa.Column("concurrency", sa.Integer, nullable=False),
            sa.Column("started", sa.BigInteger, nullable=False),
            sa.Column("heartbeat", sa.BigInteger, nullable=False),
        ]),
    ]


_INDEXES = [
    ("sessions_expiry", "sessions", ["expired_date"]),
    ("export_jobs_state", "export_jobs", ["state", "lease_until"]),
]


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for name, items in _tables():
        if not inspector.has_table(name):
            op.create_table(name, *items)
    for index, table, columns in _INDEXES:
        if index not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(table)}:
            op.create_index(index, table, columns)


def downgrade() -> None:
    for name, _ in reversed(_tables()):
        op.drop_table(name)
