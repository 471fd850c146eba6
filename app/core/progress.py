"""Progress rules (contract §4, §6): event -> pending deltas, delta merging, and the pure
"apply a delta to a row" that the SQL writer mirrors and the tests use as the oracle.

No I/O here. A `Delta` is what the buffer holds for one (user, goal, period) until the
next flush. Goals fall into four families by how events combine:

- COUNTER: progress grows by an increment per event (logins; increment goals; relative
  logins). Holds the sum and the running sums in event-time order, up to the first that
  reaches the target (to find the exact event that crossed it, whatever the row's
  progress turns out to be).
- SET: progress becomes the stat value (absolute and relative stat goals). Holds the
  latest value by event time, the baseline candidate of the first event, and the
  record-breaking values in event-time order (the first event that can have completed
  the row).
- DAILY: "completed today" goals. Holds the first event time of that UTC day.
- COUNTER_DAILY: increment goals with `daily: true`: the first event of the UTC day
  counts, the rest of that day does not.

Steps are (level, event time) pairs in event-time order whatever order the events of a
flush arrived in (a late event is inserted where its time puts it), so `completed_at` is
the time of the event that reached the target first in event time; the writer sends
them as they are (tables/merge_sql.py).

Period-sensitive goals (daily kinds, rotating goals) are buffered per period, so one
flush can apply several days of a replay in order, exactly like live processing did.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import IntEnum

from app.core.challenges import Goal, Kind, Schedule, Source
from app.core.events import INT_MAX, Event, EventType, clamp_int

NOT_STARTED = "not_started"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
CLAIMED = "claimed"


class Family(IntEnum):
    COUNTER = 1
    SET = 2
    DAILY = 3
    COUNTER_DAILY = 4


def family_of(goal: Goal) -> Family:
    if goal.kind is Kind.DAILY:
        return Family.DAILY
    if goal.kind is Kind.INCREMENT and goal.daily:
        return Family.COUNTER_DAILY
    if goal.source is Source.STATISTIC and (goal.kind is Kind.ABSOLUTE or goal.relative):
        return Family.SET
    return Family.COUNTER


# ------------------------------------------------------------------ periods (UTC)


def day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def period_bounds(schedule: Schedule, moment: datetime) -> tuple[datetime, datetime]:
    """[start, end) of the rotation period containing `moment`."""
    start = day_start(moment)
    if schedule is Schedule.DAILY:
        return start, start + timedelta(days=1)
    if schedule is Schedule.WEEKLY:
        start -= timedelta(days=start.weekday())
        return start, start + timedelta(days=7)
    start = start.replace(day=1)
    days = calendar.monthrange(start.year, start.month)[1]
    return start, start + timedelta(days=days)


def period_of(goal: Goal, moment: datetime) -> tuple[datetime, datetime] | None:
    """The buffering period of an event for this goal (None: not period-sensitive)."""
    schedule = rule_of(goal)[2]
    return None if schedule is None else _period(schedule, moment)


# Per goal, what fold needs of it (family, buffering schedule), worked out once: a goal is
# looked at for every event that moves it. Keyed by id() with the goal kept beside it, so
# an id reused after a config reload can never return another goal's rule.
_RULES: dict[int, tuple[Goal, Family, Schedule | None]] = {}
# Period bounds per (schedule, day): events of one day share them.
_PERIODS: dict[tuple[Schedule, int], tuple[datetime, datetime]] = {}
_CACHE_LIMIT = 4096


def _schedule_of(goal: Goal) -> Schedule | None:
    if goal.kind is Kind.DAILY or (goal.kind is Kind.INCREMENT and goal.daily):
        return Schedule.DAILY
    if goal.rotation is not None:
        return goal.rotation.schedule
    return None


def rule_of(goal: Goal) -> tuple[Goal, Family, Schedule | None]:
    """(goal, family, buffering schedule or None), cached per goal object."""
    rule = _RULES.get(id(goal))
    if rule is None or rule[0] is not goal:
        if len(_RULES) >= _CACHE_LIMIT:
            _RULES.clear()
        rule = _RULES[id(goal)] = (goal, family_of(goal), _schedule_of(goal))
    return rule


def _period(schedule: Schedule, moment: datetime) -> tuple[datetime, datetime]:
    key = (schedule, moment.toordinal())
    bounds = _PERIODS.get(key)
    if bounds is None:
        if len(_PERIODS) >= _CACHE_LIMIT:
            _PERIODS.clear()
        bounds = _PERIODS[key] = period_bounds(schedule, moment)
    return bounds


# ------------------------------------------------------------------ deltas


class Delta:
    """Pending change for one (user, goal, period); merged in place per event."""

    __slots__ = (
        "_late",
        "_steps",
        "amount",
        "events",
        "family",
        "first_base",
        "first_time",
        "goal",
        "last_time",
        "namespace",
        "period_end",
        "period_start",
        "user_id",
        "value",
        "value_time",
    )

    def __init__(
        self,
        goal: Goal,
        user_id: str,
        namespace: str,
        period: tuple[datetime, datetime] | None,
        event_time: datetime,
        family: Family | None = None,
    ):
        self.goal = goal
        self.family = family_of(goal) if family is None else family
        self.user_id = user_id
        self.namespace = namespace
        self.period_start: datetime | None = period[0] if period else None
        self.period_end: datetime | None = period[1] if period else None
        self.amount = 0  # COUNTER sum / COUNTER_DAILY increment of the day's first event
        self.value = 0  # SET: latest value by event time
        self.value_time = event_time
        self.first_base: int | None = None  # SET: value - inc of the first event
        self.first_time = event_time
        self.last_time = event_time
        # (level, event time) of the events that arrived in time order; late arrivals
        # (at or before the last step's time) wait in `_late` until steps are read
        self._steps: list[tuple[int, datetime]] = []
        self._late: list[tuple[int, datetime]] | None = None
        self.events = 0

    def add(self, event: Event) -> None:
        """Fold one event in, as if the flush's events were stably sorted by event time:
        steps are kept in event-time order whatever the arrival order (a tie of equal
        times merges into one step); the latest value and the first baseline go by event
        time, equal times by arrival (as consecutive flushes would take them)."""
        t = event.event_time
        family = self.family
        self.events += 1
        if family is Family.COUNTER:
            step = 1 if event.type is EventType.LOGIN or event.inc <= 0 else event.inc
            amount = self.amount + step
            self.amount = amount if amount < INT_MAX else INT_MAX
            steps = self._steps
            if not steps:
                steps.append((step, t))
            elif t > steps[-1][1]:  # in time order (the usual case): one comparison
                level = steps[-1][0]
                if level < self.goal.target:  # later steps cannot complete the row
                    level += step
                    steps.append((level if level < INT_MAX else INT_MAX, t))
            else:
                self._arrived_late(step, t)
        elif family is Family.SET:
            value = event.value
            first = self.events == 1
            if first or t >= self.value_time:
                self.value, self.value_time = value, t
            if first or t < self.first_time:
                # value - inc of two clamped ints can leave the INT range (5 - -2^31)
                self.first_base = max(clamp_int(value - event.inc), -INT_MAX)
            steps = self._steps
            if not steps or t > steps[-1][1]:
                if not steps or value > steps[-1][0]:  # else an earlier step is as high
                    steps.append((value, t))
            else:
                self._arrived_late(value, t)
        elif family is Family.COUNTER_DAILY and (self.events == 1 or t < self.first_time):
            self.amount = event.inc if event.type is EventType.STATISTIC and event.inc > 0 else 1
        if t < self.first_time:
            self.first_time = t
        elif t > self.last_time:
            self.last_time = t

    def _arrived_late(self, amount: int, t: datetime) -> None:
        """An event at or before the last step's time: kept aside, sorted in when the
        steps are read (or when enough wait: a stream in reverse order stays n log n)."""
        late = self._late
        if late is None:
            self._late = [(amount, t)]
        else:
            late.append((amount, t))
            if len(late) > len(self._steps) + 256:
                self._settle()

    @property
    def steps(self) -> list[tuple[int, datetime]]:
        """(level, event time) in event-time order, one per distinct time: COUNTER the
        running sums up to the first that reaches the target, SET the values that beat
        every value of an earlier time. What the writer sends and completed_at is read
        from."""
        if self._late:
            self._settle()
        return self._steps

    def _settle(self) -> None:
        late, self._late = self._late or [], None
        if self.family is Family.COUNTER:
            self._steps = _running_sums(self._steps, late, self.goal.target)
        else:
            self._steps = _staircase(self._steps, late)

    @property
    def key(self) -> tuple[str, str]:
        return (self.user_id, self.goal.goal_id)

    def __repr__(self) -> str:
        return (
            f"Delta({self.user_id!r}, {self.goal.goal_id!r}, {self.family.name}, "
            f"period={self.period_start}, amount={self.amount}, value={self.value}, "
            f"events={self.events})"
        )


def _running_sums(
    steps: list[tuple[int, datetime]], late: list[tuple[int, datetime]], target: int
) -> list[tuple[int, datetime]]:
    """COUNTER steps with late increments sorted in: increments summed per time, running
    sums in time order, cut after the first that reaches the target."""
    by_time: dict[datetime, int] = {}
    previous = 0
    for level, moment in steps:  # levels in time order: back to increments
        by_time[moment] = level - previous
        previous = level
    for step, moment in late:
        by_time[moment] = by_time.get(moment, 0) + step
    out = []
    level = 0
    for moment in sorted(by_time):
        level = min(level + by_time[moment], INT_MAX)
        out.append((level, moment))
        if level >= target:
            break
    return out


def _staircase(
    steps: list[tuple[int, datetime]], late: list[tuple[int, datetime]]
) -> list[tuple[int, datetime]]:
    """SET steps with late values sorted in: per time the highest value, then only the
    values above every value of an earlier time."""
    best: dict[datetime, int] = {}
    for value, moment in (*steps, *late):
        if moment not in best or value > best[moment]:
            best[moment] = value
    out: list[tuple[int, datetime]] = []
    for moment in sorted(best):
        if not out or best[moment] > out[-1][0]:
            out.append((best[moment], moment))
    return out


BufferKey = tuple[str, str, datetime | None]


def applies(goal: Goal, event: Event) -> bool:
    """Negative stat values are ignored for value-setting goals (contract §4)."""
    return event.value >= 0 or family_of(goal) is not Family.SET


def fold(deltas: dict[BufferKey, Delta], event: Event, goals: Iterable[Goal]) -> int:
    """Merge one event into the pending deltas; returns how many goals it moved.

    Whole or nothing: every goal's period and key is worked out before the first delta
    changes, so nothing that can fail runs between two goals' updates.
    """
    moment = event.event_time
    user_id = event.user_id
    negative = event.value < 0
    plan: list[tuple[Goal, Family, tuple[datetime, datetime] | None, BufferKey]] = []
    for goal in goals:
        rule = _RULES.get(id(goal))
        if rule is None or rule[0] is not goal:
            rule = rule_of(goal)
        family, schedule = rule[1], rule[2]
        if negative and family is Family.SET:
            continue  # negative stat values are ignored for value-setting goals (contract §4)
        if schedule is None:
            plan.append((goal, family, None, (user_id, goal.goal_id, None)))
        else:
            bounds = _period(schedule, moment)
            plan.append((goal, family, bounds, (user_id, goal.goal_id, bounds[0])))
    for goal, family, span, key in plan:
        delta = deltas.get(key)
        if delta is None:
            delta = deltas[key] = Delta(goal, user_id, event.namespace, span, moment, family)
        delta.add(event)
    return len(plan)


# ------------------------------------------------------------------ the oracle


@dataclass(frozen=True, slots=True)
class Row:
    """One user_goal_progress row as the rules see it (timestamps naive UTC)."""

    user_id: str
    goal_id: str
    challenge_id: str
    namespace: str
    progress: int = 0
    status: str = NOT_STARTED
    completed_at: datetime | None = None
    claimed_at: datetime | None = None
    updated_at: datetime | None = None
    is_active: bool = True
    expires_at: datetime | None = None
    baseline_value: int | None = None


def _claimed(row: Row) -> bool:
    return row.status == CLAIMED or row.claimed_at is not None


def _completion_time(delta: Delta, need: int) -> datetime:
    """Event time of the first buffered event whose level reached `need`."""
    for level, moment in delta.steps:
        if level >= need:
            return moment
    return delta.first_time if delta.family is Family.COUNTER_DAILY else delta.last_time


@dataclass(frozen=True, slots=True)
class Write:
    """What a flush of one delta does to its row (`row` is the same object when nothing
    may change). `completes`: the write moves the row into `completed` for the first
    time in its period — a goal-completed event (docs/completions.md) — never for a
    claimed or already completed row whose status is kept."""

    row: Row | None
    completes: bool = False


def completion_period(delta: Delta) -> tuple[datetime, datetime] | None:
    """The period a completion belongs to: the rotation period of a rotating goal, the
    UTC day of a `daily` goal; None for goals that complete once."""
    if delta.period_start is None or delta.period_end is None:
        return None
    if delta.goal.rotation is None and delta.family is not Family.DAILY:
        return None
    return delta.period_start, delta.period_end


def _period_flags(current: Row, delta: Delta, fresh: bool, now: datetime) -> tuple[bool, bool]:
    """(new period, stale) of a rotating goal's row for this delta."""
    if delta.goal.rotation is None or fresh:
        return False, False
    if current.expires_at is not None:
        return delta.first_time >= current.expires_at, (
            (delta.period_end or datetime.max) < current.expires_at
        )
    reference = current.updated_at or now
    return reference < (delta.period_start or datetime.min), reference >= (
        delta.period_end or datetime.max
    )


