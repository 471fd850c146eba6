"""The in-database merge (contract §4, §5.2) as SQL, for PostgreSQL and SQLite.

The rules are those of `app.core.progress.apply_delta`, written once more as a chain of
named steps (CTEs), one per rule stage, each computing its values once:

    delta       the buffered deltas of one chunk, one row per (user, goal)
    locked      their existing rows: locked in key order, rows another transaction holds
                skipped, reported 'c' and carried to the next flush (PostgreSQL, the
                locking form), or read unlocked with their ctid and xmin (the
                optimistic form)
    paired      each delta beside its current row (defaults when there is none yet)
    periods     claimed? a new rotation period? a stale one? a new day for daily goals?
    guards      may the row be written (inactive, claimed, stale, counted today), does a
                claimed row reopen, does a rotation restart it
    levels      the family rule: the new progress, the baseline candidate, the level
                the buffered steps start from
    baselines   relative goals: the baseline and the offset progress counts from
    reached     the first buffered step that reached the target (a value that reached it
                and dropped again in the same flush still completed the goal)
    merged      the new row: status, completed_at, claimed_at, expires_at

Guards live in the statement itself, so a claim or a deactivation by the backend
between our read and our write is always honoured. Constants (families, statuses,
INT_MAX) come from app.core; the source relation is built from SOURCE_COLUMNS, which
also says how the writer reads each column off a Delta.

PostgreSQL runs one statement per chunk: the chain, then data-modifying steps (update,
insert, daily marks, the goal-completed outbox) and a report of (tag, count, user_id,
goal_id) rows (tables/write_result.py `ReportTag`): counts without a key — 'U' rows
updated, 'I' inserted, 'C' outbox rows written — then one row per key that needs the
caller: 'm' no row (required mode), 'r' inserted or changed concurrently by another
writer (re-run with a fresh snapshot), 'c' held by another transaction (the row is left
alone, its daily mark too; the caller carries the delta to the next flush), 'e' a user
erased by a GDPR deletion (left out). Everything else (a guarded row) is not reported.

It comes in two forms. The *locking* form reads each row with `FOR UPDATE SKIP LOCKED`
(a held row is skipped at once, reported 'c'). The *optimistic* form, for flushes written
the long way, reads the rows without locking them and updates each one by its ctid and
xmin: a row another transaction changed meanwhile is a new version, so the update passes
it by and it is reported 'r' (re-run on the new version); a row another transaction
holds makes the update wait, which the writer bounds with a short `lock_timeout` and
then falls back to the locking form. It spares a lock (and its WAL record) and an index
probe per row. SQLite (embedded, single writer) runs the same chain in three statements
in the caller's transaction: update, insert, marks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson

from app.core.events import INT_MAX
from app.core.progress import CLAIMED, COMPLETED, IN_PROGRESS, NOT_STARTED, Delta, Family

# ------------------------------------------------------------------ the source relation


def _sqlite_time(moment: object) -> object:
    """SQLite stores times as text in this one format (what its strftime compares)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(moment, datetime) else moment


def _steps(delta: Delta) -> str | None:
    """(level, event time) of the buffered steps, a JSON array of pairs (ISO times);
    None for one step at the first event's time (most deltas: the statement takes
    `first_time` then, and the flush spares a JSON text per row)."""
    steps = delta.steps
    if len(steps) == 1 and steps[0][1] == delta.first_time:
        return None
    return orjson.dumps(steps).decode()


def _top_level(delta: Delta) -> int | None:
    """The highest buffered level: steps only need a look when it reaches the target."""
    return delta.steps[-1][0] if delta.steps else None


@dataclass(frozen=True)
class SourceColumn:
    """One column of the source relation: its SQL type and how a Delta gives it.

    `per_goal`: the same for every delta of one goal and namespace. PostgreSQL receives
    these once per chunk, one array element per distinct (goal, namespace), and each row
    refers to its element by `goal_ref` (a chunk has a few dozen goals and 1,000 rows).
    """

    name: str
    sqltype: str  # PostgreSQL array element type
    read: Callable[[Delta], object]
    per_goal: bool = False


def _rotation_flag(attribute: str) -> Callable[[Delta], object]:
    def read(d: Delta) -> object:
        rotation = d.goal.rotation
        return int(rotation is not None and bool(getattr(rotation, attribute)))

    return read


