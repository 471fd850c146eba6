"""The worker's record hand-over (app/kafka/transport.py): a delivery that completes at
once skips Faust's race; one that waits is raced against flow suspension as before. Also
the app's per-record shortcuts: the producer buffer's size and the record event class."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP
from mode.utils.locks import Event as ModeEvent

from app.kafka.transport import FETCH_WAIT, Consumer


def consumer(loop: asyncio.AbstractEventLoop) -> Any:
    """The consumer's wait_first needs only the service's stop/crash events and loop."""
    c: Any = Consumer.__new__(Consumer)
    c._stopped = ModeEvent()
    c._crashed = ModeEvent()
    c._loop = loop
    return c


@pytest.fixture
def flow() -> asyncio.Event:
    return asyncio.Event()


async def test_a_delivery_that_completes_at_once_wins_without_a_task(flow):
    c = consumer(asyncio.get_running_loop())
    delivered = []

    async def deliver() -> str:
        delivered.append(1)
        return "ok"

    tasks_before = len(asyncio.all_tasks())
    result = await c.wait_first(deliver(), flow.wait())
    assert delivered == [1]
    assert result.results == ["ok"] and not result.stopped
    assert len(asyncio.all_tasks()) == tasks_before  # nothing left running


async def test_a_delivery_that_waits_still_completes_when_the_flow_runs(flow):
    c = consumer(asyncio.get_running_loop())
    room = asyncio.get_running_loop().create_future()
    steps = []

    async def deliver() -> str:
        steps.append("started")
        await room  # a full stream buffer
        steps.append("delivered")
        return "late"

    waiting = asyncio.create_task(c.wait_first(deliver(), flow.wait()))
    await asyncio.sleep(0)
    assert steps == ["started"]
    room.set_result(None)
    result = await asyncio.wait_for(waiting, 5)
    assert steps == ["started", "delivered"]
    assert result.results == ["late"]


async def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended(flow):
    c = consumer(asyncio.get_running_loop())
    never = asyncio.get_running_loop().create_future()
    steps = []

    async def deliver() -> None:
        steps.append("started")
        try:
            await never
            steps.append("delivered")
        except asyncio.CancelledError:
            steps.append("abandoned")
            raise

    waiting = asyncio.create_task(c.wait_first(deliver(), flow.wait()))
    await asyncio.sleep(0)
    flow.set()  # rebalance: Faust suspends the flow
    result = await asyncio.wait_for(waiting, 5)
    await asyncio.sleep(0)
    assert steps == ["started", "abandoned"]
    assert result.results == [True]  # the suspension won the race


async def test_a_delivery_that_fails_at_once_raises(flow):
    c = consumer(asyncio.get_running_loop())

    async def deliver() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        await c.wait_first(deliver(), flow.wait())


async def test_other_waits_go_to_faust_unchanged():
    c = consumer(asyncio.get_running_loop())
    first, second = asyncio.Event(), asyncio.Event()
    second.set()
    result = await c.wait_first(first, second)  # events, not the fetch loop's call
    assert result.done == [second]


# ----------------------------------------------------------------- fetching resumed


def paused_consumer(loop: asyncio.AbstractEventLoop, tp: Any) -> Any:
    """A consumer whose only partition is stopped because its stream buffer is full."""
    c = consumer(loop)
    c.flow_active = True
    c.app = SimpleNamespace(client_only=False, in_recovery=False)
    c._active_partitions = set()
    c._paused_partitions = set()
    c._buffered_partitions = {tp}
    return c


async def test_the_fetch_loop_waits_for_a_drained_buffer_not_a_whole_second():
    """Faust sleeps 1 s when every partition is stopped; here the wait ends when one
    partition's stream buffer drains, and that partition is fetched again."""
    tp = TP("t", 0)
    c = paused_consumer(asyncio.get_running_loop(), tp)
    started = time.perf_counter()
    waiting = asyncio.create_task(c._wait_next_records(1.0))
    await asyncio.sleep(0.02)
    assert not waiting.done()
    c.on_buffer_drop(tp)
    records, active = await asyncio.wait_for(waiting, 0.5)
    assert time.perf_counter() - started < 0.3
    assert (records, active) == ({}, set())
    assert c._get_active_partitions() == {tp}  # the next round fetches it


async def test_an_earlier_resume_does_not_end_a_new_wait():
    """The resume signal is cleared before the partitions are looked at."""
    tp = TP("t", 0)
    c = paused_consumer(asyncio.get_running_loop(), tp)
    c._resumed.set()  # an old resume: cleared, not taken for a new one
    waiting = asyncio.create_task(c._wait_next_records(0.2))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await asyncio.wait_for(waiting, 1)  # times out at 0.2 s, as Faust's sleep would end


async def test_a_fetch_waits_at_most_fetch_wait():
    c = consumer(asyncio.get_running_loop())
    seen = []

    async def getmany(active: Any, timeout: float) -> dict:
        seen.append(timeout)
        return {}

    c._thread = SimpleNamespace(getmany=getmany)
    await c._getmany({TP("t", 0)}, 1.0)
    assert seen == [FETCH_WAIT]


def bare_app() -> Any:
    """The worker's app class and transport, never started (no broker is contacted)."""
    from app.kafka.faust_app import ChallengeApp
    from app.kafka.transport import Transport

    app = ChallengeApp(
        "unit-app", broker="kafka://127.0.0.1:1", autodiscover=False, web_enabled=False
    )
    app.transport = Transport(app.conf.broker_consumer, app)
    return app


async def test_the_producer_buffer_counts_pending_messages_without_settings():
    from app.kafka.transport import UnthreadedProducerBuffer

    buffer = bare_app().producer.buffer
    assert isinstance(buffer, UnthreadedProducerBuffer)
    assert buffer.size == 0
    for _ in range(3):
        buffer.pending.put_nowait(object())
    assert buffer.size == 3
    await buffer.wait_until_ebb()  # under max_messages: returns without producing
    assert buffer.size == 3


async def test_a_record_event_is_of_the_configured_class_with_its_fields():
    app = bare_app()
    message = SimpleNamespace(key=b"k", value=b"v")
    first = app.create_event(b"k", b"v", [], message)
    second = app.create_event(b"k2", b"v2", [], message)
    assert type(first) is app.conf.Event and type(second) is app.conf.Event
    assert (first.key, first.value, first.message) == (b"k", b"v", message)
    assert (second.key, second.value) == (b"k2", b"v2")
