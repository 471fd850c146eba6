"""Event ids applied by gRPC flushes (dedup across replicas and restarts).

Revision ID: 0002_processed_events
Revises: 0001_initial
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_processed_events"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "challenge_processed_events",
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="challenge_processed_events_pkey"),
    )
    op.create_index(
        "idx_challenge_processed_events_expires", "challenge_processed_events", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_table("challenge_processed_events")