SOURCE_COLUMNS: tuple[SourceColumn, ...] = (
    SourceColumn("user_id", "text", lambda d: d.user_id),
    SourceColumn("goal_id", "text", lambda d: d.goal.goal_id, per_goal=True),
    SourceColumn("challenge_id", "text", lambda d: d.goal.challenge_id, per_goal=True),
    SourceColumn("namespace", "text", lambda d: d.namespace, per_goal=True),
    SourceColumn("family", "int", lambda d: int(d.family)),
    SourceColumn("target", "int", lambda d: d.goal.target, per_goal=True),
    SourceColumn("relative", "int", lambda d: int(d.goal.relative), per_goal=True),
    SourceColumn("rotating", "int", lambda d: int(d.goal.rotation is not None), per_goal=True),
    SourceColumn("reset_progress", "int", _rotation_flag("reset_progress"), per_goal=True),
    SourceColumn("reselect", "int", _rotation_flag("allow_reselection"), per_goal=True),
    SourceColumn("amount", "int", lambda d: d.amount),
    SourceColumn("value", "int", lambda d: d.value),
    SourceColumn("first_base", "int", lambda d: d.first_base),
    SourceColumn("first_time", "timestamp", lambda d: d.first_time),
    SourceColumn("last_time", "timestamp", lambda d: d.last_time),
    SourceColumn("period_start", "timestamp", lambda d: d.period_start),
    SourceColumn("period_end", "timestamp", lambda d: d.period_end),
    SourceColumn("top_level", "int", _top_level),
    SourceColumn("steps", "text", _steps),
)


_NAMES = tuple(column.name for column in SOURCE_COLUMNS)
_STEPS = _NAMES.index("steps")
_READERS = tuple(column.read for column in SOURCE_COLUMNS)
GOAL_REF = "goal_ref"
# PostgreSQL parameters: one array per row column (with the goal reference after the
# user id), one per goal column.
ROW_NAMES = (
    _NAMES[0],
    GOAL_REF,
    *(column.name for column in SOURCE_COLUMNS[1:] if not column.per_goal),
)
GOAL_COLUMNS = tuple(column for column in SOURCE_COLUMNS if column.per_goal)
_GOAL_READERS = tuple(column.read for column in GOAL_COLUMNS)


def source_row(delta: Delta) -> list[object]:
    """One delta as a source row, in SOURCE_COLUMNS order."""
    return [read(delta) for read in _READERS]


def fast_row(d: Delta, goal_ref: int) -> tuple[object, ...]:
    """The row columns of one delta in ROW_NAMES order, written out in one function (the
    flush's hot loop: a reader call per column costs more than the parameters are
    worth). A unit test holds it equal to the column readers for every kind of goal."""
    steps = d.steps
    single = len(steps) == 1 and steps[0][1] == d.first_time
    return (
        d.user_id,
        goal_ref,
        int(d.family),
        d.amount,
        d.value,
        d.first_base,
        d.first_time,
        d.last_time,
        d.period_start,
        d.period_end,
        steps[-1][0] if steps else None,
        None if single else orjson.dumps(steps).decode(),
    )


def postgres_params(chunk: list[Delta]) -> dict[str, list[object]]:
    """One array per row column (the statement unnests them) and one per goal column,
    indexed by each row's `goal_ref` (1-based)."""
    refs: dict[tuple[int, str], int] = {}
    goals: list[Delta] = []  # the first delta of each (goal, namespace)
    rows = []
    for delta in chunk:
        key = (id(delta.goal), delta.namespace)
        ref = refs.get(key)
        if ref is None:
            ref = refs[key] = len(goals) + 1
            goals.append(delta)
        rows.append(fast_row(delta, ref))
    columns = zip(*rows, strict=True) if rows else [()] * len(ROW_NAMES)
    params: dict[str, list[object]] = dict(zip(ROW_NAMES, map(list, columns), strict=True))
    for column, read in zip(GOAL_COLUMNS, _GOAL_READERS, strict=True):
        params[column.name] = [read(delta) for delta in goals]
    return params


def sqlite_params(chunk: list[Delta]) -> dict[str, str]:
    """One JSON array of rows (the statement reads it with json_each).

    SQLite compares times as text, so every time (steps included) is in its format.
    """
    rows = []
    for delta in chunk:
        row = [_sqlite_time(value) for value in source_row(delta)]
        row[_STEPS] = orjson.dumps(
            [[level, _sqlite_time(moment)] for level, moment in delta.steps]
        ).decode()
        rows.append(row)
    return {"rows": orjson.dumps(rows).decode()}


# ------------------------------------------------------------------ dialects

# Columns of the current row the rules read.
ROW_COLUMNS = (
    "progress",
    "status",
    "completed_at",
    "claimed_at",
    "updated_at",
    "is_active",
    "expires_at",
    "baseline_value",
)
SET, DAILY, COUNTER_DAILY = int(Family.SET), int(Family.DAILY), int(Family.COUNTER_DAILY)
KEY = "{a}.user_id = {b}.user_id AND {a}.goal_id = {b}.goal_id"