def _levels(family: Family, current: Row, delta: Delta) -> tuple[int, int, int]:
    """(new progress, baseline candidate, level the buffered steps start from)."""
    if family is Family.SET:
        return delta.value, delta.first_base if delta.first_base is not None else 0, 0
    if family is Family.DAILY:
        return 1, 0, 0
    return min(current.progress + delta.amount, INT_MAX), current.progress, current.progress


def _guards(
    current: Row, delta: Delta, fresh: bool, now: datetime, counted_day: datetime | None
) -> tuple[bool, bool, bool]:
    """(the row may not be written, a new rotation period, a claimed row reopens)."""
    family = delta.family
    # Period-sensitive families always carry a period; the fallback only satisfies typing.
    period_start = delta.period_start or datetime.min
    new_period, stale = _period_flags(current, delta, fresh, now)
    new_day = family is Family.DAILY and (
        current.completed_at is None or current.completed_at < period_start
    )
    rotation = delta.goal.rotation
    reopen = _claimed(current) and (
        new_day or (new_period and rotation is not None and rotation.allow_reselection)
    )
    guarded = (
        stale
        or (family is Family.DAILY and not new_day)
        or (_claimed(current) and not reopen)
        or (
            family is Family.COUNTER_DAILY
            and not fresh
            and (counted_day is not None and counted_day >= period_start)
        )
    )
    return guarded, new_period, reopen


