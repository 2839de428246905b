"""Alembic's environment: run on the connection :meth:`ovfkit.db.Database.upgrade` hands over
(inside its transaction, under its lock), never on a URL of its own."""

from __future__ import annotations

from alembic import context

from ovfkit.db.schema import metadata

connection = context.config.attributes["connection"]
# render_as_batch: SQLite changes a column by copying the table (ALTER is limited there).
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