def _key(a: str, b: str) -> str:
    return KEY.format(a=a, b=b)


@dataclass(frozen=True)
class Dialect:
    name: str

    @property
    def pg(self) -> bool:
        return self.name == "postgresql"

    def capped_sum(self, a: str, b: str) -> str:
        """a + b, at most INT_MAX, without overflowing on the way."""
        if self.pg:
            return f"LEAST(CAST({a} AS BIGINT) + {b}, {INT_MAX})"
        return f"MIN({a} + {b}, {INT_MAX})"

    def bigint(self, expr: str) -> str:
        """`expr` as a 64-bit integer (SQLite's integers already are)."""
        return f"CAST({expr} AS BIGINT)" if self.pg else expr

    def now(self) -> str:
        if self.pg:
            return "(now() AT TIME ZONE 'UTC')"
        return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"

    def source(self) -> str:
        """The chunk as a relation (a constant text: prepared once per connection)."""
        if self.pg:
            types = {column.name: column.sqltype for column in SOURCE_COLUMNS}
            types[GOAL_REF] = "int"
            arrays = ",\n        ".join(f"CAST(:{name} AS {types[name]}[])" for name in ROW_NAMES)
            fields = ",\n           ".join(
                f"(CAST(:{column.name} AS {column.sqltype}[]))[u.{GOAL_REF}] AS {column.name}"
                if column.per_goal
                else f"u.{column.name}"
                for column in SOURCE_COLUMNS
            )
            rows = ",\n        ".join(ROW_NAMES)
            return (
                f"SELECT {fields}\n"
                f"    FROM unnest(\n        {arrays}\n    ) AS u(\n        {rows}\n    )"
            )
        fields = ",\n        ".join(
            f"json_extract(value, '$[{i}]') AS {column.name}"
            for i, column in enumerate(SOURCE_COLUMNS)
        )
        return f"SELECT\n        {fields}\n    FROM json_each(:rows)"

    def locked(self, optimistic: bool = False) -> str:
        """Each delta with its current row (row_* columns, NULL when none).

        PostgreSQL locks the rows one index probe at a time, in the chunk's key order
        (the writer sorts it), skipping rows another transaction holds; optimistic, it
        reads them (and their ctid and xmin) without a lock. SQLite has a single writer
        and needs no lock.
        """
        row = ",\n               ".join(f"x.{c} AS row_{c}" for c in ROW_COLUMNS)
        if optimistic:
            # LIMIT 1 keeps it one index probe per key (never a hash join over the table)
            return (
                "SELECT s.*, l.*\n"
                "    FROM delta AS s\n"
                "    LEFT JOIN LATERAL (\n"
                f"        SELECT TRUE AS found, x.ctid AS row_ctid, x.xmin AS row_xmin, {row}\n"
                "        FROM user_goal_progress AS x\n"
                f"        WHERE {_key('x', 's')}\n"
                "        LIMIT 1\n"
                "    ) AS l ON TRUE"
            )
        if self.pg:
            return (
                "SELECT s.*, l.*\n"
                "    FROM delta AS s\n"
                "    LEFT JOIN LATERAL (\n"
                f"        SELECT TRUE AS found, {row}\n"
                "        FROM user_goal_progress AS x\n"
                f"        WHERE {_key('x', 's')}\n"
                "        FOR UPDATE OF x SKIP LOCKED\n"
                "    ) AS l ON TRUE"
            )
        return (
            f"SELECT s.*, x.user_id IS NOT NULL AS found,\n               {row}\n"
            "    FROM delta AS s\n"
            f"    LEFT JOIN user_goal_progress AS x ON {_key('x', 's')}"
        )

    def held(self) -> str:
        """True for a row that exists but another transaction holds (not locked)."""
        return "(h.held IS NOT NULL)" if self.pg else "FALSE"

    def held_probe(self) -> str:
        """One index probe per key not locked (LIMIT keeps it a probe, not a scan)."""
        if not self.pg:
            return ""
        return (
            "\n    LEFT JOIN LATERAL (\n"
            "        SELECT TRUE AS held FROM user_goal_progress AS x\n"
            f"        WHERE k.found IS NULL AND {_key('x', 'k')} LIMIT 1\n"
            "    ) AS h ON TRUE"
        )

    def mark(self) -> str:
        """The "counted today" mark of each key (only increment+daily goals have one).

        PostgreSQL probes the mark index only for those keys (a hash join would read the
        whole marks table on every statement)."""
        if self.pg:
            return (
                "\n    LEFT JOIN LATERAL (\n"
                "        SELECT m.day FROM challenge_daily_marks AS m\n"
                f"        WHERE k.family = {COUNTER_DAILY} AND {_key('m', 'k')}\n"
                "        LIMIT 1\n"
                "    ) AS m ON TRUE"
            )
        return f"\n    LEFT JOIN challenge_daily_marks AS m ON {_key('m', 'k')}"

    def first_step_time(self, need: str) -> str:
        """Event time of the first buffered step whose level reaches `need` (PostgreSQL:
        no steps sent means one step, at `first_time`)."""
        if self.pg:
            return (
                "COALESCE((SELECT CAST(e.step->>1 AS TIMESTAMP)\n"
                "                 FROM jsonb_array_elements(CAST(b.steps AS jsonb))\n"
                "                      WITH ORDINALITY AS e(step, n)\n"
                f"                 WHERE CAST(e.step->>0 AS BIGINT) >= {need}\n"
                "                 ORDER BY e.n LIMIT 1), b.first_time)"
            )
        return (
            "(SELECT json_extract(e.value, '$[1]')\n"
            "                 FROM json_each(b.steps) AS e\n"
            f"                 WHERE json_extract(e.value, '$[0]') >= {need}\n"
            "                 ORDER BY e.key LIMIT 1)"
        )