def _status(
    current: Row, delta: Delta, need: int, completes: bool, keep_completed: bool, restart: bool
) -> tuple[str, datetime | None]:
    """(status, completed_at) of a non-daily row: completed is sticky unless restarted."""
    if keep_completed:
        return COMPLETED, current.completed_at or _completion_time(delta, need)
    if completes:
        return COMPLETED, _completion_time(delta, need)
    return IN_PROGRESS, None if restart else current.completed_at


def apply_delta(
    row: Row | None,
    delta: Delta,
    now: datetime,
    *,
    assignment_mode: str = "auto",
    counted_day: datetime | None = None,
) -> Row | None:
    """The row after a flush of `delta` (same row object when nothing may change)."""
    return apply_write(
        row, delta, now, assignment_mode=assignment_mode, counted_day=counted_day
    ).row


def apply_write(
    row: Row | None,
    delta: Delta,
    now: datetime,
    *,
    assignment_mode: str = "auto",
    counted_day: datetime | None = None,
) -> Write:
    """The row after a flush of `delta`, and whether that write is a completion.

    `counted_day` is the service's own "last counted day" mark for COUNTER_DAILY goals.
    This is the executable form of the rules; tables/merge_sql.py expresses the same in SQL.
    """
    goal = delta.goal
    family = delta.family
    if row is None:
        if assignment_mode != "auto":
            return Write(None)
        current = Row(delta.user_id, goal.goal_id, goal.challenge_id, delta.namespace)
        fresh = True
    else:
        current, fresh = row, False
        if not row.is_active:
            return Write(row)

    guarded, new_period, reopen = _guards(current, delta, fresh, now, counted_day)
    if guarded:
        return Write(row)

    restart = goal.rotation is not None and (fresh or new_period) and goal.rotation.reset_progress
    progress, first_base, base_level = _levels(family, current, delta)
    baseline = current.baseline_value
    if goal.relative and (restart or baseline is None):
        baseline = first_base
    offset = baseline if goal.relative and baseline is not None else 0

    keep_completed = current.status in (COMPLETED, CLAIMED) and not restart
    need = goal.target + offset - base_level
    completes = progress - offset >= goal.target or any(level >= need for level, _ in delta.steps)
    completed_at: datetime | None
    if family is Family.DAILY:
        status, completed_at = COMPLETED, delta.first_time
    else:
        status, completed_at = _status(current, delta, need, completes, keep_completed, restart)
    new = replace(
        current,
        progress=progress,
        status=status,
        completed_at=completed_at,
        claimed_at=None if reopen else current.claimed_at,
        updated_at=now,
        expires_at=delta.period_end if goal.rotation is not None else current.expires_at,
        baseline_value=baseline,
    )
    return Write(new, family is Family.DAILY or (completes and not keep_completed))
