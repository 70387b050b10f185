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
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("finished_at")
        batch.drop_column("git_sha")
        batch.drop_column("status")