# ------------------------------------------------------------------ the rule stages


def _owners(d: Dialect) -> str:
    """PostgreSQL, whole users: a user any of whose rows another transaction holds is
    held whole (every delta of theirs carried), so one statement can decide it alone."""
    return (
        "SELECT k.*,\n"
        "           bool_or(h.held IS NOT NULL) OVER (PARTITION BY k.user_id) AS user_held\n"
        "    FROM locked AS k" + Dialect("postgresql").held_probe()
    )


@dataclass(frozen=True)
class _Chain:
    """What the stages of one statement form share: the dialect, the relation the rows
    come from, and the SQL for "held" and "fresh" in that form."""

    d: Dialect
    held: str
    rows: str
    probe: str
    fresh: str
    optimistic: bool


def _chain(d: Dialect, whole_users: bool, optimistic: bool) -> _Chain:
    held, rows, probe = d.held(), "locked", d.held_probe()
    if whole_users:
        held, rows, probe = "k.user_held", "owners", ""
    fresh = f"k.found IS NOT TRUE AND NOT {held}"
    if optimistic:
        held, probe, fresh = "FALSE", "", "k.found IS NOT TRUE"
    return _Chain(d, held, rows, probe, fresh, optimistic)


def _paired(c: _Chain) -> str:
    return (
        "SELECT k.*,\n"
        f"           {c.held} AS held,\n"
        f"           {c.fresh} AS fresh,\n"
        "           COALESCE(k.row_progress, 0) AS old_progress,\n"
        f"           COALESCE(k.row_status, '{NOT_STARTED}') AS old_status,\n"
        "           k.row_completed_at AS old_completed_at,\n"
        "           k.row_claimed_at AS old_claimed_at,\n"
        "           k.row_updated_at AS old_updated_at,\n"
        "           COALESCE(k.row_is_active, TRUE) AS is_active,\n"
        "           k.row_expires_at AS old_expires_at,\n"
        "           k.row_baseline_value AS old_baseline,\n"
        "           m.day AS counted_day\n"
        f"    FROM {c.rows} AS k{c.d.mark()}{c.probe}"
    )


def _periods(c: _Chain) -> str:
    return (
        "SELECT p.*,\n"
        f"           (old_status = '{CLAIMED}' OR old_claimed_at IS NOT NULL) AS claimed,\n"
        "           (rotating = 1 AND NOT fresh AND CASE\n"
        "               WHEN old_expires_at IS NOT NULL THEN first_time >= old_expires_at\n"
        "               ELSE old_updated_at < period_start END) AS new_period,\n"
        "           (rotating = 1 AND NOT fresh AND CASE\n"
        "               WHEN old_expires_at IS NOT NULL THEN period_end < old_expires_at\n"
        "               ELSE old_updated_at >= period_end END) AS stale,\n"
        f"           (family = {DAILY} AND (old_completed_at IS NULL\n"
        "               OR old_completed_at < period_start)) AS new_day\n"
        "    FROM paired AS p"
    )


def _guards(c: _Chain) -> str:
    return (
        "SELECT p.*,\n"
        "           (claimed AND (new_day OR (new_period AND reselect = 1))) AS reopen,\n"
        "           (rotating = 1 AND reset_progress = 1 AND (fresh OR new_period)) AS restart\n"
        "    FROM periods AS p"
    )


