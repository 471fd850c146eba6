"""`produce FILE.jsonl`: load events into the AGS topics (local development).

Each record is keyed by its user id, as AGS keys its own: one user's records land in one
partition, in file order (an idempotent producer keeps that order through retries), so
a worker applies them in that order, straight from the source partition.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from app.core.events import EventType, InvalidEvent, event_type_of, json_user_id
from app.kafka.topics import topic_for
from app.replay import progress_bar


def route(line: bytes, namespace: str) -> tuple[str, bytes | None, bytes]:
    """A JSON line -> (its topic by event type, its key: the user id, the bytes to send
    unchanged). A line without a usable user id goes unkeyed: the worker dead-letters it."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise InvalidEvent("undecodable", "cannot decode JSON") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("nil_message", "message cannot be nil")
    payload = obj.get("payload")
    try:
        user_id = json_user_id(obj, payload if isinstance(payload, dict) else {})
    except InvalidEvent:
        user_id = ""
    key = user_id.encode("utf-8", "surrogatepass") if user_id else None
    return topic_for(event_type_of(obj), namespace), key, line


async def produce_file(bootstrap: str, namespace: str, path: Path) -> dict[str, int]:
    """Send every line to its topic (undecodable lines to the stat topic, to be
    dead-lettered by the worker); returns records per topic."""
    counts: dict[str, int] = {}
    size = path.stat().st_size  # noqa: ASYNC240
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, enable_idempotence=True
    )
    await producer.start()
    try:
        pending: list[asyncio.Future[object]] = []
        sent = 0
        with progress_bar() as bar, path.open("rb") as handle:
            task = bar.add_task(path.name, total=max(size, 1), events=0)
            for line in handle:
                bar.update(task, advance=len(line), events=sent)
                if not line.strip():
                    continue
                try:
                    topic, key, value = route(line.strip(), namespace)
                except InvalidEvent:
                    topic, key, value = (
                        topic_for(EventType.STATISTIC, namespace),
                        None,
                        line.strip(),
                    )
                pending.append(await producer.send(topic, value, key=key))
                counts[topic] = counts.get(topic, 0) + 1
                sent += 1
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            bar.update(task, events=sent)
    finally:
        await producer.stop()
    return counts
