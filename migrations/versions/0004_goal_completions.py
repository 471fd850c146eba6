"""The goal-completed outbox and its per-sink deliveries (docs/completions.md).

`challenge_goal_completions` is written by the merge statement in the same transaction
as the progress that completed; its id (BIGINT identity on PostgreSQL, the rowid on
SQLite) is the event id consumers dedup on. One row per (user, goal, period): the unique
index takes a NULL period as one value through COALESCE, which both databases index.

Revision ID: 0004_goal_completions
Revises: 0003_backend_index_names
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_goal_completions"
down_revision = "0003_backend_index_names"
branch_labels = None
depends_on = None

NO_PERIOD = "'1970-01-01 00:00:00'"
UNPUBLISHED = sa.text("published_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "challenge_goal_completions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            sa.Identity(),
            primary_key=True,
        ),
        sa.Column("namespace", sa.String(100), nullable=False),
        sa.Column("user_id", sa.String(100), nullable=False),
        sa.Column("challenge_id", sa.String(100), nullable=False),
        sa.Column("goal_id", sa.String(100), nullable=False),
        sa.Column("completed_at", sa.DateTime, nullable=False),
        sa.Column("period_start", sa.DateTime, nullable=True),
        sa.Column("period_end", sa.DateTime, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", sa.DateTime, nullable=True),
        sqlite_autoincrement=True,  # an id is never reused
    )
    op.create_index(
        "ux_challenge_goal_completions_period",
        "challenge_goal_completions",
        ["user_id", "goal_id", sa.text(f"COALESCE(period_start, {NO_PERIOD})")],
        unique=True,
    )
    op.create_index(
        "idx_challenge_goal_completions_unpublished",
        "challenge_goal_completions",
        ["id"],
        postgresql_where=UNPUBLISHED,
        sqlite_where=UNPUBLISHED,
    )
    op.create_table(
        "challenge_completion_deliveries",
        sa.Column("completion_id", sa.BigInteger, nullable=False),
        sa.Column("sink", sa.String(50), nullable=False),
        sa.Column("published_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint(
            "completion_id", "sink", name="challenge_completion_deliveries_pkey"
        ),
    )


def downgrade() -> None:
    op.drop_table("challenge_completion_deliveries")
    op.drop_table("challenge_goal_completions")