def _levels(c: _Chain) -> str:
    return (
        "SELECT g.*,\n"
        f"           CASE family WHEN {SET} THEN value WHEN {DAILY} THEN 1\n"
        f"               ELSE {c.d.capped_sum('old_progress', 'amount')} END AS new_progress,\n"
        f"           CASE family WHEN {SET} THEN COALESCE(first_base, 0) WHEN {DAILY} THEN 0\n"
        "               ELSE old_progress END AS first_base_value,\n"
        f"           CASE WHEN family IN ({SET}, {DAILY}) THEN 0\n"
        "               ELSE old_progress END AS base_level\n"
        "    FROM guards AS g\n"
        "    WHERE NOT held AND is_active AND NOT stale\n"
        f"      AND (family <> {DAILY} OR new_day)\n"
        "      AND (NOT claimed OR reopen)\n"
        f"      AND (family <> {COUNTER_DAILY} OR fresh\n"
        "           OR counted_day IS NULL OR counted_day < period_start)"
    )


def _baselines(c: _Chain) -> str:
    return (
        "SELECT v.*,\n"
        "           CASE WHEN relative = 1 AND (restart OR old_baseline IS NULL)\n"
        "               THEN first_base_value ELSE old_baseline END AS new_baseline\n"
        "    FROM levels AS v"
    )


def _targets(c: _Chain) -> str:
    # 64-bit: target + a baseline near INT_MAX must not overflow the INT columns
    return (
        "SELECT b.*,\n"
        "           CASE WHEN relative = 1 THEN "
        + c.d.bigint("COALESCE(new_baseline, 0)")
        + " ELSE 0 END\n"
        "               AS progress_offset\n"
        "    FROM baselines AS b"
    )


def _reached(c: _Chain) -> str:
    return (
        "SELECT b.*,\n"
        "           CASE WHEN top_level >= target + progress_offset - base_level\n"
        "               THEN "
        + c.d.first_step_time("b.target + b.progress_offset - b.base_level")
        + "\n           END AS step_time\n"
        "    FROM targets AS b"
    )


def _outcome(c: _Chain) -> str:
    return (
        "SELECT r.*,\n"
        "           (new_progress - progress_offset >= target OR step_time IS NOT NULL)"
        " AS completes,\n"
        "           COALESCE(step_time, CASE WHEN family = "
        f"{COUNTER_DAILY} THEN first_time ELSE last_time END)\n"
        "               AS completion_time,\n"
        f"           (old_status IN ('{COMPLETED}', '{CLAIMED}') AND NOT restart)"
        " AS keep_completed\n"
        "    FROM reached AS r"
    )


def _merged(c: _Chain) -> str:
    """The new row, and whether writing it is a completion (the outbox's row): a daily
    goal's row is written only on a new day; otherwise the row completes now and its
    status was not kept (a claimed or already completed row, same period, never)."""
    return (
        "SELECT user_id, goal_id, challenge_id, namespace, family, fresh, is_active,\n"
        + ("           row_ctid, row_xmin,\n" if c.optimistic else "")
        + "           new_progress,\n"
        f"           CASE WHEN family = {DAILY} OR keep_completed OR completes\n"
        f"               THEN '{COMPLETED}' ELSE '{IN_PROGRESS}' END AS new_status,\n"
        f"           CASE WHEN family = {DAILY} THEN first_time\n"
        "               WHEN keep_completed THEN COALESCE(old_completed_at, completion_time)\n"
        "               WHEN completes THEN completion_time\n"
        "               WHEN restart THEN NULL\n"
        "               ELSE old_completed_at END AS new_completed_at,\n"
        "           CASE WHEN reopen THEN NULL ELSE old_claimed_at END AS new_claimed_at,\n"
        "           CASE WHEN rotating = 1 THEN period_end ELSE old_expires_at END"
        " AS new_expires_at,\n"
        "           new_baseline,\n"
        f"           (family = {DAILY} OR (completes AND NOT keep_completed)) AS new_completion,\n"
        f"           CASE WHEN rotating = 1 OR family = {DAILY} THEN period_start END"
        " AS completion_start,\n"
        f"           CASE WHEN rotating = 1 OR family = {DAILY} THEN period_end END"
        " AS completion_end\n"
        "    FROM outcome"
    )


# A user erased by a GDPR deletion (docs/contract.md §1.1): its tombstone, read in the
# statement that writes, so a deletion answered by any replica holds here from its commit
# on. Reading the table also holds a share lock on it until the transaction ends, which
# the deletion's exclusive lock waits for (tables/gdpr.py): no flush that began before
# the tombstone can write after it.
_ERASED = (
    "EXISTS (SELECT 1 FROM challenge_erasures AS e\n"
    "                  WHERE e.user_id = s.user_id AND e.namespace = s.namespace)"
)


def _incoming(source: str) -> str:
    """The chunk, each row with whether its user is erased (looked up once per row)."""
    return f"SELECT s.*, {_ERASED} AS erased\n    FROM (\n    {_indent(source)}\n    ) AS s"


