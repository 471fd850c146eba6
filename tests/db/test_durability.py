"""Durable acknowledgements at the flusher/writer level (contract §6), on real PostgreSQL
with a real second session: group commit, rows held by another transaction (skip +
carry), poison rows whose dead letter cannot be stored as-is, and flushes that always
finish."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from sqlalchemy import func, select, text

from app.core.events import Event
from app.core.progress import Delta, fold
from app.core.settings import async_database_url
from app.pipeline import source_of
from tables.db import make_engine
from tables.flusher import Flusher
from tables.schema import challenge_dead_letters, challenge_processed_events
from tables.waiters import Ack
from tables.write_result import RowsLocked, TransientWriteError
from tables.writer import Writer
from tests.helpers.faults import RowLock
from tests.helpers.support import config, goal, login, put_row, row, rows, stat, ts
from tests.helpers.wait import wait_until_async

ABORTED, COMMITTED, TIMED_OUT = Ack.ABORTED, Ack.COMMITTED, Ack.TIMED_OUT

WHEN = "2026-11-20 10:00"
CFG = config(
    goal("logins", "login", target=1000, type="increment"),
    goal("kills", "statistic:enemy_kills", target=1000, type="increment"),
    goal("level", "statistic:level", target=50),
)


def goals_of(event: Event):
    return CFG.goals_for(source_of(event), event.stat_code)


def durable_flusher(engine, **kwargs) -> Flusher:
    """The gRPC configuration: event ids recorded, a long interval (only urgency flushes)."""
    kwargs.setdefault("interval", 3600)
    return Flusher(Writer(engine, batch_size=100), event_id_window=600, **kwargs)


async def seed(engine, users, goal_ids=("logins", "kills", "level")) -> None:
    for user in users:
        for goal_id in goal_ids:
            await put_row(engine, user, goal_id, status="not_started")


async def processed_ids(engine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(select(challenge_processed_events.c.event_id))).scalars())


async def test_durable_caller_starts_a_flush_at_once_and_later_callers_form_the_next_group(
    pg_engine,
):
    """Interval 1 h: a waiting caller is still committed within a flush's duration, and
    300 concurrent callers share a handful of flushes instead of 300."""
    flushes: list[int] = []
    flusher = durable_flusher(pg_engine, on_flush=lambda g, _r, _t: flushes.append(g.events))
    flusher.start()
    try:
        # committed within the callers' 10 s deadline: nowhere near the 1 h interval
        event = login("gc-first", WHEN)
        generation, _ = await flusher.add(event, goals_of(event), urgent=True)
        assert await flusher.committed(generation, event.user_id, 10) == COMMITTED

        async def caller(i: int) -> int:
            event = stat(f"gc-{i % 50}", "enemy_kills", 0, WHEN, inc=1)
            generation, _ = await flusher.add(event, goals_of(event), urgent=True)
            return await flusher.committed(generation, event.user_id, 10)

        outcomes = await asyncio.gather(*(caller(i) for i in range(300)))
    finally:
        await flusher.close()
    assert set(outcomes) == {COMMITTED}
    assert sum(flushes) == 301
    assert len(flushes) <= 20, flushes  # grouped: each flush took what arrived meanwhile
    found = await rows(pg_engine)
    assert sum(r.progress for (u, g), r in found.items() if g == "kills") == 300


async def test_buffered_events_wait_for_the_interval(pg_engine):
    """Not urgent (buffered acks, Kafka): the interval still decides when to write.

    Measured on the clock the flusher schedules by (time.monotonic): the write cannot
    end before the generation's interval has passed, however loaded the machine is."""
    written_at: list[float] = []
    flusher = durable_flusher(
        pg_engine, interval=0.3, on_flush=lambda _g, _r, _t: written_at.append(time.monotonic())
    )
    flusher.start()
    await asyncio.sleep(0)  # one loop turn: the flusher task runs up to its wait for work
    try:
        event = login("lazy", WHEN)
        generation, _ = await flusher.add(event, goals_of(event))
        await asyncio.wait_for(asyncio.shield(generation.done), 10)
        assert written_at and written_at[0] >= generation.created + 0.3
    finally:
        await flusher.close()


