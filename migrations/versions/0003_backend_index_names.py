"""Bring a user_goal_progress created by our first 0001 in line with the backend's.

The first version of 0001 created the table itself under other index names
(`idx_user_goal_progress_user_id`, `..._user_goal`, `..._user_active_only`), partial
indexes `WHERE is_active` and `CURRENT_TIMESTAMP` defaults. Those old names prove the
table is ours (the backend never made it), so only then is it changed: plain indexes
renamed (catalog only), the two partial indexes rebuilt with the backend's
`WHERE is_active = true` (this holds a write lock for the index build: seconds per
million rows), defaults set to `now()` (catalog only). A table without our old names —
the backend's, or one we created the new way — is never touched.
On SQLite (embedded, no backend beside it) indexes are recreated; column defaults stay
CURRENT_TIMESTAMP, which is what `now()` means there.

Revision ID: 0003_backend_index_names
Revises: 0002_processed_events
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_backend_index_names"
down_revision = "0002_processed_events"
branch_labels = None
depends_on = None

OLD_MARKER = "idx_user_goal_progress_user_id"
RENAMES = {
    "idx_user_goal_progress_user_id": ("idx_user_goal_count", "(user_id)"),
    "idx_user_goal_progress_user_goal": ("idx_user_goal_lookup", "(user_id, goal_id)"),
}
PARTIAL = {
    "idx_user_goal_progress_user_active": (
        "idx_user_goal_progress_user_active",
        "(user_id, is_active) WHERE is_active = true",
    ),
    "idx_user_goal_progress_user_active_only": (
        "idx_user_goal_active_only",
        "(user_id) WHERE is_active = true",
    ),
}


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table("user_goal_progress"):
        return
    existing = {index["name"] for index in inspector.get_indexes("user_goal_progress")}
    if OLD_MARKER not in existing:
        return  # the backend's table, or created the new way: never altered
    postgres = bind.dialect.name == "postgresql"
    for old, (new, columns) in RENAMES.items():
        if old not in existing:
            continue
        if postgres:
            op.execute(f"ALTER INDEX {old} RENAME TO {new}")
        else:
            op.execute(f"DROP INDEX {old}")
            op.execute(f"CREATE INDEX {new} ON user_goal_progress {columns}")
    for old, (new, definition) in PARTIAL.items():
        if old in existing:
            op.execute(f"DROP INDEX {old}")
        op.execute(f"CREATE INDEX {new} ON user_goal_progress {definition}")
    if postgres:
        op.execute(
            "ALTER TABLE user_goal_progress "
            "ALTER COLUMN created_at SET DEFAULT now(), "
            "ALTER COLUMN updated_at SET DEFAULT now()"
        )


def downgrade() -> None:
    """Nothing to undo: the backend's names are the right ones."""