def _unerased() -> str:
    return "SELECT s.*\n    FROM incoming AS s\n    WHERE NOT s.erased"


def _erased_report() -> str:
    return "SELECT 'e', 1, s.user_id, s.goal_id FROM incoming AS s WHERE s.erased"


# The rule stages after the source and its rows, in order; each reads the one before.
# MATERIALIZED: computed once although later steps read them several times.
_RULE_STAGES: tuple[tuple[str, Callable[[_Chain], str]], ...] = (
    ("paired", _paired),
    ("periods", _periods),
    ("guards", _guards),
    ("levels", _levels),
    ("baselines", _baselines),
    ("targets", _targets),
    ("MATERIALIZED reached", _reached),
    ("outcome", _outcome),
    ("MATERIALIZED merged", _merged),
)


def _stages(
    d: Dialect, whole_users: bool = False, optimistic: bool = False
) -> list[tuple[str, str]]:
    """(name, body) of the read-only steps, in order; each reads the one before.

    `whole_users` (PostgreSQL): `held` marks every row of a user with a held row.
    `optimistic` (PostgreSQL): rows read unlocked, with their ctid; nothing is held."""
    chain = _chain(d, whole_users, optimistic)
    owners = [("owners", _owners(d))] if whole_users else []
    return [
        ("incoming", _incoming(d.source())),
        ("delta", _unerased()),
        ("locked", d.locked(optimistic)),
        *owners,
        *((name, build(chain)) for name, build in _RULE_STAGES),
    ]


def _with(stages: list[tuple[str, str]]) -> str:
    parts = []
    for label, body in stages:
        name = label.removeprefix("MATERIALIZED ")
        hint = "MATERIALIZED " if name != label else ""
        parts.append(f"{name} AS {hint}(\n    {body}\n)")
    return "WITH\n" + ",\n".join(parts)


def _update(d: Dialect, optimistic: bool = False) -> str:
    # SQLite's RETURNING sees only the target table, and not by its alias.
    returning = "t.user_id, t.goal_id" if d.pg else "user_id, goal_id"
    # Optimistic: the row version that was read, by its ctid and xmin. One another
    # transaction changed meanwhile is a new version (another ctid, another xmin): passed
    # by (after waiting for that transaction), reported 'r' and re-run. The xmin is what
    # EvalPlanQual rechecks on every server: the planner reaches each row by a Tid Scan,
    # whose recheck did not compare the ctid until a 2025 fix (back-patched to 13; older
    # minor releases, which the backend's server may run, lack it), so the new version
    # would have been overwritten with values merged from the old one.
    where = (
        f"t.ctid = n.row_ctid AND t.xmin = n.row_xmin AND {_key('t', 'n')}"
        if optimistic
        else _key("t", "n")
    )
    return (
        "UPDATE user_goal_progress AS t\n"
        "    SET progress = n.new_progress,\n"
        "        status = n.new_status,\n"
        "        completed_at = n.new_completed_at,\n"
        "        claimed_at = n.new_claimed_at,\n"
        "        expires_at = n.new_expires_at,\n"
        "        baseline_value = n.new_baseline,\n"
        f"        updated_at = {d.now()}\n"
        "    FROM merged AS n\n"
        f"    WHERE {where} AND NOT n.fresh\n"
        f"    RETURNING {returning}"
    )


def _insert(d: Dialect) -> str:
    now = d.now()
    return (
        "INSERT INTO user_goal_progress (user_id, goal_id, challenge_id, namespace, progress,\n"
        "        status, completed_at, claimed_at, created_at, updated_at, is_active,\n"
        "        assigned_at, expires_at, baseline_value)\n"
        "    SELECT user_id, goal_id, challenge_id, namespace, new_progress,\n"
        f"        new_status, new_completed_at, NULL, {now},\n"
        f"        {now}, TRUE,\n"
        f"        {now}, new_expires_at, new_baseline\n"
        "    FROM merged AS n\n"
        "    WHERE n.fresh\n"
        "    ORDER BY user_id, goal_id\n"
        "    ON CONFLICT (user_id, goal_id) DO NOTHING\n"
        "    RETURNING user_id, goal_id"
    )


def _marks(auto: bool, inserted: str, changed: str = "") -> str:
    """Advance the "counted today" mark of increment+daily goals (contract §4).

    Rows we hold (auto mode: any; required mode: active ones) and rows we inserted;
    never a held ('c') or raced ('r') key, whose delta is written by a later statement
    (`changed`: optimistic, the existing rows passed by because they changed).
    """
    existing = "NOT p.held AND NOT p.fresh" + ("" if auto else " AND p.is_active") + changed
    return (
        "INSERT INTO challenge_daily_marks (user_id, goal_id, day)\n"
        "    SELECT p.user_id, p.goal_id, p.period_start\n"
        "    FROM paired AS p\n"
        f"    WHERE p.family = {COUNTER_DAILY} AND (({existing}){inserted})\n"
        "    ORDER BY p.user_id, p.goal_id\n"
        "    ON CONFLICT (user_id, goal_id) DO UPDATE SET day = excluded.day\n"
        "    WHERE challenge_daily_marks.day < excluded.day"
    )


