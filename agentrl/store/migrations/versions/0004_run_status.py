"""Run status and provenance: ``status``, ``git_sha`` and ``finished_at`` on runs.

A run says whether it is running, finished, interrupted (Ctrl-C, SIGTERM: resumable) or failed, and
which agentrl commit produced it. Runs written before 0004 keep NULL in all three (their outcome was
never recorded; ``agentrl store ls`` shows ``-``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=True))
        batch.add_column(sa.Column("git_sha", sa.String(64), nullable=True))
        batch.add_column(sa.Column("finished_at", sa.Double(), nullable=True))


def downgrade() -> None:
    """Drop the three columns in place. Not with a batch "move and copy" on SQLite: dropping the old ``runs``
    table there, with foreign keys on, would cascade to every episode (SQLite >= 3.35 drops columns itself)."""
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        import sqlite3

        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise RuntimeError(f"downgrading below 0004 needs SQLite >= 3.35 (ALTER TABLE DROP COLUMN); this is {sqlite3.sqlite_version}")
    for column in ("finished_at", "git_sha", "status"):
        op.drop_column("runs", column)
