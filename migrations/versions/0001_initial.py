"""Our own tables.

`user_goal_progress` is the AccelByte challenge backend's table: it is not created by a
versioned migration but after the migrations, only when missing and only with
ASSIGNMENT_MODE=auto (tables/migrate.py). Databases migrated by the first version of
this file got it here, under other index names; 0003 brings those in line.

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