async def test_a_held_user_is_carried_while_everyone_else_commits(pg_engine, pg_url):
    """Another session holds all of one user's rows: the others' callers are answered at
    once, the held user's callers wait; its event ids are not recorded while held; after
    the release its rows are exact, in event order."""
    people = [f"held-{i}" for i in range(5)]
    await seed(pg_engine, people)
    carried: list[int] = []
    flusher = durable_flusher(
        pg_engine, on_flush=lambda _g, r, _t: carried.append(len(r.carried)), carry_retry=0.02
    )
    flusher.start()
    held_user, others = people[0], people[1:]
    try:
        async with RowLock(pg_url, [held_user]) as lock:
            assert lock.locked == 3
            waits = []
            for n, user in enumerate(people * 3):
                for event in (
                    login(user, WHEN, event_id=f"{user}-l{n}"),
                    stat(user, "enemy_kills", 0, WHEN, inc=2, event_id=f"{user}-k{n}"),
                    stat(user, "level", 10 + n, WHEN, event_id=f"{user}-v{n}"),
                ):
                    generation, _ = await flusher.add(event, goals_of(event), urgent=True)
                    waits.append((user, generation))
            # committed while the held user's lock is still held (it outlives this wait)
            outcomes = await asyncio.gather(
                *(flusher.committed(g, u, 10) for u, g in waits if u in others)
            )
            assert set(outcomes) == {COMMITTED}
            # the held user's callers are still waiting, nothing of theirs is written
            held_waits = [flusher.committed(g, u, 0.5) for u, g in waits if u == held_user]
            assert set(await asyncio.gather(*held_waits)) == {TIMED_OUT}
            assert (await row(pg_engine, held_user, "logins")).progress == 0
            assert not {i for i in await processed_ids(pg_engine) if i.startswith(held_user)}
            assert flusher.carried > 0 and max(carried) > 0
            pending = asyncio.gather(
                *(flusher.committed(g, u, 10) for u, g in waits if u == held_user)
            )
        assert set(await pending) == {COMMITTED}
    finally:
        await flusher.close()
    for i, user in enumerate(people):
        assert (await row(pg_engine, user, "logins")).progress == 3
        assert (await row(pg_engine, user, "kills")).progress == 6
        assert (await row(pg_engine, user, "level")).progress == 20 + i  # the last value
    assert {i for i in await processed_ids(pg_engine) if i.startswith(held_user)} == {
        f"{held_user}-{k}{n}" for n in (0, 5, 10) for k in "lkv"
    }
    assert flusher.carried == 0


async def test_one_held_row_holds_its_user_whole(pg_engine, pg_url):
    """Only the 'kills' row is held: the user's login (another row) is not written either
    until the release -- an event is applied whole, and a user's rows in order."""
    await seed(pg_engine, ["half", "free"])
    flusher = durable_flusher(pg_engine, carry_retry=0.02)
    flusher.start()
    try:
        async with RowLock(pg_url, ["half"], goal_id="kills") as lock:
            assert lock.locked == 1
            pairs = []
            for user in ("half", "free"):
                for event in (login(user, WHEN), stat(user, "enemy_kills", 0, WHEN, inc=5)):
                    generation, _ = await flusher.add(event, goals_of(event), urgent=True)
                    pairs.append((user, generation))
            free = [flusher.committed(g, u, 10) for u, g in pairs if u == "free"]
            assert set(await asyncio.gather(*free)) == {COMMITTED}
            assert (await row(pg_engine, "half", "logins")).progress == 0
            half = asyncio.gather(*(flusher.committed(g, u, 10) for u, g in pairs if u == "half"))
        assert set(await half) == {COMMITTED}
    finally:
        await flusher.close()
    assert (await row(pg_engine, "half", "logins")).progress == 1
    assert (await row(pg_engine, "half", "kills")).progress == 5
    assert (await row(pg_engine, "free", "kills")).progress == 5