def _completions(d: Dialect, written: str) -> str:
    """The goal-completed outbox rows of this write (docs/completions.md): one per row
    that completes now, `written` saying the row really was written. A completion of
    the same (user, goal, period) already there (a replay, a redelivery, a row rebuilt)
    adds nothing: the unique index and DO NOTHING keep one row, with its first id."""
    return (
        "INSERT INTO challenge_goal_completions (namespace, user_id, challenge_id, goal_id,\n"
        "        completed_at, period_start, period_end, created_at)\n"
        "    SELECT n.namespace, n.user_id, n.challenge_id, n.goal_id,\n"
        f"        n.new_completed_at, n.completion_start, n.completion_end, {d.now()}\n"
        "    FROM merged AS n\n"
        f"    WHERE n.new_completion{written}\n"
        "    ORDER BY n.user_id, n.goal_id\n"
        "    ON CONFLICT DO NOTHING\n"
        "    RETURNING id"
    )


@dataclass(frozen=True)
class MergeStatements:
    """SQL texts for one dialect and assignment mode."""

    postgres: str | None = None  # one statement: returns (tag, count, user_id, goal_id)
    # PostgreSQL, one statement that is a whole flush (see `_claimed`)
    claimed: str | None = None
    # PostgreSQL, the unlocked form of `postgres` (module docstring)
    optimistic: str | None = None
    # SQLite: the statements, run in order (the outbox first, from the rows as they
    # were: the chain is evaluated again by every statement); `erased` reports the keys
    # of erased users it left out
    erased: str | None = None
    completions: str | None = None
    update: str | None = None
    insert: str | None = None
    marks: str | None = None


def _indent(sql: str) -> str:
    return sql.replace("\n", "\n    ")


# The flush's event ids (as stored) and the user of each, beside the rows.
_CLAIM_IDS = (
    "SELECT * FROM unnest(CAST(:event_ids AS text[]), CAST(:event_users AS text[]))\n"
    "    AS e(event_id, user_id)\n"
    "    WHERE e.user_id NOT IN (SELECT user_id FROM paired WHERE held)"
)
_CLAIM = (
    "INSERT INTO challenge_processed_events (event_id, expires_at)\n"
    "    SELECT event_id, CAST(:expires AS TIMESTAMP) FROM claim_ids\n"
    "    ORDER BY event_id\n"
    "    ON CONFLICT (event_id) DO UPDATE SET expires_at = excluded.expires_at\n"
    "    WHERE challenge_processed_events.expires_at < CAST(:now AS TIMESTAMP)\n"
    "    RETURNING event_id"
)


def _claimed(
    stages: list[tuple[str, str]], writes: list[tuple[str, str]], report: list[str], sound: str
) -> str:
    """A whole small flush as one statement, run outside any transaction (one round trip
    instead of BEGIN, event ids, merge, COMMIT).

    Held users are held whole and their event ids left unrecorded, so nothing has to be
    undone afterwards. What this statement cannot settle alone — an event id already
    recorded (a duplicate to re-fold without), a row another writer inserted meanwhile —
    makes its last step divide by zero: the statement is undone whole and the writer
    runs the flush the long way, which handles both.
    """
    claim = [("claim_ids", _CLAIM_IDS), ("claimed", _indent(_CLAIM))]
    verdict = (
        "SELECT 'v', 1 / CASE WHEN (SELECT count(*) FROM claimed)\n"
        f"        = (SELECT count(*) FROM claim_ids){sound} THEN 1 ELSE 0 END, NULL, NULL"
    )
    chain = _with(stages + writes + claim)
    return chain + "\n" + "\nUNION ALL\n".join([*report, verdict])


def _optimistic_change() -> tuple[str, str]:
    """Optimistic form: (every read row updated, the marks' condition that a row was
    updated or passed the guards). No concurrent writer is the usual case: decided by
    two counts, so the per-key look-ups run only after a race."""
    all_updated = "(SELECT count(*) FROM updated) = (SELECT count(*) FROM merged WHERE NOT fresh)"
    changed = (
        f"\n        AND ({all_updated}\n"
        f"            OR EXISTS (SELECT 1 FROM updated AS u WHERE {_key('u', 'p')})\n"
        f"            OR NOT EXISTS (SELECT 1 FROM merged AS n WHERE {_key('n', 'p')}))"
    )
    return all_updated, changed


