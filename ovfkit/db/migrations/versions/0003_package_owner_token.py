"""Image packages get an owning account and a download token.

``account_uuid`` scopes QueryImagePackage, UpdateImagePackage and DeleteImagePackage to the
account that exported the package (the admin sees all); rows made before have none and are the
admin's. ``download_token`` is the secret in a local package's exportUrl
(``.../ova-packages/<token>/<uuid>.ova``): the package uuid, which queries list, no longer
suffices to download it. Exported rows get a fresh token here, and an exportUrl of the old form
(``.../ova-packages/<uuid>.ova``) is rewritten to the new one, so existing packages stay
downloadable by whoever can query them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

from ovfkit.db._migrate import add_missing_columns

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_OLD_SUFFIX = "/ova-packages/{uuid}.ova"


def upgrade() -> None:
    bind = op.get_bind()
    add_missing_columns(
        "image_packages",
        sa.Column("account_uuid", sa.String(32)),
        sa.Column("download_token", sa.String(64)),
    )
    indexes = {i["name"] for i in sa.inspect(bind).get_indexes("image_packages")}
    if "image_packages_account" not in indexes:
        op.create_index("image_packages_account", "image_packages", ["account_uuid"])
    table = sa.table(
        "image_packages",
        sa.column("uuid", sa.String), sa.column("state", sa.String),
        sa.column("export_url", sa.Text), sa.column("download_token", sa.String),
    )
    rows = bind.execute(
        sa.select(table.c.uuid, table.c.export_url).where(
            table.c.state == "Exported", table.c.download_token.is_(None)
        )
    ).all()
    for uuid, url in rows:
        token = secrets.token_urlsafe(32)
        old = _OLD_SUFFIX.format(uuid=uuid)
        values = {"download_token": token}
        if url and url.endswith(old):
            values["export_url"] = url[: -len(old)] + f"/ova-packages/{token}/{uuid}.ova"
        bind.execute(sa.update(table).where(table.c.uuid == uuid).values(**values))


def downgrade() -> None:
    op.drop_index("image_packages_account", "image_packages")
    with op.batch_alter_table("image_packages") as batch:
        batch.drop_column("download_token")
        batch.drop_column("account_uuid")
