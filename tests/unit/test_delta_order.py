"""Event-time order within a flush (contract §4 "completed_at = event time of the event that
completed the row"): a Delta is what the events give when stably sorted by event time,
whatever order they arrived in.

Held to an independent reference written from the rule, not from the code: the time at
which a level is first reached is the earliest event time whose running sum (counters)
or value (set goals) reaches it. Steps — what completed_at is read from — are the same
for every arrival order; with distinct times every field is.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.challenges import parse_config
from app.core.events import INT_MAX, Event, EventType
from app.core.progress import Delta, Family, Row, apply_delta, fold
from app.pipeline import source_of

CONFIG = parse_config(
    {
        "challenges": [
            {
                "challengeId": "order",
                "goals": [
                    {"goalId": "logins", "eventSource": "login", "requirement": {"targetValue": 4}},
                    {
                        "goalId": "kills",
                        "eventSource": "statistic",
                        "type": "increment",
                        "requirement": {"statCode": "s", "targetValue": 15},
                    },
                    {
                        "goalId": "best",
                        "eventSource": "statistic",
                        "requirement": {"statCode": "s", "targetValue": 10},
                    },
                    {
                        "goalId": "gain",
                        "eventSource": "statistic",
                        "requirement": {
                            "statCode": "s",
                            "targetValue": 5,
                            "progressMode": "relative",
                        },
                    },
                    {
                        "goalId": "streak",
                        "eventSource": "statistic",
                        "type": "increment",
                        "daily": True,
                        "requirement": {"statCode": "s", "targetValue": 3},
                    },
                    {
                        "goalId": "daily",
                        "eventSource": "login",
                        "type": "daily",
                        "requirement": {"targetValue": 1},
                    },
                ],
            },
            {
                "challengeId": "weekly",
                "rotation": {
                    "enabled": True,
                    "type": "global",
                    "schedule": "weekly",
                    "onExpiry": {"resetProgress": True},
                },
                "goals": [
                    {
                        "goalId": "weekly-gain",
                        "eventSource": "statistic",
                        "requirement": {
                            "statCode": "s",
                            "targetValue": 6,
                            "progressMode": "relative",
                        },
                    },
                    {
                        "goalId": "weekly-logins",
                        "eventSource": "login",
                        "requirement": {"targetValue": 3, "progressMode": "relative"},
                    },
                ],
            },
        ]
    }
)
# Saturday 22:00: minutes later cross a day and, two hours on, an ISO week
START = datetime(2026, 11, 28, 22, 0)

raw_events = st.lists(
    st.tuples(
        st.sampled_from(["login", "stat"]),
        st.integers(-2, 14),  # value
        st.integers(-1, 5),  # inc
        st.sampled_from([0, 1, 2, 3, 5, 90, 119, 120, 121, 1560]),  # minutes after START
    ),
    min_size=1,
    max_size=12,
)


def _events(raw) -> list[Event]:
    out = []
    for i, (kind, value, inc, minutes) in enumerate(raw):
        moment = START + timedelta(minutes=minutes)
        if kind == "login":
            out.append(Event(f"e{i}", EventType.LOGIN, "ns", "u", moment))
        else:
            out.append(Event(f"e{i}", EventType.STATISTIC, "ns", "u", moment, "s", value, inc))
    return out


def _fold(events: list[Event]) -> dict:
    deltas: dict = {}
    for event in events:
        fold(deltas, event, CONFIG.goals_for(source_of(event), event.stat_code))
    return deltas


def _fields(delta: Delta) -> tuple:
    return (
        delta.amount,
        delta.value,
        delta.first_base,
        delta.first_time,
        delta.last_time,
        delta.period_start,
        delta.events,
        list(delta.steps),
    )


def _reached(delta: Delta, need: int) -> datetime | None:
    """What the writer reads: the time of the first step whose level reaches `need`."""
    return next((moment for level, moment in delta.steps if level >= need), None)


def _reference_reached(delta: Delta, events: list[Event], need: int) -> datetime | None:
    """The same, from the rule: the earliest event time at which the running sum (or, for
    set goals, a value) reaches `need`."""
    mine = [e for e in events if _moves(delta, e)]
    best: datetime | None = None
    for event in mine:
        if delta.family is Family.SET:
            level = event.value
        else:
            level = sum(_step(e) for e in mine if e.event_time <= event.event_time)
        if level >= need and (best is None or event.event_time < best):
            best = event.event_time
    return best


def _step(event: Event) -> int:
    return 1 if event.type is EventType.LOGIN or event.inc <= 0 else event.inc


def _moves(delta: Delta, event: Event) -> bool:
    goals = CONFIG.goals_for(source_of(event), event.stat_code)
    if delta.goal not in goals or (delta.family is Family.SET and event.value < 0):
        return False
    start = delta.period_start
    return start is None or start <= event.event_time < (delta.period_end or start)


@settings(max_examples=120, deadline=None)
@given(raw_events, st.randoms(use_true_random=False))
def test_steps_are_in_event_time_order_whatever_the_arrival_order(raw, rng):
    events = _events(raw)
    shuffled = events[:]
    rng.shuffle(shuffled)
    one, other = _fold(events), _fold(shuffled)
    assert one.keys() == other.keys()
    for key, delta in one.items():
        again = other[key]
        assert delta.steps == again.steps
        assert (delta.first_time, delta.last_time, delta.events) == (
            again.first_time,
            again.last_time,
            again.events,
        )
        if delta.family is Family.COUNTER:
            assert delta.amount == again.amount
        elif delta.family is not Family.SET:
            continue
        times = [moment for _, moment in delta.steps]
        assert times == sorted(set(times))  # strictly rising in time
        levels = [level for level, _ in delta.steps]
        assert levels == sorted(set(levels))  # and in level
        # counters keep their steps up to the first that reaches the target
        top = delta.goal.target if delta.family is Family.COUNTER else 16
        for need in range(-3, top + 1):
            assert _reached(delta, need) == _reference_reached(delta, shuffled, need), need


@settings(max_examples=120, deadline=None)
@given(raw_events, st.randoms(use_true_random=False))
def test_a_flush_equals_its_events_stably_sorted_by_time(raw, rng):
    """Every field, ties included: equal times keep their arrival order (the latest value
    of two at one time is the later one, as two flushes would have it)."""
    shuffled = _events(raw)
    rng.shuffle(shuffled)
    in_order = sorted(shuffled, key=lambda e: e.event_time)
    one, other = _fold(shuffled), _fold(in_order)
    assert {k: _fields(d) for k, d in one.items()} == {k: _fields(d) for k, d in other.items()}


def _distinct(raw) -> list:
    seen: set = set()
    return [r for r in raw if not (r[3] in seen or seen.add(r[3]))]


@settings(max_examples=80, deadline=None)
@given(raw_events.map(_distinct), st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_rows_through_the_oracle(raw, rng):
    events = _events(raw)
    shuffled = events[:]
    rng.shuffle(shuffled)
    now = START + timedelta(days=3)
    for existing in (None, 0, 7):
        rows = []
        for arrival in (events, shuffled):
            out = {}
            for key, delta in sorted(_fold(arrival).items(), key=lambda kv: str(kv[0])):
                row = None
                if existing is not None:
                    row = Row("u", delta.goal.goal_id, delta.goal.challenge_id, "ns", existing)
                out[key] = apply_delta(row, delta, now)
            rows.append(out)
        assert rows[0] == rows[1]


def test_a_late_event_moves_the_completion_to_its_time():
    """Five logins for a target of 4, the second one arriving last: completed_at is the
    fourth by event time, not the fourth to arrive."""
    times = [START + timedelta(minutes=m) for m in (0, 1, 2, 3, 4)]
    arrival = [times[0], times[2], times[3], times[4], times[1]]
    deltas = _fold([Event(f"l{i}", EventType.LOGIN, "ns", "u", t) for i, t in enumerate(arrival)])
    delta = deltas[("u", "logins", None)]
    assert delta.steps == [(1, times[0]), (2, times[1]), (3, times[2]), (4, times[3])]
    row = apply_delta(None, delta, START + timedelta(hours=1))
    assert row is not None and row.completed_at == times[3]


def test_a_late_higher_value_takes_the_completion_of_a_set_goal():
    times = [START + timedelta(minutes=m) for m in (0, 1, 2)]
    arrival = [(times[2], 12), (times[0], 3), (times[1], 11)]
    deltas = _fold(
        [
            Event(f"s{i}", EventType.STATISTIC, "ns", "u", t, "s", v, 0)
            for i, (t, v) in enumerate(arrival)
        ]
    )
    delta = deltas[("u", "best", None)]
    assert delta.steps == [(3, times[0]), (11, times[1]), (12, times[2])]
    assert delta.value == 12
    row = apply_delta(None, delta, START + timedelta(hours=1))
    assert row is not None and row.completed_at == times[1]


def test_huge_increments_stay_in_int_range_in_any_order():
    big = [
        Event(
            f"s{i}", EventType.STATISTIC, "ns", "u", START + timedelta(minutes=m), "s", 0, INT_MAX
        )
        for i, m in enumerate((5, 0, 3))
    ]
    delta = _fold(big)[("u", "kills", None)]
    assert delta.amount == INT_MAX
    assert delta.steps == [(INT_MAX, START)]


def test_a_stream_in_reverse_order_gives_the_in_order_steps():
    """Every event late (a producer replaying backwards): sorted in batches as they wait,
    the steps equal those of the same events in order (counters below and above their
    target, set goals with a rising value)."""
    events = []
    for i in range(3000):
        moment = START + timedelta(seconds=i)
        events.append(Event(f"l{i}", EventType.LOGIN, "ns", "u", moment))
        events.append(Event(f"s{i}", EventType.STATISTIC, "ns", "u", moment, "s", i // 3, 1))
    forward, backward = _fold(events), _fold(events[::-1])
    assert forward.keys() == backward.keys()
    for key, delta in forward.items():
        assert _fields(backward[key]) == _fields(delta), key
    assert len(forward[("u", "best", None)].steps) == 1000  # one per rising value
