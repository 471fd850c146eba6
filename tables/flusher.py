"""The flusher: the buffer (tables/accumulator.py) and its flush loop
(tables/sender.py) behind one object, started and stopped with the service.

Events merge into one `Delta` per (user, goal, period) of the current generation; a
flush takes the whole generation and writes it (group commit: every call of a
generation shares one flush). Rows held by another transaction (the backend's claim)
are carried into the next flush and only their callers keep waiting; a flush always
finishes (tables/write_retry.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from app.core.challenges import Goal
from app.core.erasures import ErasedUsers
from app.core.events import Event
from tables.accumulator import Accumulator
from tables.generation import Generation
from tables.sender import FlushListener, GroupCommit, Sender
from tables.waiters import Ack
from tables.write_result import Extra
from tables.write_retry import FailureListener
from tables.writer import Writer


class Flusher:
    def __init__(
        self,
        writer: Writer,
        *,
        interval: float = 1.0,
        max_size: int = 10_000,
        extra_for: Callable[[Generation], Extra | None] | None = None,
        on_flush: FlushListener | None = None,
        on_retry: FailureListener | None = None,
        max_backoff: float = 5.0,
        event_id_window: float | None = None,
        commit_delay: float = 0.0,
        busy_commit_delay: float | None = None,
        commit_siblings: int = 0,
        carry_retry: float = 0.05,
        prune_every: float = 60.0,
        erasure_retention: float | None = None,
    ):
        wake = asyncio.Event()
        self.buffer = Accumulator(max_size, track_events=event_id_window is not None, wake=wake)
        self.group_commit = GroupCommit(
            commit_delay,
            commit_delay if busy_commit_delay is None else busy_commit_delay,
            commit_siblings,
        )
        self.sender = Sender(
            self.buffer,
            writer,
            wake,
            interval=interval,
            group_commit=self.group_commit,
            extra_for=extra_for,
            event_id_window=event_id_window,
            max_backoff=max_backoff,
            carry_retry=carry_retry,
            prune_every=prune_every,
            erasure_retention=erasure_retention,
        )
        self.sender.on_flush = on_flush
        self.sender.on_retry = on_retry
        # Users erased by a GDPR deletion, as far as this process knows: their events are
        # skipped when they arrive (the merge statement skips the rest, tables/merge_sql.py).
        self.erased = ErasedUsers()
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- parts and knobs

    @property
    def writer(self) -> Writer:
        return self.sender.writer

    @writer.setter
    def writer(self, writer: Writer) -> None:
        self.sender.writer = writer

    @property
    def on_retry(self) -> FailureListener | None:
        return self.sender.on_retry

    @on_retry.setter
    def on_retry(self, listener: FailureListener | None) -> None:
        self.sender.on_retry = listener

    @property
    def crowd(self) -> Callable[[], int] | None:
        """Calls in flight (the gRPC server's count), for the group-commit delay."""
        return self.group_commit.crowd

    @crowd.setter
    def crowd(self, count: Callable[[], int] | None) -> None:
        self.group_commit.crowd = count

    @property
    def failures(self) -> int:
        """Failed write attempts in a row (the health signal)."""
        return self.sender.failures

    @property
    def flush_started(self) -> float | None:
        """When the flush in flight started (monotonic clock); None when none is."""
        return self.sender.flush_started

    @property
    def pending(self) -> int:
        return self.buffer.pending

    @property
    def carried(self) -> int:
        return self.buffer.carried

    # ---------------------------------------------------------------- intake

    def generation(self) -> Generation:
        return self.buffer.generation()

    def try_add(
        self, event: Event, goals: Iterable[Goal], urgent: bool = False
    ) -> tuple[Generation, int] | None:
        """Add without waiting; None when the buffer is full."""
        return self.buffer.try_add(event, goals, urgent)

    async def add(
        self,
        event: Event,
        goals: Iterable[Goal],
        *,
        timeout: float | None = None,
        urgent: bool = False,
    ) -> tuple[Generation, int]:
        """`Accumulator.add`; `urgent`: the caller will wait for the commit (durable ack)."""
        return await self.buffer.add(event, goals, timeout=timeout, urgent=urgent)

    async def committed(self, generation: Generation, user_id: str, timeout: float) -> Ack:
        """Wait until `user_id`'s events of `generation` are committed: COMMITTED, or
        TIMED_OUT after `timeout` seconds, or ABORTED (shutdown gave up on them)."""
        deadline = asyncio.get_running_loop().time() + timeout
        state = await generation.waiters.wait(deadline)
        if state != Ack.COMMITTED or not generation.held:
            return state
        held = generation.held.get(user_id)
        return state if held is None else await held.wait(deadline)

    def request_flush(self) -> None:
        current = self.buffer.current
        if current is not None:
            current.urgent = True
        self.buffer.wake.set()

    def stalled(self, after: float) -> bool:
        """Writes stuck: the last attempts failed, or one flush has run for `after` s."""
        return self.sender.stalled(after)

    def drop_user(self, user_id: str) -> int:
        """GDPR deletion: forget what is buffered or carried for the user."""
        return self.buffer.drop_user(user_id)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.sender.run(), name="flusher")

    async def close(self) -> None:
        """Final flush of everything buffered (and carried), then stop."""
        self.sender.closing = True
        self.buffer.wake.set()
        if self._task is not None:
            await self._task
        else:
            await self.sender.flush_all()
        self.buffer.closed = True
        await self.sender.stop_pruning()

    def abort(self) -> None:
        """Shutdown gave up (database down past the grace period): stop the loop and
        tell every waiting caller so (they answer UNAVAILABLE; the bridge redelivers)."""
        if self._task is not None:
            self._task.cancel()
        self.sender.cancel_pruning()
        self.buffer.abort(self.sender.flushing)

    async def barrier(self) -> None:
        """Return once everything taken for writing before this call has been written
        (GDPR deletion). Waits for one empty generation flushed after them, not for
        later traffic nor for other users' carried rows."""
        if self._task is None:
            await self.sender.flush_all()
            return
        generation = self.generation()
        self.request_flush()
        await asyncio.shield(generation.done)

    async def flush_now(self) -> None:
        """Flush everything buffered and carried so far, and wait (replay, tests)."""
        if self._task is None:
            await self.sender.flush_all()
            return
        while self.buffer.current is not None or self.buffer.carry:
            generation = self.buffer.current
            self.request_flush()
            if generation is not None:
                await asyncio.shield(generation.done)
            else:
                await asyncio.sleep(self.sender.carry_retry)
