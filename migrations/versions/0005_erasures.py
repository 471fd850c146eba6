"""GDPR erasure tombstones (docs/contract.md §1.1).

Revision ID: 0005_erasures
Revises: 0004_goal_completions
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_erasures"
down_revision = "0004_goal_completions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "challenge_erasures",
        sa.Column("namespace", sa.String(100), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False),
        sa.Column("erased_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "namespace", name="challenge_erasures_pkey"),
    )
    op.create_index("idx_challenge_erasures_erased_at", "challenge_erasures", ["erased_at"])


def downgrade() -> None:
    op.drop_table("challenge_erasures")