def _auto_writes(d: Dialect) -> tuple[tuple[str, str], list[str], str, str]:
    """Auto mode: the insert step, its report, the marks' condition for inserted rows,
    and the one-statement flush's verdict that every fresh key was inserted."""
    all_inserted = "(SELECT count(*) FROM inserted) = (SELECT count(*) FROM paired WHERE fresh)"
    was_inserted = f"EXISTS (SELECT 1 FROM inserted AS i WHERE {_key('i', 'p')})"
    inserted = f"\n        OR (p.fresh AND ({all_inserted}\n            OR {was_inserted}))"
    report = [
        "SELECT 'I', count(*), NULL, NULL FROM inserted",
        # missing in our snapshot yet not inserted: another writer inserted it
        f"SELECT 'r', 1, p.user_id, p.goal_id FROM paired AS p\n"
        f"    WHERE p.fresh AND NOT {all_inserted}\n"
        f"    AND NOT {was_inserted}",
    ]
    return ("inserted", _insert(d)), report, inserted, f"\n        AND {all_inserted}"


def _pg_completions(d: Dialect, auto: bool) -> tuple[str, str]:
    """The outbox step from what was really written (the update's and the insert's
    RETURNING): a row passed by ('r') or held ('c') never has a completion."""
    written = f"EXISTS (SELECT 1 FROM updated AS u WHERE {_key('u', 'n')})"
    if auto:
        written += f"\n          OR EXISTS (SELECT 1 FROM inserted AS i WHERE {_key('i', 'n')})"
    return "completions", _completions(d, f"\n      AND ({written})")


def _written(
    d: Dialect, auto: bool, optimistic: bool
) -> tuple[list[tuple[str, str]], list[str], str]:
    """PostgreSQL: the data-modifying steps, the report (without 'c') and, in auto mode,
    the condition that every fresh key was inserted (the one-statement flush's verdict).
    Counts: 'U' updated, 'I' inserted, 'C' completions written to the outbox."""
    writes = [("updated", _update(d, optimistic))]
    report = ["SELECT 'U' AS tag, count(*) AS n, NULL AS user_id, NULL AS goal_id FROM updated"]
    all_updated, changed = _optimistic_change() if optimistic else ("", "")
    inserted = sound = ""
    if auto:
        insert, inserts_report, inserted, sound = _auto_writes(d)
        writes.append(insert)
        report += inserts_report
    else:
        report.append("SELECT 'm', 1, user_id, goal_id FROM paired WHERE fresh")
    if optimistic:
        report.append(
            # read, passed the guards, yet not updated: another writer changed it
            "SELECT 'r', 1, n.user_id, n.goal_id FROM merged AS n\n"
            f"    WHERE NOT n.fresh AND NOT {all_updated}\n"
            f"    AND NOT EXISTS (SELECT 1 FROM updated AS u WHERE {_key('u', 'n')})"
        )
    writes.append(("marks", _marks(auto, inserted, changed)))
    writes.append(_pg_completions(d, auto))
    report.append("SELECT 'C', count(*), NULL, NULL FROM completions")
    report.append(_erased_report())
    return [(name, _indent(body)) for name, body in writes], report, sound


def _sqlite_statements(d: Dialect, auto: bool) -> MergeStatements:
    """Single writer: every row merged is written (required mode: only existing ones),
    so the outbox step runs first, from the rows before the update."""
    stages = _stages(d)
    chain = _with(stages)
    return MergeStatements(
        erased=f"{_with(stages[:1])}\n{_erased_report()}",
        completions=f"{chain}\n{_completions(d, '' if auto else ' AND NOT n.fresh')}",
        update=f"{chain}\n{_update(d)}",
        insert=f"{chain}\n{_insert(d)}" if auto else None,
        marks=f"{chain}\n{_marks(auto, '')}",
    )


def build_statements(dialect_name: str, assignment_mode: str) -> MergeStatements:
    d = Dialect(dialect_name)
    auto = assignment_mode == "auto"
    if not d.pg:
        return _sqlite_statements(d, auto)
    stages = _stages(d)
    written, report, sound = _written(d, auto, optimistic=False)
    report.append("SELECT 'c', 1, user_id, goal_id FROM paired WHERE held")
    fast, fast_report, _ = _written(d, auto, optimistic=True)
    return MergeStatements(
        postgres=_with(stages + written) + "\n" + "\nUNION ALL\n".join(report),
        claimed=_claimed(_stages(d, whole_users=True), written, report, sound),
        optimistic=_with(_stages(d, optimistic=True) + fast)
        + "\n"
        + "\nUNION ALL\n".join(fast_report),
    )
