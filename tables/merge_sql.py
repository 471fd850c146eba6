"""The in-database merge (SPEC §4, §5.2) as SQL, for PostgreSQL and SQLite.

The rules are those of `app.core.progress.apply_delta`, written once as expressions over
`c` (the current row: the table row for an UPDATE, constants for a fresh INSERT) and `s`
(one buffered delta per row of a source relation). Guards (inactive, claimed, stale
period, same-day repeat) are in the statement's WHERE, so a claim or deactivation by the
backend between our read and our write is always honoured. Only the source relation and
a handful of functions differ between the two dialects.

PostgreSQL gets one statement per chunk (CTEs: lock rows in key order, advance daily
marks, update existing rows, insert missing ones, report what happened to each key);
SQLite (embedded, single writer) runs the same pieces as three statements in the
caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

INT_MAX = 2_147_483_647

# Source relation columns, in the order the writer sends them.
SOURCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("user_id", "text"),
    ("goal_id", "text"),
    ("challenge_id", "text"),
    ("namespace", "text"),
    ("family", "int"),
    ("target", "int"),
    ("relative", "int"),
    ("rotating", "int"),
    ("reset_progress", "int"),
    ("reselect", "int"),
    ("amount", "int"),
    ("value", "int"),
    ("first_base", "int"),
    ("first_time", "timestamp"),
    ("last_time", "timestamp"),
    ("period_start", "timestamp"),
    ("period_end", "timestamp"),
    ("steps", "text"),
)

FAMILY_SET, FAMILY_DAILY, FAMILY_COUNTER_DAILY = 2, 3, 4


@dataclass(frozen=True)
class Dialect:
    name: str

    @property
    def pg(self) -> bool:
        return self.name == "postgresql"

    def least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})" if self.pg else f"MIN({a}, {b})"

    def widen(self, expr: str) -> str:
        return f"CAST({expr} AS BIGINT)" if self.pg else expr

    def now(self) -> str:
        if self.pg:
            return "(now() AT TIME ZONE 'UTC')"
        return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"

    def true(self) -> str:
        return "TRUE" if self.pg else "1"

    def false(self) -> str:
        return "FALSE" if self.pg else "0"

    def first_step_time(self, need: str) -> str:
        """Event time of the first buffered step whose level reaches `need`."""
        if self.pg:
            return (
                "(SELECT CAST(e.step->>1 AS TIMESTAMP) "
                "FROM jsonb_array_elements(CAST(s.steps AS jsonb)) WITH ORDINALITY AS e(step, n) "
                f"WHERE CAST(e.step->>0 AS BIGINT) >= ({need}) ORDER BY e.n LIMIT 1)"
            )
        return (
            "(SELECT json_extract(e.value, '$[1]') FROM json_each(s.steps) AS e "
            f"WHERE json_extract(e.value, '$[0]') >= ({need}) ORDER BY e.key LIMIT 1)"
        )

    def source(self) -> str:
        """The buffered deltas as a relation `s`."""
        if self.pg:
            arrays = ", ".join(f"CAST(:{name} AS {sqltype}[])" for name, sqltype in SOURCE_COLUMNS)
            names = ", ".join(name for name, _ in SOURCE_COLUMNS)
            return f"SELECT * FROM unnest({arrays}) AS u({names})"
        fields = ", ".join(
            f"json_extract(value, '$[{i}]') AS {name}" for i, (name, _) in enumerate(SOURCE_COLUMNS)
        )
        return f"SELECT {fields} FROM json_each(:rows)"


_KEY = "x.user_id = s.user_id AND x.goal_id = s.goal_id"


def _merge(d: Dialect, *, fresh: bool) -> tuple[dict[str, str], str]:
    """SET expressions per column and the guard, against the current row `c`."""
    false = d.false()
    if fresh:
        c = {
            "progress": "0",
            "status": "'not_started'",
            "completed_at": "NULL",
            "claimed_at": "NULL",
            "expires_at": "NULL",
            "baseline_value": "NULL",
            "updated_at": "NULL",
        }
        claimed, new_period, stale = false, false, false
        new_day = f"(s.family = {FAMILY_DAILY})"
        restart = "(s.rotating = 1 AND s.reset_progress = 1)"
    else:
        c = {
            k: f"t.{k}"
            for k in (
                "progress",
                "status",
                "completed_at",
                "claimed_at",
                "expires_at",
                "baseline_value",
                "updated_at",
            )
        }
        claimed = "(t.status = 'claimed' OR t.claimed_at IS NOT NULL)"
        new_period = (
            "(s.rotating = 1 AND ((t.expires_at IS NOT NULL AND s.first_time >= t.expires_at)"
            " OR (t.expires_at IS NULL AND t.updated_at < s.period_start)))"
        )
        stale = (
            "(s.rotating = 1 AND ((t.expires_at IS NOT NULL AND s.period_end < t.expires_at)"
            " OR (t.expires_at IS NULL AND t.updated_at >= s.period_end)))"
        )
        new_day = (
            f"(s.family = {FAMILY_DAILY} AND (t.completed_at IS NULL"
            " OR t.completed_at < s.period_start))"
        )
        restart = f"(s.rotating = 1 AND s.reset_progress = 1 AND {new_period})"
    reopen = f"({claimed} AND ({new_day} OR ({new_period} AND s.reselect = 1)))"

    progress = (
        f"(CASE s.family WHEN {FAMILY_SET} THEN s.value WHEN {FAMILY_DAILY} THEN 1 "
        f"ELSE {d.least(d.widen(c['progress']) + ' + s.amount', str(INT_MAX))} END)"
    )
    first_base = (
        f"(CASE s.family WHEN {FAMILY_SET} THEN COALESCE(s.first_base, 0) "
        f"WHEN {FAMILY_DAILY} THEN 0 ELSE {c['progress']} END)"
    )
    base_level = (
        f"(CASE WHEN s.family IN ({FAMILY_SET}, {FAMILY_DAILY}) THEN 0 ELSE {c['progress']} END)"
    )
    baseline = (
        f"(CASE WHEN s.relative = 1 AND ({restart} OR {c['baseline_value']} IS NULL) "
        f"THEN {first_base} ELSE {c['baseline_value']} END)"
    )
    offset = f"(CASE WHEN s.relative = 1 THEN COALESCE({baseline}, 0) ELSE 0 END)"
    keep_completed = f"({c['status']} IN ('completed', 'claimed') AND NOT {restart})"
    fallback = (
        f"(CASE WHEN s.family = {FAMILY_COUNTER_DAILY} THEN s.first_time ELSE s.last_time END)"
    )
    # BIGINT: target + a baseline near INT_MAX must not overflow the INT arithmetic
    first_step = d.first_step_time(f"{d.widen('s.target')} + {offset} - {base_level}")
    # A value that reached the target and then dropped within one flush still completed.
    completes = f"({progress} - {offset} >= s.target OR {first_step} IS NOT NULL)"
    completion_time = f"COALESCE({first_step}, {fallback})"
    values = {
        "progress": progress,
        "status": (
            f"(CASE WHEN s.family = {FAMILY_DAILY} OR {keep_completed} OR {completes} "
            "THEN 'completed' ELSE 'in_progress' END)"
        ),
        "completed_at": (
            f"(CASE WHEN s.family = {FAMILY_DAILY} THEN s.first_time "
            f"WHEN {keep_completed} THEN COALESCE({c['completed_at']}, {completion_time}) "
            f"WHEN {completes} THEN {completion_time} "
            f"WHEN {restart} THEN NULL ELSE {c['completed_at']} END)"
        ),
        "claimed_at": f"(CASE WHEN {reopen} THEN NULL ELSE {c['claimed_at']} END)",
        "expires_at": f"(CASE WHEN s.rotating = 1 THEN s.period_end ELSE {c['expires_at']} END)",
        "baseline_value": baseline,
        "updated_at": d.now(),
    }
    guard = (
        f"t.is_active AND NOT {stale} AND (s.family <> {FAMILY_DAILY} OR {new_day}) "
        f"AND (NOT {claimed} OR {reopen})"
    )
    return values, guard


@dataclass(frozen=True)
class MergeStatements:
    """SQL texts for one dialect and assignment mode."""

    postgres: str | None = None  # one statement: returns (tag, user_id, goal_id)
    update: str | None = None  # SQLite: the three statements, run in order
    insert: str | None = None
    marks: str | None = None


def _update_sql(d: Dialect, gate: str, source_ref: str) -> str:
    values, guard = _merge(d, fresh=False)
    sets = ", ".join(f"{col} = {expr}" for col, expr in values.items())
    return (
        f"UPDATE user_goal_progress AS t SET {sets} FROM {source_ref} "
        f"WHERE t.user_id = s.user_id AND t.goal_id = s.goal_id AND {guard} "
        f"AND (s.family <> {FAMILY_COUNTER_DAILY} OR {gate}) "
        # SQLite's RETURNING sees only the target table, and not by its alias.
        + ("RETURNING t.user_id, t.goal_id" if d.pg else "RETURNING user_id, goal_id")
    )


def _insert_sql(d: Dialect) -> str:
    values, _ = _merge(d, fresh=True)
    now = d.now()
    columns = (
        "user_id, goal_id, challenge_id, namespace, progress, status, completed_at, "
        "claimed_at, created_at, updated_at, is_active, assigned_at, expires_at, baseline_value"
    )
    select = (
        f"s.user_id, s.goal_id, s.challenge_id, s.namespace, {values['progress']}, "
        f"{values['status']}, {values['completed_at']}, NULL, {now}, {now}, {d.true()}, "
        f"{now}, {values['expires_at']}, {values['baseline_value']}"
    )
    return (
        f"INSERT INTO user_goal_progress ({columns}) SELECT {select} FROM s "
        f"WHERE NOT EXISTS (SELECT 1 FROM user_goal_progress x WHERE {_KEY}) "
        "ORDER BY s.user_id, s.goal_id "
        "ON CONFLICT (user_id, goal_id) DO NOTHING RETURNING user_id, goal_id"
    )


def _marks_sql(d: Dialect, auto: bool, writable: str | None = None) -> str:
    exists = (
        d.true()
        if auto
        else f"EXISTS (SELECT 1 FROM user_goal_progress x WHERE {_KEY} AND x.is_active)"
    )
    if writable is not None:  # PostgreSQL: not for rows another transaction holds
        exists = f"{exists} AND {writable}"
    return (
        "INSERT INTO challenge_daily_marks (user_id, goal_id, day) "
        f"SELECT s.user_id, s.goal_id, s.period_start FROM s WHERE s.family = {FAMILY_COUNTER_DAILY} "
        f"AND {exists} ORDER BY s.user_id, s.goal_id "
        "ON CONFLICT (user_id, goal_id) DO UPDATE SET day = excluded.day "
        "WHERE challenge_daily_marks.day < excluded.day RETURNING user_id, goal_id"
    )


def build_statements(dialect_name: str, assignment_mode: str) -> MergeStatements:
    d = Dialect(dialect_name)
    auto = assignment_mode == "auto"
    if d.pg:
        locked = (
            "SELECT x.user_id, x.goal_id FROM user_goal_progress x JOIN s ON "
            f"{_KEY} ORDER BY x.user_id, x.goal_id FOR UPDATE OF x SKIP LOCKED"
        )
        # A row held by another transaction (the backend's claim) is skipped, not waited
        # for: no update, no insert, no daily mark; reported 'c' and carried by the caller.
        is_locked = (
            "EXISTS (SELECT 1 FROM locked l WHERE l.user_id = s.user_id AND l.goal_id = s.goal_id)"
        )
        row_exists = f"EXISTS (SELECT 1 FROM user_goal_progress x WHERE {_KEY})"
        writable = f"(NOT {row_exists} OR {is_locked})"
        gate = (
            "EXISTS (SELECT 1 FROM marks m WHERE m.user_id = s.user_id AND m.goal_id = s.goal_id)"
        )
        update = _update_sql(
            d, gate, "s JOIN locked l ON l.user_id = s.user_id AND l.goal_id = s.goal_id"
        )
        parts = [
            f"WITH s AS ({d.source()})",
            f"locked AS ({locked})",
            f"marks AS ({_marks_sql(d, auto, writable)})",
            f"upd AS ({update})",
        ]
        report = [
            "SELECT 'u' AS tag, user_id, goal_id FROM upd",
            f"SELECT 'c', s.user_id, s.goal_id FROM s WHERE {row_exists} AND NOT {is_locked}",
        ]
        if auto:
            parts.append(f"ins AS ({_insert_sql(d)})")
            report.append("SELECT 'i', user_id, goal_id FROM ins")
            # Missing in our snapshot yet not inserted: another writer inserted it
            # concurrently; the caller re-runs these keys with a fresh snapshot.
            report.append(
                "SELECT 'r', s.user_id, s.goal_id FROM s WHERE NOT EXISTS "
                f"(SELECT 1 FROM user_goal_progress x WHERE {_KEY}) AND NOT EXISTS "
                "(SELECT 1 FROM ins x WHERE x.user_id = s.user_id AND x.goal_id = s.goal_id)"
            )
        else:
            report.append(
                "SELECT 'm', s.user_id, s.goal_id FROM s WHERE NOT EXISTS "
                f"(SELECT 1 FROM user_goal_progress x WHERE {_KEY})"
            )
        sql = ",\n".join(parts) + "\n" + "\nUNION ALL ".join(report)
        return MergeStatements(postgres=sql)

    with_s = f"WITH s AS ({d.source()}) "
    gate = (
        "COALESCE((SELECT m.day FROM challenge_daily_marks m WHERE m.user_id = s.user_id "
        "AND m.goal_id = s.goal_id), '') < s.period_start"
    )
    return MergeStatements(
        update=with_s + _update_sql(d, gate, "s"),
        insert=(with_s + _insert_sql(d)) if auto else None,
        marks=with_s + _marks_sql(d, auto),
    )
