"""Source agents: decode a batch of records, apply or forward each, dead-letter the bad.

One agent per source topic, taking records in batches (`noack_take`). Per record:
- undecodable or invalid: dead-lettered to `<topic>.dlq` with the reason, acked;
- keyed by its own user id (what AGS produces): applied straight to the pipeline
  (`ProgressRuntime.direct`); acked once the flush holding it has committed, its source
  position stored with the rows (exactly-once, no repartition hop);
- any other key (or none): forwarded to the repartition topic keyed by user id by an
  idempotent producer, acked in source order once the broker has the copy (a failed
  copy is resent, and nothing after it is acknowledged until it is delivered; sent with
  `force=True`, not as Faust "attachments", which a batch would tie to the wrong source
  offset). This hop is at-least-once; the progress agent drops the copies
  (tables/positions.py).
An exception from one record never stops the agent: that record is dead-lettered with
reason `internal` and the batch goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import faust
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from app.core.clock import now_utc
from app.core.events import Event, EventType, InvalidEvent, decode_json_event
from app.kafka.codec import Forwarded, dead_letter_value, encode
from app.kafka.faust_app import KafkaApp, SourceTopic, exit_for_redelivery
from app.observability import metrics

log = logging.getLogger(__name__)

# Resends of a batch's failed copies before the worker exits for redelivery (with the
# backoff, about a minute).
FORWARD_ATTEMPTS = 15

# Records applied between two yields to the event loop. A batch is processed without
# waiting; yielding every slice lets the flush in flight (its statements answered by
# PostgreSQL meanwhile) go on, instead of waiting for the whole batch each round trip.
SLICE = 128


def record_ms(message: faust.types.Message) -> int | None:
    """Kafka record timestamp (Faust gives seconds) -> epoch ms (None: not set)."""
    ts = message.timestamp
    if not ts or ts <= 0:
        return None
    return round(ts * 1000)


class ForwardFailed(Exception):
    """The copy at `index` is not on the broker; `waiting` records (it and the later
    ones) wait unacknowledged."""

    def __init__(self, index: int, waiting: int):
        super().__init__(f"{waiting} forwarded records not delivered")
        self.index = index
        self.waiting = waiting


@dataclass(slots=True)
class Forward:
    """A source record and its copy on the way to the repartition topic."""

    record: faust.EventT[bytes]
    key: bytes
    value: bytes
    future: Awaitable[object]

    def failed(self) -> bool:
        future = self.future
        return (
            isinstance(future, asyncio.Future)
            and future.done()
            and (future.cancelled() or future.exception() is not None)
        )


class Ingest:
    """The per-record work of one source topic's agent."""

    def __init__(self, kafka: KafkaApp, source: SourceTopic):
        self.kafka = kafka
        self.source = source
        self.topic_name = source.topic.get_topic_name()
        self.event_type: EventType = source.event_type
        self.received = metrics.EVENTS.labels("kafka")  # label child looked up once
        # Event times out of bounds fall back, counted (contract §1.3). A batch's records
        # share one receipt time: the future bound costs nothing per record.
        self.time_bounds = kafka.time_bounds
        self.receipt = now_utc()

    async def batch(self, records: Sequence[faust.EventT[bytes]]) -> None:
        self.received.inc(len(records))
        self.receipt = now_utc()
        direct: list[tuple[faust.EventT[bytes], Event]] = []
        forwarded: list[Forward] = []
        for record in records:
            try:
                try:
                    event = self.decode(record)
                except InvalidEvent as exc:
                    await self.dead_letter(record, exc)
                    continue
                if record.message.key == event.user_id.encode():
                    direct.append((record, event))
                    if len(direct) >= SLICE:
                        await self.apply(direct)
                        direct = []
                        await asyncio.sleep(0)  # let the flush in flight read its answer
                else:
                    forwarded.append(await self.forward(record, event))
            except Exception as exc:  # a bug: never crash the agent or stall the partition
                log.exception("record failed, dead-lettered", extra={"topic": self.topic_name})
                await self.dead_letter(record, InvalidEvent("internal", repr(exc)[:300]))
        if direct:
            await self.apply(direct)
        await self.delivered(forwarded)

    async def apply(self, direct: list[tuple[faust.EventT[bytes], Event]]) -> None:
        """Apply a slice of directly keyed records. If that fails (a bug), each record is
        applied alone and the one that fails is dead-lettered (`internal`): records the
        slice already applied are found below their position (what this worker has
        applied) and only acked."""
        try:
            await self.kafka.runtime.direct(direct)
        except Exception:
            log.exception("slice failed, applying its records one by one")
            for record, event in direct:
                try:
                    await self.kafka.runtime.direct([(record, event)])
                except Exception as exc:
                    log.exception("record failed, dead-lettered", extra={"topic": self.topic_name})
                    await self.dead_letter(record, InvalidEvent("internal", repr(exc)[:300]))

    async def delivered(self, forwarded: list[Forward]) -> None:
        """Ack forwarded records in source order once the broker has their copies.

        A copy whose send failed is sent again, and no later record of the batch is
        acknowledged until it is on the broker. The producer is idempotent, so no later
        copy to the same repartition partition can have overtaken it: the resent copy is
        not mistaken for one already applied (tables/positions.py drops copies below the
        highest source offset applied through that partition). A producer that keeps
        failing (an idempotent one retries transient errors itself, so a failure here
        is fatal to it) ends the worker for redelivery: nothing from the failed copy on
        was acknowledged."""
        done = 0
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(ForwardFailed),
                wait=wait_exponential(multiplier=0.1, max=5.0),
                stop=stop_after_attempt(FORWARD_ATTEMPTS),
                before_sleep=self._log_resend,
                reraise=True,
            ):
                with attempt:
                    try:
                        done = await self._ack_in_order(forwarded, done)
                    except ForwardFailed as failed:
                        done = failed.index
                        raise
        except ForwardFailed as failed:
            exit_for_redelivery(f"forwarding failed {FORWARD_ATTEMPTS} times: {failed}")

    async def _ack_in_order(self, forwarded: list[Forward], start: int) -> int:
        """Resend what failed from `start` on, then ack in order; ForwardFailed at the
        first copy not delivered (it and the later ones stay unacknowledged)."""
        for item in forwarded[start:]:
            if item.failed():
                item.future = await self.send(item.key, item.value)
        for index in range(start, len(forwarded)):
            item = forwarded[index]
            try:
                await item.future
            except Exception as exc:
                raise ForwardFailed(index, len(forwarded) - index) from exc
            item.record.ack()
        return len(forwarded)

    def _log_resend(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "forwarding failed, resending in order",
            extra={
                "records": getattr(error, "waiting", 0),
                "attempt": state.attempt_number,
                "topic": self.topic_name,
                "error": repr(getattr(error, "__cause__", error))[:300],
            },
        )

    async def send(self, key: bytes, value: bytes) -> Awaitable[object]:
        """The copy's delivery; a send that raises (producer not ready, a timeout) is a
        failed delivery, resent in order like any other."""
        try:
            future: Awaitable[object] = await self.kafka.by_user.send(
                key=key, value=value, force=True
            )
        except Exception as exc:
            failed: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed
        return future

    def decode(self, record: faust.EventT[bytes]) -> Event:
        """The record's event (InvalidEvent: the caller dead-letters the record)."""
        raw = record.value
        if raw is None or raw == b"":
            raise InvalidEvent("nil_message", "message cannot be nil")
        return decode_json_event(
            raw,
            self.event_type,
            received=self.receipt,
            record_ms=record_ms(record.message),
            bounds=self.time_bounds,
        )

    async def forward(self, record: faust.EventT[bytes], event: Event) -> Forward:
        """Send a copy keyed by user id to the repartition topic (acked once delivered)."""
        message = record.message
        ts_ms = record_ms(message)
        user_key = event.user_id.encode()
        value = encode(Forwarded(event, self.topic_name, message.partition, message.offset, ts_ms))
        return Forward(record, user_key, value, await self.send(user_key, value))

    async def dead_letter(self, record: faust.EventT[bytes], exc: InvalidEvent) -> None:
        message = record.message
        raw = record.value if isinstance(record.value, bytes) else b""
        metrics.FAILED.labels(exc.reason).inc()
        metrics.DEAD_LETTERED.labels("kafka", exc.reason).inc()
        # a record near the size limit is dead-lettered truncated (it must fit a record)
        value, extra = dead_letter_value(raw)
        try:
            sent = await self.source.dlq.send(
                force=True,
                key=message.key,
                value=value,
                headers=[
                    ("reason", exc.reason.encode()),
                    ("error", exc.message.encode("utf-8", "replace")[:500]),
                    ("source_topic", self.topic_name.encode()),
                    ("source_partition", str(message.partition).encode()),
                    ("source_offset", str(message.offset).encode()),
                    *extra,
                ],
            )
            await sent  # on the broker before the record is acked
        except Exception:  # the dead letter itself failed: log it, never block the stream
            log.exception(
                "dead letter not sent",
                extra={"topic": self.topic_name, "offset": message.offset},
            )
        record.ack()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "record dead-lettered",
                extra={"reason": exc.reason, "topic": self.topic_name, "offset": message.offset},
            )


def make_ingest_agent(kafka: KafkaApp, source: SourceTopic) -> None:
    ingest = Ingest(kafka, source)
    size, wait = kafka.batch_size, kafka.batch_wait

    async def agent(stream: faust.StreamT[bytes]) -> None:
        async for records in stream.noack_take(size, within=wait):  # type: ignore[attr-defined]
            await ingest.batch(records)

    kafka.app.agent(source.topic, name=f"ingest-{source.event_type}", concurrency=1)(agent)
