"""Staleness columns: each episode's range of policy versions and its write time, backfilled.

Learners select "episodes no more than K versions old"; with asynchronous rollouts one episode can
span several weight versions, so the range over the episode and all its turns is kept per episode
(and indexed) instead of being recomputed from the steps on every read.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("policy_version_min", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("policy_version_max", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("written_at", sa.Double(), nullable=True))
    # Backfill: min/max over the episode's own version and its steps' versions (NULLs ignored).
    for bound, agg, beyond in (("min", "MIN", "<"), ("max", "MAX", ">")):
        column = f"policy_version_{bound}"
        op.execute(
            f"UPDATE episodes SET {column} = "
            f"(SELECT {agg}(steps.policy_version) FROM steps WHERE steps.episode_id = episodes.id)"
        )
        op.execute(
            f"UPDATE episodes SET {column} = policy_version "
            f"WHERE policy_version IS NOT NULL AND ({column} IS NULL OR policy_version {beyond} {column})"
        )
    op.execute("UPDATE episodes SET written_at = COALESCE(finished_at, started_at)")
    op.create_index("ix_episodes_run_policy", "episodes", ["run_id", "policy_version_min", "policy_version_max"])


def downgrade() -> None:
    op.drop_index("ix_episodes_run_policy", table_name="episodes")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("written_at")
        batch.drop_column("policy_version_max")
        batch.drop_column("policy_version_min")
