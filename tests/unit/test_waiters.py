"""`tables.waiters.Waiters`: the callers of one commit share one deadline timer, yet each
keeps its own deadline, and a caller that goes away disturbs nobody."""

from __future__ import annotations

import asyncio

from tables.waiters import Ack, Waiters

ABORTED, COMMITTED, PENDING, TIMED_OUT = Ack.ABORTED, Ack.COMMITTED, Ack.PENDING, Ack.TIMED_OUT


def _timers(loop: asyncio.AbstractEventLoop) -> int:
    """Timer handles the loop has scheduled and not cancelled (asyncio's own heap)."""
    return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]


async def test_many_callers_share_one_timer_and_are_answered_by_settle():
    loop = asyncio.get_running_loop()
    before = _timers(loop)
    waiters = Waiters()
    now = loop.time()
    callers = [asyncio.create_task(waiters.wait(now + 60 + i / 1000)) for i in range(500)]
    await asyncio.sleep(0)  # every caller is waiting now
    assert waiters.waiting == 500
    assert _timers(loop) == before + 1
    waiters.settle(COMMITTED)
    assert set(await asyncio.gather(*callers)) == {COMMITTED}
    assert _timers(loop) == before  # the shared timer went with the commit
    assert await waiters.wait(now + 60) == COMMITTED  # late callers: answered at once


async def test_each_caller_times_out_at_its_own_deadline():
    loop = asyncio.get_running_loop()
    waiters = Waiters()
    start = loop.time()
    late = asyncio.create_task(waiters.wait(start + 0.3))
    early = asyncio.create_task(waiters.wait(start + 0.1))  # earlier: the timer moves up
    never = asyncio.create_task(waiters.wait(start + 60))
    assert await early == TIMED_OUT
    assert loop.time() - start >= 0.099
    assert not late.done() and not never.done()
    assert await late == TIMED_OUT
    assert loop.time() - start >= 0.299
    assert not never.done() and waiters.state == PENDING
    waiters.settle(ABORTED)
    assert await never == ABORTED


async def test_a_cancelled_caller_does_not_disturb_the_others():
    loop = asyncio.get_running_loop()
    waiters = Waiters()
    deadline = loop.time() + 60
    gone = asyncio.create_task(waiters.wait(deadline))
    staying = [asyncio.create_task(waiters.wait(deadline)) for _ in range(3)]
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert gone.cancelled()
    assert waiters.waiting == 3
    waiters.settle(COMMITTED)
    assert await asyncio.gather(*staying) == [COMMITTED] * 3
