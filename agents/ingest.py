"""Source agents: decode + validate each record, dead-letter the bad, repartition the good.

One agent per source topic. A good record is forwarded to the repartition topic keyed by
user id (keys on the source topics may be absent or anything). The source offset is
committed by Faust only after the forwarded record is flushed to the broker, so this hop
is at-least-once; the progress agent drops the copies (see tables/positions.py).
"""

from __future__ import annotations

import logging
from datetime import datetime

import faust

from app.core.clock import from_epoch_ms
from app.core.events import EventType, InvalidEvent, decode_json_event
from app.kafka.codec import Forwarded, dead_letter_value, encode
from app.observability import metrics

log = logging.getLogger(__name__)


def record_time(message: faust.types.Message) -> tuple[datetime | None, int | None]:
    """Kafka record timestamp (Faust gives seconds) -> (fallback event time, epoch ms)."""
    ts = message.timestamp
    if not ts or ts <= 0:
        return None, None
    ms = round(ts * 1000)
    return from_epoch_ms(ms), ms


def make_ingest_agent(
    app: faust.App,
    source: faust.TopicT,
    event_type: EventType,
    by_user: faust.TopicT,
    dlq: faust.TopicT,
) -> None:
    topic_name = source.get_topic_name()
    received = metrics.EVENTS.labels("kafka")  # label child looked up once, not per record

    async def dead_letter(
        message: faust.types.Message, raw: bytes | None, exc: InvalidEvent
    ) -> None:
        metrics.FAILED.labels(exc.reason).inc()
        metrics.DEAD_LETTERED.labels("kafka", exc.reason).inc()
        value, extra = dead_letter_value(raw)
        await dlq.send(
            key=message.key,
            value=value,
            headers=[
                ("reason", exc.reason.encode()),
                ("error", exc.message.encode()[:500]),
                ("source_topic", topic_name.encode()),
                ("source_partition", str(message.partition).encode()),
                ("source_offset", str(message.offset).encode()),
                *extra,
            ],
        )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "record dead-lettered",
                extra={"reason": exc.reason, "topic": topic_name, "offset": message.offset},
            )

    async def ingest(stream: faust.StreamT[bytes]) -> None:
        async for record in stream.events():
            message = record.message
            raw = record.value
            received.inc()
            fallback, ts_ms = record_time(message)
            try:
                if raw is None or raw == b"":
                    raise InvalidEvent("nil_message", "message cannot be nil")
                event = decode_json_event(raw, event_type, fallback)
            except InvalidEvent as exc:
                await dead_letter(message, raw, exc)
                continue
            except Exception as exc:  # last resort: one record never crashes the agent
                log.exception("record could not be processed", extra={"offset": message.offset})
                await dead_letter(message, raw, InvalidEvent("internal", f"internal: {exc!r}"))
                continue
            forwarded = Forwarded(event, topic_name, message.partition, message.offset, ts_ms)
            await by_user.send(key=event.user_id.encode(), value=encode(forwarded))

    app.agent(source, name=f"ingest-{event_type}", concurrency=1)(ingest)