async def test_writes_with_kafka_positions_wait_for_held_rows(pg_engine, pg_url):
    """With `extra` (Kafka positions) nothing is committed while a row is held: positions
    never cover an uncommitted event. The flush completes after the release."""
    await seed(pg_engine, ["k-held", "k-free"])
    stored: list[int] = []

    async def positions(conn) -> None:
        stored.append(1)

    writer = Writer(pg_engine)
    event = login("k-held", WHEN)
    deltas = [_delta_for(event), _delta_for(login("k-free", WHEN))]
    async with RowLock(pg_url, ["k-held"]):
        with pytest.raises(RowsLocked):
            await writer.write(deltas, positions)
        assert stored == []
        assert (await row(pg_engine, "k-free", "logins")).progress == 0  # rolled back
        locked: list[BaseException] = []
        flusher = Flusher(
            writer,
            interval=0.05,
            extra_for=lambda _g: positions,
            on_retry=lambda exc, _n: locked.append(exc),
        )
        flusher.start()
        generation, _ = await flusher.add(event, goals_of(event))
        await wait_until_async(lambda: len(locked) >= 3, message="three attempts meeting the lock")
        assert all(isinstance(exc, RowsLocked) for exc in locked), locked
        assert not generation.done.done() and stored == []
    await asyncio.wait_for(asyncio.shield(generation.done), 10)
    await flusher.close()
    assert stored == [1]
    assert (await row(pg_engine, "k-held", "logins")).progress == 1


def _delta_for(event: Event) -> Delta:
    (goal_,) = [g for g in goals_of(event) if g.goal_id == "logins"]
    delta = Delta(goal_, event.user_id, event.namespace, None, event.event_time)
    delta.add(event)
    return delta


async def test_nul_user_id_is_isolated_and_dead_lettered_escaped(pg_engine):
    """A user id PostgreSQL text cannot hold reaches the database: the good rows of the
    same flush commit, and the bad row's dead letter is stored escaped."""
    flusher = durable_flusher(pg_engine)
    flusher.start()
    bad_user = "evil\x00user"
    try:
        pairs = []
        for user in [f"good-{i}" for i in range(40)] + [bad_user] + ["good-x"]:
            event = login(user, WHEN)
            generation, _ = await flusher.add(event, goals_of(event), urgent=True)
            pairs.append((user, generation))
        outcomes = await asyncio.gather(*(flusher.committed(g, u, 10) for u, g in pairs))
    finally:
        await flusher.close()
    assert set(outcomes) == {COMMITTED}  # the flush finished
    found = await rows(pg_engine)
    assert len(found) == 41 and all(r.progress == 1 for r in found.values())
    async with pg_engine.connect() as conn:
        letters = (await conn.execute(select(challenge_dead_letters))).all()
    assert [(r.user_id, r.goal_id) for r in letters] == [("evil\\x00user", "logins")]
    assert "\\x00" in letters[0].payload


async def test_poison_row_with_unstorable_dead_letter_at_the_writer(pg_engine):
    """Writer level: a NUL user id and an invalid (surrogate) one among good rows."""
    good = [_delta_for(login(f"w-{i}", WHEN)) for i in range(10)]
    bad = [_delta_for(login("nul\x00id", WHEN)), _delta_for(login("sur\udcffid", WHEN))]
    result = await Writer(pg_engine, batch_size=4).write([*good[:5], *bad, *good[5:]])
    assert result.inserted == 10
    assert sorted(d.user_id for d, _ in result.poisoned) == sorted(d.user_id for d in bad)
    assert result.dead_letters_escaped == 2 and result.dead_letters_lost == 0
    async with pg_engine.connect() as conn:
        users = set((await conn.execute(select(challenge_dead_letters.c.user_id))).scalars())
    assert users == {"nul\\x00id", "sur\\udcffid"}


class _Broken(Writer):
    """Every write fails with an error that is neither an outage nor a row's fault."""

    def __init__(self, *args, error: Exception, **kwargs):
        super().__init__(*args, **kwargs)
        self.error = error
        self.calls: list[bool] = []

    async def write(self, deltas, extra=None, **kwargs):
        self.calls.append(kwargs.get("isolate", False))
        raise self.error


