"""Steps shared by the Alembic revisions (``ovfkit/db/migrations/versions``).

A revision may meet part of its change already made: a revision interrupted after its DDL but
before Alembic recorded it (SQLite commits DDL statement by statement), or a table created from
a later version's metadata. Each step therefore adds only what is missing."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

__all__ = ["add_missing_columns"]


def add_missing_columns(table: str, *columns: sa.Column[Any]) -> None:
    """Add to ``table`` those of ``columns`` it does not have yet (by name)."""
    from alembic import op  # only inside a migration: op is bound to its context

    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}
    for column in columns:
        if column.name not in present:
            op.add_column(table, column)
