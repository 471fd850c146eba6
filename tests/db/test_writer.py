"""contract §5.2 mechanics: statements per batch, poison isolation, odd ids, retries."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from app.core.challenges import Source
from app.core.events import Event, EventType
from app.core.progress import Delta
from tables.accumulator import BufferFull
from tables.db import make_engine
from tables.flusher import Flusher
from tables.schema import challenge_dead_letters, user_goal_progress
from tables.write_result import TransientWriteError
from tables.writer import Writer
from tests.helpers.support import config, count_statements, flush, goal, login, row, rows, stat, ts
from tests.helpers.wait import wait_until_async

WINS = config(goal("win-10", "statistic:match_wins", target=10))


async def test_2500_rows_with_batch_size_1000_take_3_statements(pg_engine):
    events = [stat(f"user-{i:05d}", "match_wins", i % 20, "2026-11-20 10:00") for i in range(2500)]
    seen = await count_statements(pg_engine)
    result = await flush(pg_engine, WINS, events, batch_size=1000)
    merges = [s for s in seen if "user_goal_progress" in s]
    assert len(merges) == 3
    assert (result.inserted, result.statements) == (2500, 3)
    assert len(await rows(pg_engine)) == 2500
    seen.clear()
    await flush(
        pg_engine,
        WINS,
        [stat(f"user-{i:05d}", "match_wins", 25, "2026-11-20 11:00") for i in range(2500)],
        batch_size=1000,
    )
    assert len([s for s in seen if "user_goal_progress" in s]) == 3
    async with pg_engine.connect() as conn:
        completed = await conn.scalar(
            select(func.count()).where(user_goal_progress.c.status == "completed")
        )
    assert completed == 2500


async def test_one_poison_row_does_not_block_the_batch(engine):
    goal_ = WINS.goal("win-10")
    good = [stat(f"u{i}", "match_wins", 5, "2026-11-20 10:00") for i in range(50)]
    poison = Delta(goal_, "poison-user", "mygame", None, ts("2026-11-20 10:00"))
    # Bypasses validation on purpose: a value the CHECK constraint refuses.
    poison.add(
        Event(
            "bad",
            EventType.STATISTIC,
            "mygame",
            "poison-user",
            ts("2026-11-20 10:00"),
            "match_wins",
            -7,
        )
    )
    deltas = []
    for event in good:
        d = Delta(goal_, event.user_id, "mygame", None, event.event_time)
        d.add(event)
        deltas.append(d)
    writer = Writer(engine, batch_size=16)
    result = await writer.write([*deltas[:20], poison, *deltas[20:]])
    assert result.inserted == 50
    assert [d.user_id for d, _ in result.poisoned] == ["poison-user"]
    assert len(await rows(engine)) == 50
    async with engine.connect() as conn:
        letters = (await conn.execute(select(challenge_dead_letters))).all()
    assert [(r.user_id, r.goal_id) for r in letters] == [("poison-user", "win-10")]
    assert "check_progress_non_negative" in letters[0].reason


async def test_ids_with_colons_and_unicode_survive(engine):
    cfg = config(goal("goal:with:colons/ü", "login", target=2), goal("目標-✓", "login", target=1))
    users = ["user:1:eu", "игрок", "😀-player", "a" * 100]
    await flush(engine, cfg, [login(u, "2026-11-20 10:00") for u in users])
    found = await rows(engine)
    assert set(found) == {(u, g) for u in users for g in ("goal:with:colons/ü", "目標-✓")}
    assert (await row(engine, "😀-player", "目標-✓")).status == "completed"


async def test_unreachable_database_is_a_transient_error():
    engine = make_engine("postgresql+asyncpg://postgres:postgres@127.0.0.1:1/none")
    try:
        with pytest.raises(TransientWriteError):
            await Writer(engine).write([_delta("u1")])
    finally:
        await engine.dispose()


def _delta(user: str) -> Delta:
    g = WINS.goal("win-10")
    d = Delta(g, user, "mygame", None, ts("2026-11-20 10:00"))
    d.add(Event("x", EventType.STATISTIC, "mygame", user, ts("2026-11-20 10:00"), "match_wins", 3))
    return d


async def test_flusher_keeps_retrying_and_applies_backpressure_until_the_database_returns(
    sqlite_url, tmp_path
):
    """A failing database: nothing dropped, callers wait then get BufferFull, all written later."""
    from app.core.settings import async_database_url

    dead = make_engine("postgresql+asyncpg://postgres:postgres@127.0.0.1:1/none")
    good = make_engine(async_database_url("DATABASE_URL", sqlite_url))
    writer = Writer(dead)
    flusher = Flusher(writer, interval=0.01, max_size=3, max_backoff=0.05)
    retries: list[int] = []
    flusher.on_retry = lambda _exc, attempt: retries.append(attempt)
    flusher.start()
    goals = WINS.goals_for(*_WINS_KEY)
    try:
        accepted = [
            await flusher.add(stat(f"bp{i}", "match_wins", 1, "2026-11-20 10:00"), goals, timeout=1)
            for i in range(3)
        ]
        # the first generation is stuck in retries; the next one fills up ...
        for i in range(3, 6):
            await flusher.add(stat(f"bp{i}", "match_wins", 1, "2026-11-20 10:00"), goals, timeout=1)
        # ... and then callers wait and are told the buffer is full
        with pytest.raises(BufferFull):
            await flusher.add(
                stat("bp-late", "match_wins", 1, "2026-11-20 10:00"), goals, timeout=0.3
            )
        await wait_until_async(lambda: len(retries) >= 2, message="two failed attempts")
        assert flusher.pending == 3
        flusher.writer = Writer(good)  # the database comes back
        await asyncio.wait_for(accepted[0][0].done, 10)
        await flusher.close()
        async with good.connect() as conn:
            written = await conn.scalar(
                select(func.count()).where(user_goal_progress.c.user_id.like("bp%"))
            )
        assert written == 6
    finally:
        await dead.dispose()


_WINS_KEY = (Source.STATISTIC, "match_wins")


async def test_flush_on_size_before_the_interval(engine):
    writer = Writer(engine)
    flusher = Flusher(writer, interval=3600, max_size=5)
    flusher.start()
    goals = WINS.goals_for(*_WINS_KEY)
    generation = None
    for i in range(5):
        generation, _ = await flusher.add(stat(f"s{i}", "match_wins", 1, "2026-11-20 10:00"), goals)
    await asyncio.wait_for(asyncio.shield(generation.done), 10)
    assert len(await rows(engine)) == 5
    await flusher.close()


async def test_close_flushes_what_is_buffered(engine):
    flusher = Flusher(Writer(engine), interval=3600, max_size=100)
    flusher.start()
    await flusher.add(login("closing", "2026-11-20 10:00"), config(goal("l", "login")).goals)
    await flusher.close()
    assert (await row(engine, "closing", "l")).status == "completed"


class _OneShardFailsOnce(Writer):
    """Real writes, plus one injected transient failure of the shard holding `victim`."""

    def __init__(self, *args, victim: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.victim = victim
        self.failed = False

    async def write_one(self, deltas, extra, source, claim=None, isolate=False):
        if not self.failed and any(d.user_id == self.victim for d in deltas):
            self.failed = True
            raise TransientWriteError("injected: connection lost")
        return await super().write_one(deltas, extra, source, claim, isolate)


async def test_parallel_shards_retry_only_the_failed_one(pg_engine):
    cfg = config(goal("logins", "login", target=1000, type="increment"))
    writer = _OneShardFailsOnce(pg_engine, batch_size=50, parallelism=4, victim="p-0007")
    flusher = Flusher(writer, max_backoff=0.01)
    for i in range(400):
        for when in ("2026-11-20 10:00", "2026-11-20 11:00"):
            flusher.try_add(login(f"p-{i:04d}", when), cfg.goals)
    await flusher.flush_now()
    found = await rows(pg_engine)
    assert writer.failed
    assert len(found) == 400
    assert {r.progress for r in found.values()} == {2}  # nothing lost, nothing applied twice


class _FailsManyTimes(Writer):
    """A long outage in fast motion: the first `failures` writes fail."""

    def __init__(self, *args, failures: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = failures

    async def write(self, deltas, extra=None, **kwargs):
        if self.failures:
            self.failures -= 1
            raise TransientWriteError("injected: database down")
        return await super().write(deltas, extra, **kwargs)


async def test_a_very_long_outage_does_not_break_the_retry_loop(engine):
    """Backoff stays capped after thousands of attempts (no float overflow)."""
    flusher = Flusher(_FailsManyTimes(engine, failures=1500), max_backoff=0)
    flusher.try_add(login("patient", "2026-11-20 10:00"), config(goal("l", "login")).goals)
    await flusher.flush_now()
    assert (await row(engine, "patient", "l")).status == "completed"
