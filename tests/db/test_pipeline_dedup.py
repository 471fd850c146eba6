"""The pipeline's dedup under pressure, on both databases: two copies of one event id
that both wait for buffer space join one generation, yet count once; a copy whose flush
was given up does not stop a later copy from being applied."""

from __future__ import annotations

import asyncio

from app.core.settings import Settings
from app.pipeline import Pipeline
from tables.waiters import Ack
from tables.writer import Writer
from tests.helpers.support import config, goal, login, row

CFG = config(goal("logins", "login", target=100, type="increment"))


def pipeline_for(engine, **overrides) -> Pipeline:
    settings = Settings(
        namespace="mygame",
        buffer_max_size=2,
        flush_interval=3600,
        commit_delay=0.0,
        busy_commit_delay=0.0,
        **overrides,
    )
    return Pipeline(settings, CFG, engine, record_event_ids=True)


async def test_two_copies_that_waited_for_space_count_once(engine):
    """The flusher is not running: only the flushes this test asks for free the buffer."""
    pipeline = pipeline_for(engine)
    try:
        await pipeline.add(login("a", "2026-11-20 10:00"))
        await pipeline.add(login("b", "2026-11-20 10:00"))  # the buffer is full now
        copies = [
            asyncio.create_task(pipeline.add(login("twice", "2026-11-20 10:00", "same-id")))
            for _ in range(2)
        ]
        await asyncio.sleep(0)  # one turn of the loop: both copies now wait for space
        assert not any(task.done() for task in copies)
        await pipeline.flusher.flush_now()  # writes a and b; the copies get space
        generations = await asyncio.gather(*copies)
        assert generations[0] is generations[1]  # one generation holds both copies
        await pipeline.flusher.flush_now()
        assert (await row(engine, "twice", "logins")).progress == 1
    finally:
        await pipeline.close()


class _Broken(Writer):
    """Every write fails with an error that is neither an outage nor a row's fault (a
    bug): the flush is isolated, then given up."""

    async def write(self, deltas, extra=None, **kwargs):
        raise RuntimeError("injected: a bug in the write")


async def test_a_copy_of_a_given_up_flush_is_applied_again(engine):
    pipeline = pipeline_for(engine)
    working = pipeline.flusher.writer
    pipeline.flusher.writer = _Broken(engine)
    pipeline.flusher.sender.max_backoff = 0.0
    pipeline.start()
    try:
        first = await pipeline.add(login("again", "2026-11-20 10:00", "redelivered"), urgent=True)
        assert first is not None
        assert await pipeline.flusher.committed(first, "again", 30) == Ack.ABORTED
        pipeline.flusher.writer = working  # the bug is gone; the bridge redelivers
        second = await pipeline.add(login("again", "2026-11-20 10:00", "redelivered"), urgent=True)
        assert second is not None and second is not first
        assert await pipeline.flusher.committed(second, "again", 30) == Ack.COMMITTED
        assert (await row(engine, "again", "logins")).progress == 1
    finally:
        await pipeline.close()
