"""user_goal_progress (as the AccelByte challenge backend migrates it) and our own tables.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_goal_progress",
        sa.Column("user_id", sa.String(100), nullable=False),
        sa.Column("goal_id", sa.String(100), nullable=False),
        sa.Column("challenge_id", sa.String(100), nullable=False),
        sa.Column("namespace", sa.String(100), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("status", sa.String(20), nullable=False, server_default=sa.text("'not_started'")),
        sa.Column("completed_at", sa.DateTime, nullable=True),
        sa.Column("claimed_at", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.Column("updated_at", sa.DateTime, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.text("true")),
        sa.Column("assigned_at", sa.DateTime, nullable=True),
        sa.Column("expires_at", sa.DateTime, nullable=True),
        sa.Column("baseline_value", sa.Integer, nullable=True),
        sa.PrimaryKeyConstraint("user_id", "goal_id", name="user_goal_progress_pkey"),
        sa.CheckConstraint(
            "status IN ('not_started', 'in_progress', 'completed', 'claimed')", name="check_status"
        ),
        sa.CheckConstraint("progress >= 0", name="check_progress_non_negative"),
        sa.CheckConstraint(
            "claimed_at IS NULL OR completed_at IS NOT NULL", name="check_claimed_implies_completed"
        ),
    )
    op.create_index("idx_user_goal_progress_user_challenge", "user_goal_progress", ["user_id", "challenge_id"])
    op.create_index(
        "idx_user_goal_progress_user_active",
        "user_goal_progress",
        ["user_id", "is_active"],
        postgresql_where=sa.text("is_active"),
        sqlite_where=sa.text("is_active"),
    )
    op.create_index("idx_user_goal_progress_user_id", "user_goal_progress", ["user_id"])
    op.create_index("idx_user_goal_progress_user_goal", "user_goal_progress", ["user_id", "goal_id"])
    op.create_index(
        "idx_user_goal_progress_user_active_only",
        "user_goal_progress",
        ["user_id"],
        postgresql_where=sa.text("is_active"),
        sqlite_where=sa.text("is_active"),
    )
    op.create_table(
        "challenge_daily_marks",
        sa.Column("user_id", sa.String(100), nullable=False),
        sa.Column("goal_id", sa.String(100), nullable=False),
        sa.Column("day", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("user_id", "goal_id", name="challenge_daily_marks_pkey"),
    )
    op.create_table(
        "challenge_consumer_offsets",
        sa.Column("consumer_group", sa.String(200), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("next_offset", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint(
            "consumer_group", "topic", "partition", name="challenge_consumer_offsets_pkey"
        ),
    )
    op.create_table(
        "challenge_dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.text("CURRENT_TIMESTAMP")),
        sa.Column("source", sa.String(50), nullable=False),
        sa.Column("user_id", sa.String(200), nullable=False),
        sa.Column("goal_id", sa.String(200), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("challenge_dead_letters")
    op.drop_table("challenge_consumer_offsets")
    op.drop_table("challenge_daily_marks")
    op.drop_table("user_goal_progress")
