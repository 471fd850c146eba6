"""The worker's record hand-over (app/kafka/faust_internals.py): a delivery that completes
at once skips Faust's race; one that waits is raced against flow suspension as before.
Also the app's per-record shortcuts: the producer buffer's size and the record event class.

Every consumer here is the one the worker's transport creates for a real (never started)
Faust app; only the broker fetch beneath it is stood in for where a test fetches."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from app.kafka.faust_internals import FETCH_WAIT, ChallengeApp, Consumer
from app.kafka.transport import Transport


class BrokerFetch(faust_aiokafka.Consumer):
    """Stands in for the broker fetch beneath the worker's consumer (no broker here):
    records the partitions and the wait of each fetch, and returns no records."""

    fetches: list[tuple[set[Any], float]]

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        self.fetches.append((set(active_partitions or ()), timeout))
        return {}


class FetchRecordingConsumer(Consumer, BrokerFetch):
    """The worker's consumer, its `super()._getmany` landing in `BrokerFetch`."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.fetches = []


class FetchRecordingTransport(Transport):
    Consumer = FetchRecordingConsumer


def bare_app(transport: type[Transport] = Transport) -> Any:
    """The worker's app class and transport, never started (no broker is contacted)."""
    app = ChallengeApp(
        "unit-app", broker="kafka://127.0.0.1:1", autodiscover=False, web_enabled=False
    )
    app.transport = transport(app.conf.broker_consumer, app)
    return app


def consumer() -> Any:
    """The consumer Faust creates through the worker's transport (not started)."""
    return bare_app().consumer


async def run_ready(turns: int = 10) -> None:
    """Let the event loop run what is ready for a few turns (no clock involved): a task
    just created reaches its first wait, a callback chain already set off completes."""
    for _ in range(turns):
        await asyncio.sleep(0)


@pytest.fixture
def flow() -> asyncio.Event:
    return asyncio.Event()


async def test_a_delivery_that_completes_at_once_wins_without_a_task(flow):
    c = consumer()
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
    c = consumer()
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
    c = consumer()
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
    c = consumer()

    async def deliver() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        await c.wait_first(deliver(), flow.wait())


async def test_other_waits_go_to_faust_unchanged():
    c = consumer()
    first, second = asyncio.Event(), asyncio.Event()
    second.set()
    result = await c.wait_first(first, second)  # events, not the fetch loop's call
    assert result.done == [second]


# ----------------------------------------------------------------- fetching resumed


def paused_consumer(tp: Any) -> Any:
    """A consumer whose only partition is stopped because its stream buffer is full
    (Faust's own hook, as a full stream buffer calls it)."""
    c = bare_app(FetchRecordingTransport).consumer
    c.on_buffer_full(tp)
    return c


async def test_the_fetch_loop_waits_for_a_drained_buffer_not_a_whole_second():
    """Faust sleeps 1 s when every partition is stopped; here the wait ends when one
    partition's stream buffer drains (not at its hour-long timeout), and that partition
    is fetched again."""
    tp = TP("t", 0)
    c = paused_consumer(tp)
    waiting = asyncio.create_task(c._wait_next_records(3600.0))
    await run_ready()
    assert not waiting.done()
    c.on_buffer_drop(tp)
    await run_ready()  # no clock: Faust's one-second sleep would still be running
    assert waiting.done()
    assert waiting.result() == ({}, set())
    assert c.fetches == []
    await c._wait_next_records(3600.0)  # the next round fetches it
    assert c.fetches == [({tp}, FETCH_WAIT)]


async def test_an_earlier_resume_does_not_end_a_new_wait():
    """The resume signal is cleared before the partitions are looked at."""
    tp = TP("t", 0)
    c = paused_consumer(tp)
    c.on_buffer_drop(tp)  # an old resume: cleared, not taken for a new one
    c.on_buffer_full(tp)
    waiting = asyncio.create_task(c._wait_next_records(3600.0))
    await run_ready()  # a resume still set would have ended the wait by now
    assert not waiting.done()
    c.on_buffer_drop(tp)
    assert await asyncio.wait_for(waiting, 10) == ({}, set())


async def test_a_fetch_waits_at_most_fetch_wait():
    c = bare_app(FetchRecordingTransport).consumer
    await c._getmany({TP("t", 0)}, 1.0)
    assert c.fetches == [({TP("t", 0)}, FETCH_WAIT)]


async def test_the_producer_buffer_counts_pending_messages_without_settings():
    from app.kafka.faust_internals import UnthreadedProducerBuffer

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