async def test_a_flush_that_keeps_failing_is_isolated_then_given_up_not_retried_forever(
    pg_engine,
):
    writer = _Broken(pg_engine, error=RuntimeError("a bug"))
    flusher = Flusher(writer, interval=3600, max_backoff=0.01)
    flusher.start()
    event = login("doomed", WHEN)
    generation, _ = await flusher.add(event, goals_of(event), urgent=True)
    assert await flusher.committed(generation, event.user_id, 30) == ABORTED
    result = generation.done.result()
    assert result.abandoned == 1
    assert writer.calls[0] is False and writer.calls[-1] is True and len(writer.calls) <= 5
    await flusher.close()


async def test_deadlock_like_errors_are_retried_a_few_times_then_isolated(pg_engine):
    class _Deadlocks(Writer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.attempts: list[bool] = []

        async def write(self, deltas, extra=None, **kwargs):
            self.attempts.append(kwargs.get("isolate", False))
            if not kwargs.get("isolate"):
                raise TransientWriteError("deadlock detected", kind="retry")
            return await super().write(deltas, extra, **kwargs)

    writer = _Deadlocks(pg_engine)
    flusher = Flusher(writer, interval=3600, max_backoff=0.01)
    event = login("stubborn", WHEN)
    flusher.try_add(event, goals_of(event))
    await flusher.flush_now()
    assert writer.attempts == [False, False, False, True]
    assert (await row(pg_engine, "stubborn", "logins")).progress == 1


async def test_health_stall_flag_follows_failing_flushes(pg_url):
    """`stalled` (what health reads) is set while flushes keep failing, cleared after."""
    engine = make_engine(async_database_url("DATABASE_URL", pg_url))
    try:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE user_goal_progress RENAME TO ugp_away"))
        flusher = Flusher(Writer(engine), interval=3600, max_backoff=0.05)
        flusher.start()
        event = login("stalled-user", WHEN)
        try:
            generation, _ = await flusher.add(event, goals_of(event), urgent=True)
            await wait_until_async(lambda: flusher.stalled(60), message="the stall flag")
        finally:
            async with engine.begin() as conn:
                await conn.execute(text("ALTER TABLE ugp_away RENAME TO user_goal_progress"))
        assert await flusher.committed(generation, event.user_id, 15) == COMMITTED
        assert not flusher.stalled(60)
        await flusher.close()
        async with engine.connect() as conn:
            progress = await conn.scalar(
                text("SELECT progress FROM user_goal_progress WHERE user_id = 'stalled-user'")
            )
        assert progress == 1
    finally:
        await engine.dispose()


async def test_claimed_event_ids_of_a_held_user_are_recorded_only_with_its_rows(pg_engine, pg_url):
    """A redelivery of a held user's event after its rows are written is a duplicate;
    before that, its id is not in the table (a restart would apply it, not drop it)."""
    await seed(pg_engine, ["redo"])
    flusher = durable_flusher(pg_engine, carry_retry=0.02)
    flusher.start()
    try:
        async with RowLock(pg_url, ["redo"]):
            event = login("redo", WHEN, event_id="redo-1")
            generation, _ = await flusher.add(event, goals_of(event), urgent=True)
            assert await flusher.committed(generation, "redo", 0.3) == TIMED_OUT
            assert "redo-1" not in await processed_ids(pg_engine)
        assert await flusher.committed(generation, "redo", 10) == COMMITTED
        assert "redo-1" in await processed_ids(pg_engine)
        again = login("redo", WHEN, event_id="redo-1")
        generation, _ = await flusher.add(again, goals_of(again), urgent=True)
        assert await flusher.committed(generation, "redo", 10) == COMMITTED
    finally:
        await flusher.close()
    assert (await row(pg_engine, "redo", "logins")).progress == 1
    async with pg_engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(challenge_dead_letters)) == 0


