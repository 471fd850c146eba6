"""SQLAlchemy tables: the shared user_goal_progress table (contract §5.1, identical to the
backend's) and the service's own bookkeeping tables. One source for Alembic and tests.

`user_goal_progress` belongs to the AccelByte challenge backend: we create it only when it
is missing and ASSIGNMENT_MODE=auto (tables/migrate.py), and then exactly as the
backend's migration does: same column defaults (`now()`; SQLAlchemy renders `func.now()`
as CURRENT_TIMESTAMP on SQLite), constraint and index names, partial-index predicates.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    text,
)

metadata = MetaData()

user_goal_progress = Table(
    "user_goal_progress",
    metadata,
    Column("user_id", String(100), nullable=False),
    Column("goal_id", String(100), nullable=False),
    Column("challenge_id", String(100), nullable=False),
    Column("namespace", String(100), nullable=False),
    Column("progress", Integer, nullable=False, server_default=text("0")),
    Column("status", String(20), nullable=False, server_default=text("'not_started'")),
    Column("completed_at", DateTime, nullable=True),
    Column("claimed_at", DateTime, nullable=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Column("updated_at", DateTime, nullable=False, server_default=func.now()),
    Column("is_active", Boolean, nullable=False, server_default=text("true")),
    Column("assigned_at", DateTime, nullable=True),
    Column("expires_at", DateTime, nullable=True),
    Column("baseline_value", Integer, nullable=True),
    PrimaryKeyConstraint("user_id", "goal_id", name="user_goal_progress_pkey"),
    CheckConstraint(
        "status IN ('not_started', 'in_progress', 'completed', 'claimed')", name="check_status"
    ),
    CheckConstraint("progress >= 0", name="check_progress_non_negative"),
    CheckConstraint(
        "claimed_at IS NULL OR completed_at IS NOT NULL", name="check_claimed_implies_completed"
    ),
)

# The backend's index names and predicates (contract §5.1), in its order.
ACTIVE = text("is_active = true")
PROGRESS_INDEXES = (
    Index(
        "idx_user_goal_progress_user_challenge",
        user_goal_progress.c.user_id,
        user_goal_progress.c.challenge_id,
    ),
    Index(
        "idx_user_goal_progress_user_active",
        user_goal_progress.c.user_id,
        user_goal_progress.c.is_active,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    ),
    Index("idx_user_goal_count", user_goal_progress.c.user_id),
    Index("idx_user_goal_lookup", user_goal_progress.c.user_id, user_goal_progress.c.goal_id),
    Index(
        "idx_user_goal_active_only",
        user_goal_progress.c.user_id,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    ),
)

# The UTC day (00:00) of the last day an increment+daily goal was counted for a user.
# Kept here, not inferred from updated_at (which the backend also bumps).
challenge_daily_marks = Table(
    "challenge_daily_marks",
    metadata,
    Column("user_id", String(100), nullable=False),
    Column("goal_id", String(100), nullable=False),
    Column("day", DateTime, nullable=False),
    PrimaryKeyConstraint("user_id", "goal_id", name="challenge_daily_marks_pkey"),
)

# Kafka mode: per consumer group and repartition partition, the next offset to read and
# the highest source offset applied per source partition, committed in the same
# transaction as the rows they produced (exactly-once effect).
challenge_consumer_offsets = Table(
    "challenge_consumer_offsets",
    metadata,
    Column("consumer_group", String(200), nullable=False),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("next_offset", BigInteger, nullable=False),
    PrimaryKeyConstraint(
        "consumer_group", "topic", "partition", name="challenge_consumer_offsets_pkey"
    ),
)

# Rows the database refused even in isolation (poison), kept for an operator.
challenge_dead_letters = Table(
    "challenge_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime, nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    Column("source", String(50), nullable=False),
    Column("user_id", String(200), nullable=False),
    Column("goal_id", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("payload", Text, nullable=False),
)

# gRPC mode: event ids applied within DEDUP_WINDOW, recorded in the flush transaction.
challenge_processed_events = Table(
    "challenge_processed_events",
    metadata,
    Column("event_id", Text, nullable=False),
    Column("expires_at", DateTime, nullable=False),
    PrimaryKeyConstraint("event_id", name="challenge_processed_events_pkey"),
)
Index("idx_challenge_processed_events_expires", challenge_processed_events.c.expires_at)

# Goal-completed events (docs/completions.md): the outbox the merge writes in the same
# statement as the progress that completed, and what each sink has been given.
# One row per (user, goal, period): a NULL period (a goal that completes once) is one
# value for the unique index, through COALESCE (works on PostgreSQL and SQLite alike).
NO_PERIOD = "'1970-01-01 00:00:00'"
challenge_goal_completions = Table(
    "challenge_goal_completions",
    metadata,
    # BIGINT identity on PostgreSQL, INTEGER PRIMARY KEY (the rowid) on SQLite: the event id
    Column("id", BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column("namespace", String(100), nullable=False),
    Column("user_id", String(100), nullable=False),
    Column("challenge_id", String(100), nullable=False),
    Column("goal_id", String(100), nullable=False),
    Column("completed_at", DateTime, nullable=False),  # event time of the completing event
    Column("period_start", DateTime, nullable=True),  # rotation period / UTC day, else NULL
    Column("period_end", DateTime, nullable=True),
    Column("created_at", DateTime, nullable=False, server_default=func.now()),
    Column("published_at", DateTime, nullable=True),  # every configured sink has it
    # never reuse an id (a deleted last row's id must not name a new event)
    sqlite_autoincrement=True,
)
Index(
    "ux_challenge_goal_completions_period",
    challenge_goal_completions.c.user_id,
    challenge_goal_completions.c.goal_id,
    text(f"COALESCE(period_start, {NO_PERIOD})"),
    unique=True,
)
# The publisher's scans read only what is not published yet (a few rows, however long
# the table grows).
UNPUBLISHED = text("published_at IS NULL")
Index(
    "idx_challenge_goal_completions_unpublished",
    challenge_goal_completions.c.id,
    postgresql_where=UNPUBLISHED,
    sqlite_where=UNPUBLISHED,
)

# Per sink, the completions it has accepted; a completion's `published_at` is set once
# every configured sink has it. A GDPR erasure deletes these through the completion ids.
challenge_completion_deliveries = Table(
    "challenge_completion_deliveries",
    metadata,
    Column("completion_id", BigInteger, nullable=False),
    Column("sink", String(50), nullable=False),
    Column("published_at", DateTime, nullable=False),
    PrimaryKeyConstraint("completion_id", "sink", name="challenge_completion_deliveries_pkey"),
)

# GDPR erasure tombstones: a deleted user's later events (live, redelivered, replayed)
# are skipped by every replica and worker; purged after ERASURE_RETENTION.
challenge_erasures = Table(
    "challenge_erasures",
    metadata,
    Column("namespace", String(100), nullable=False),
    Column("user_id", String(100), nullable=False),
    Column("erased_at", DateTime, nullable=False),
    PrimaryKeyConstraint("user_id", "namespace", name="challenge_erasures_pkey"),
)
Index("idx_challenge_erasures_erased_at", challenge_erasures.c.erased_at)
