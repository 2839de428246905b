"""ZStack's tags of image packages and the AccessKey pairs of accounts.

Data folders opened by the sqlite3 code of the version before may hold these tables already
(``packages.db``: tags; ``auth.sqlite``: access_keys), with the same columns: they are kept.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("tags"):
        op.create_table(
            "tags",
            sa.Column("uuid", sa.String(32), primary_key=True),
            sa.Column("resource_uuid", sa.String(32), nullable=False),
            sa.Column("resource_type", sa.String(64), nullable=False),
            sa.Column("tag", sa.Text, nullable=False),
            sa.Column("type", sa.String(16), nullable=False),
            sa.Column("create_date", sa.BigInteger, nullable=False),
            sa.Column("last_op_date", sa.BigInteger, nullable=False),
            sa.CheckConstraint("type IN ('System', 'Simple')"),
        )
    if "tags_resource" not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("tags")}:
        op.create_index("tags_resource", "tags", ["resource_uuid"])
    if not inspector.has_table("access_keys"):
        op.create_table(
            "access_keys",
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column(
                "account_uuid", sa.String(32),
                sa.ForeignKey("accounts.uuid", ondelete="CASCADE"), nullable=False,
            ),
            sa.Column("secret", sa.String(128), nullable=False),
            sa.Column("description", sa.Text, nullable=False, server_default=""),
            sa.Column("create_date", sa.Float, nullable=False),
        )


def downgrade() -> None:
    op.drop_table("access_keys")
    op.drop_index("tags_resource", "tags")
    op.drop_table("tags")