async def test_a_prune_stuck_behind_a_lock_does_not_hold_up_commits(pg_engine, pg_url):
    """Deleting expired event ids runs beside the flushes: while another session holds
    one of those rows (the prune waits for it), durable callers still commit."""
    async with pg_engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO challenge_processed_events (event_id, expires_at) "
                "VALUES ('expired-1', now() - interval '1 hour')"
            )
        )
    holder = await asyncpg.connect(pg_url)
    transaction = holder.transaction()
    await transaction.start()
    await holder.fetch(
        "SELECT 1 FROM challenge_processed_events WHERE event_id = 'expired-1' FOR UPDATE"
    )
    flusher = durable_flusher(pg_engine, prune_every=0.0)  # prune after every flush
    flusher.start()
    try:
        for n in range(3):  # the first flush starts the prune, which then waits on the lock
            event = login(f"pruned-{n}", WHEN, event_id=f"pruned-{n}")
            generation, _ = await flusher.add(event, goals_of(event), urgent=True)
            assert await flusher.committed(generation, event.user_id, 5) == COMMITTED
        assert "expired-1" in await processed_ids(pg_engine)  # the prune is still waiting
    finally:
        await transaction.rollback()
        await holder.close()
        await flusher.close()  # waits for the prune
    assert "expired-1" not in await processed_ids(pg_engine)
    assert {f"pruned-{n}" for n in range(3)} <= await processed_ids(pg_engine)


async def test_a_small_durable_flush_is_one_statement_outside_a_transaction(pg_engine):
    """Rows, daily marks and event ids in one round trip (no BEGIN/COMMIT): the
    statement the driver was sent is the whole flush."""
    await seed(pg_engine, ["one-a"])
    results = []
    flusher = durable_flusher(pg_engine, on_flush=lambda _g, r, _t: results.append(r))
    flusher.start()
    try:
        for event in (
            login("one-a", WHEN, event_id="one-1"),
            stat("one-a", "enemy_kills", 0, WHEN, inc=4, event_id="one-2"),
            stat("one-b", "level", 7, WHEN, event_id="one-3"),  # no row yet: inserted
        ):
            generation, _ = await flusher.add(event, goals_of(event), urgent=True)
        assert await flusher.committed(generation, "one-b", 10) == COMMITTED
    finally:
        await flusher.close()
    assert [(r.round_trips, r.statements, r.updated, r.inserted) for r in results] == [(1, 1, 2, 1)]
    assert {"one-1", "one-2", "one-3"} <= await processed_ids(pg_engine)
    assert (await row(pg_engine, "one-a", "kills")).progress == 4
    assert (await row(pg_engine, "one-b", "level")).progress == 7


async def test_a_duplicate_id_undoes_the_one_statement_and_the_long_way_applies_the_rest(
    pg_engine,
):
    """An id another replica already recorded: the one statement must not half-apply
    (it is undone whole); the transaction path re-folds without it."""
    first = Flusher(Writer(pg_engine), event_id_window=600)
    await first.add(*_with_goals(stat("dup-u", "enemy_kills", 0, WHEN, inc=3, event_id="d-1")))
    await first.flush_now()
    results = []
    second = Flusher(
        Writer(pg_engine), event_id_window=600, on_flush=lambda _g, r, _t: results.append(r)
    )
    for event in (
        stat("dup-u", "enemy_kills", 0, WHEN, inc=3, event_id="d-1"),  # the redelivery
        stat("dup-u", "enemy_kills", 0, WHEN, inc=5, event_id="d-2"),
        login("dup-v", WHEN, event_id="d-3"),
    ):
        await second.add(*_with_goals(event))
    await second.flush_now()
    assert [(r.duplicates, r.round_trips > 1) for r in results] == [(1, True)]
    assert (await row(pg_engine, "dup-u", "kills")).progress == 8
    assert (await row(pg_engine, "dup-v", "logins")).progress == 1
    assert {"d-1", "d-2", "d-3"} <= await processed_ids(pg_engine)


def _with_goals(event: Event) -> tuple[Event, object]:
    return event, goals_of(event)


@pytest.mark.parametrize(("in_flight", "delayed"), [(3, False), (40, True)])
async def test_the_busy_commit_delay_applies_only_while_enough_calls_are_in_flight(
    pg_engine, in_flight, delayed
):
    """A quiet server commits after the short delay; a busy one waits the long one.

    The long delay is an hour: a quiet flush is committed within the caller's 10 s
    deadline, a busy one is not even started within 1 s (the caller times out first)."""
    flusher = durable_flusher(
        pg_engine, commit_delay=0.0, busy_commit_delay=3600, commit_siblings=32
    )
    flusher.crowd = lambda: in_flight
    flusher.start()
    event = login(f"crowd-{in_flight}", WHEN)
    generation, _ = await flusher.add(event, goals_of(event), urgent=True)
    if not delayed:
        assert await flusher.committed(generation, event.user_id, 10) == COMMITTED
        await flusher.close()
        return
    assert await flusher.committed(generation, event.user_id, 1) == TIMED_OUT
    assert flusher.flush_started is None and not generation.done.done()
    flusher.abort()  # closing would first sit out the hour-long delay
    assert await flusher.committed(generation, event.user_id, 10) == ABORTED


# ----------------------------------------------------------------- the optimistic form

STREAK = config(goal("streak", "login", target=5, type="increment", daily=True))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("progress = 7", {"progress": 8, "status": "completed"}),  # 7, then our +1 (target 5)
        # a claim meanwhile: the re-run sees it and leaves the row as claimed
        (
            "progress = 5, status = 'claimed', completed_at = now(), claimed_at = now()",
            {"progress": 5, "status": "claimed"},
        ),
    ],
    ids=["changed", "claimed"],
)
async def test_an_optimistic_flush_reruns_a_row_changed_meanwhile(
    pg_engine, pg_url, change, expected
):
    """Rows are read unlocked and updated by ctid and xmin. Another session changes a
    row after our read and commits while our update waits for it: our update passes the
    old version by, the key is re-run on the new one, and the day's mark moves once.
    (The update reaches the row by a Tid Scan; the xmin comparison is what makes the
    pass-by hold on servers whose Tid Scan recheck ignores the ctid.)"""
    await put_row(pg_engine, "racer", "streak", progress=3, status="in_progress")
    writer = Writer(pg_engine, lock_timeout="10s")
    event = login("racer", "2026-11-21 10:00")
    deltas: dict = {}
    fold(deltas, event, STREAK.goals_for(source_of(event), ""))
    other = await asyncpg.connect(pg_url)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(f"UPDATE user_goal_progress SET {change} WHERE user_id = 'racer'")
        write = asyncio.create_task(writer.write(list(deltas.values())))
        await _wait_for_lock_wait(other)  # our update waits behind the other session
        await tx.commit()
        result = await asyncio.wait_for(write, 10)
    finally:
        await other.close()
    assert result.statements == 2  # the re-run of the changed key
    racer = await row(pg_engine, "racer", "streak")
    assert {"progress": racer.progress, "status": racer.status} == expected
    async with pg_engine.connect() as conn:
        marks = (await conn.execute(text("SELECT day FROM challenge_daily_marks"))).all()
    assert [m.day for m in marks] == [ts("2026-11-21 00:00")]  # the day counted, once
    assert writer.lock_fallbacks == 0


async def test_an_optimistic_flush_meeting_a_held_row_falls_back_to_row_locks(pg_engine, pg_url):
    """A row held (not changed) by another session: the optimistic update waits at most
    the lock timeout, then the flush is redone in the locking form (held user carried,
    the rest written) and the locking form stays in use while contended."""
    await seed(pg_engine, ["held", "free"])
    writer = Writer(pg_engine, lock_timeout="50ms")
    deltas = [_delta_for(login("held", WHEN)), _delta_for(login("free", WHEN))]
    async with RowLock(pg_url, ["held"]):  # held until the end of the block
        result = await asyncio.wait_for(writer.write(deltas), 30)
        assert [d.user_id for d in result.carried] == ["held"]
        assert (await row(pg_engine, "free", "logins")).progress == 1
        assert (await row(pg_engine, "held", "logins")).progress == 0
        again = await writer.write([_delta_for(login("free", WHEN))])
        assert again.updated == 1
    assert writer.lock_fallbacks == 1  # the second flush went straight to row locks


async def _wait_for_lock_wait(conn: asyncpg.Connection) -> None:
    """Until some other backend waits for a lock (our flush's update)."""
    await wait_until_async(
        lambda: conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ),
        message="the flush waiting for the other session's row",
    )
